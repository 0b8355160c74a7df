"""Step of the render pipeline that turns an Ingress backend into endpoints.

Service port (by number or name) → the EndpointSlices labelled with the Service → the slice port of
the same name → ready addresses. This is how kube-proxy resolves a port too, so named target ports
and per-pod port numbers work without reading Pods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.model import BackendRef, EndpointSlice, Service, ServicePort
from dataplane.snapshot import Endpoint

TLS_APP_PROTOCOLS = ("https", "tls", "kubernetes.io/wss")
# HTTP/2 with prior knowledge, no TLS (KEP-3726's standard value; Contour and Gateway API read it the same way).
# kubernetes.io/ws and wss are WebSocket over HTTP/1.1: they stay http1.
H2C_APP_PROTOCOL = "kubernetes.io/h2c"


@dataclass(frozen=True)
class Resolved:
    """Endpoints of one Service port; ``error`` set means the reference itself is broken."""

    service_port: ServicePort | None
    endpoints: tuple[Endpoint, ...]
    app_protocol: str = ""
    error: str = ""
    reason: str = ""

    @property
    def speaks_tls(self) -> bool:
        return self.app_protocol in TLS_APP_PROTOCOLS

    @property
    def speaks_h2c(self) -> bool:
        return self.app_protocol == H2C_APP_PROTOCOL


class BackendIndex:
    """Lookups by namespace/name, built once per render."""

    def __init__(self, services: Sequence[Service], slices: Sequence[EndpointSlice]) -> None:
        self.services: Mapping[tuple[str, str], Service] = {(s.ref.namespace, s.ref.name): s for s in services}
        by_service: dict[tuple[str, str], list[EndpointSlice]] = {}
        for s in slices:
            if s.service:
                by_service.setdefault((s.ref.namespace, s.service), []).append(s)
        self.slices = {k: sorted(v, key=lambda s: s.ref.name) for k, v in by_service.items()}

    def resolve(self, namespace: str, backend: BackendRef) -> Resolved:
        service = self.services.get((namespace, backend.service))
        if service is None:
            return Resolved(None, (), error=f"Service {namespace}/{backend.service} not found",
                            reason="ServiceNotFound")
        if service.type == "ExternalName":
            return Resolved(None, (), error=f"Service {namespace}/{backend.service} is ExternalName, which is "
                            "not supported (no endpoints to health-check)", reason="Unsupported")
        port = next(
            (p for p in service.ports
             if (backend.port_number is not None and p.port == backend.port_number)
             or (backend.port_name is not None and p.name == backend.port_name)),
            None,
        )
        if port is None:
            return Resolved(None, (), error=f"Service {namespace}/{backend.service} has no port {backend.port_text}",
                            reason="ServicePortNotFound")
        endpoints: set[Endpoint] = set()
        app_protocol = port.app_protocol
        for eps in self.slices.get((namespace, backend.service), ()):
            if eps.address_type not in ("IPv4", "IPv6"):
                continue
            slice_port = next((p for p in eps.ports if p.name == port.name), None)
            if slice_port is None:
                continue
            app_protocol = app_protocol or slice_port.app_protocol
            for ep in eps.endpoints:
                if ep.ready:
                    endpoints.update(Endpoint(address, slice_port.port) for address in ep.addresses)
        return Resolved(port, tuple(sorted(endpoints, key=lambda e: (e.address, e.port))), app_protocol)
