"""Slim, frozen projections of the five Kubernetes kinds the renderer reads.

The controller keeps these in kopf indexes instead of whole objects (memory, and no accidental
dependence on fields we do not understand); ``portcullis local`` builds them from YAML. Projection
never raises: odd input (a string where a list belongs, bad base64) becomes a ``Problem`` on the
view, so one malformed object cannot stop the render of all the others.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.problems import ObjectRef, Problem

INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class BackendRef:
    """``service.name`` + port number or port name (exactly one of them)."""

    service: str
    port_number: int | None
    port_name: str | None
    field: str

    @property
    def port_text(self) -> str:
        return str(self.port_number) if self.port_number is not None else str(self.port_name)


@dataclass(frozen=True)
class IngressPath:
    path: str
    path_type: str
    backend: BackendRef | None
    field: str


@dataclass(frozen=True)
class IngressRule:
    host: str
    paths: tuple[IngressPath, ...]
    field: str


@dataclass(frozen=True)
class IngressTLS:
    hosts: tuple[str, ...]
    secret_name: str
    field: str


@dataclass(frozen=True)
class Ingress:
    ref: ObjectRef
    created: str
    annotations: Mapping[str, str]
    class_name: str | None
    default_backend: BackendRef | None
    rules: tuple[IngressRule, ...]
    tls: tuple[IngressTLS, ...]
    uid: str = ""
    generation: int = 0
    problems: tuple[Problem, ...] = ()
    status_addresses: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip/hostname, as last written

    @property
    def order(self) -> tuple[str, str, str]:
        """Oldest first, then namespace/name: the documented conflict winner order."""
        return (self.created or "9999", self.ref.namespace, self.ref.name)


@dataclass(frozen=True)
class Secret:
    ref: ObjectRef
    type: str
    data: Mapping[str, bytes]
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str | None
    app_protocol: str


@dataclass(frozen=True)
class Service:
    ref: ObjectRef
    type: str
    ports: tuple[ServicePort, ...]
    problems: tuple[Problem, ...] = ()
    published: tuple[str, ...] = ()  # load-balancer ingress addresses, else external IPs: what clients reach


@dataclass(frozen=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool


@dataclass(frozen=True)
class SlicePort:
    name: str
    port: int
    app_protocol: str


@dataclass(frozen=True)
class EndpointSlice:
    ref: ObjectRef
    service: str
    address_type: str
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[SlicePort, ...]
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class IngressClass:
    ref: ObjectRef
    controller: str
    is_default: bool
    problems: tuple[Problem, ...] = ()


Projection = Ingress | Secret | Service | EndpointSlice | IngressClass


@dataclass(frozen=True)
class Inputs:
    """Everything the renderer may look at; order of each tuple is irrelevant to the result."""

    ingresses: tuple[Ingress, ...] = ()
    secrets: tuple[Secret, ...] = ()
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    ingress_classes: tuple[IngressClass, ...] = ()

    @classmethod
    def from_projections(cls, views: Iterable[Projection]) -> Inputs:
        buckets: dict[type, list[Any]] = {k: [] for k in (Ingress, Secret, Service, EndpointSlice, IngressClass)}
        for view in views:
            buckets[type(view)].append(view)
        return cls(
            ingresses=tuple(buckets[Ingress]),
            secrets=tuple(buckets[Secret]),
            services=tuple(buckets[Service]),
            endpoint_slices=tuple(buckets[EndpointSlice]),
            ingress_classes=tuple(buckets[IngressClass]),
        )

    @classmethod
    def from_objects(cls, objs: Iterable[Mapping[str, Any]]) -> tuple[Inputs, list[Problem]]:
        """Project raw objects; kinds the renderer does not read are skipped without a word."""
        views: list[Projection] = []
        problems: list[Problem] = []
        for obj in objs:
            view = project(obj)
            if view is not None:
                views.append(view)
                problems.extend(view.problems)
        return cls.from_projections(views), problems


# --- projection ----------------------------------------------------------------------------


class _Reader:
    """Type-checked access into an untrusted object; wrong shapes are recorded, not raised."""

    def __init__(self, ref: ObjectRef) -> None:
        self.ref = ref
        self.problems: list[Problem] = []

    def problem(self, field_path: str, message: str, reason: str = "InvalidObject") -> None:
        self.problems.append(Problem(self.ref, "Error", reason, field_path, message))

    def mapping(self, value: Any, field_path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(field_path, f"expected an object, got {type(value).__name__}")
            return {}
        return value

    def items(self, value: Any, field_path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(field_path, f"expected a list, got {type(value).__name__}")
            return []
        return value

    def text(self, value: Any, field_path: str, default: str = "") -> str:
        if value is None:
            return default
        if isinstance(value, str):
            return value
        self.problem(field_path, f"expected a string, got {value!r}")
        return default

    def port(self, value: Any, field_path: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
            return value
        if value is not None:
            self.problem(field_path, f"not a valid port number: {value!r}")
        return None


def _ref(obj: Mapping[str, Any], kind: str) -> tuple[ObjectRef, Mapping[str, Any]]:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    namespace = meta.get("namespace")
    name = meta.get("name")
    return (
        ObjectRef(kind, namespace if isinstance(namespace, str) else "default", name if isinstance(name, str) else ""),
        meta,
    )


def project(obj: Mapping[str, Any]) -> Projection | None:
    """The view of one object, or None for kinds the renderer does not read."""
    kind = obj.get("kind") if isinstance(obj, Mapping) else None
    builder = _BUILDERS.get(kind) if isinstance(kind, str) else None
    if builder is None:
        return None
    return builder(obj)


def _string_map(reader: _Reader, value: Any, field_path: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, item in reader.mapping(value, field_path).items():
        if isinstance(key, str) and isinstance(item, str):
            result[key] = item
        else:
            reader.problem(f"{field_path}[{key}]", f"value must be a string, got {item!r}")
    return result


def _backend(reader: _Reader, value: Any, field_path: str) -> BackendRef | None:
    spec = reader.mapping(value, field_path)
    if not spec:
        reader.problem(field_path, "backend is missing")
        return None
    if "resource" in spec:
        reader.problem(f"{field_path}.resource", "resource backends are not supported; use a Service", "Unsupported")
        return None
    service = reader.mapping(spec.get("service"), f"{field_path}.service")
    name = reader.text(service.get("name"), f"{field_path}.service.name")
    port = reader.mapping(service.get("port"), f"{field_path}.service.port")
    number = reader.port(port.get("number"), f"{field_path}.service.port.number")
    port_name = reader.text(port.get("name"), f"{field_path}.service.port.name") or None
    if not name:
        reader.problem(f"{field_path}.service.name", "backend service name is missing")
        return None
    if (number is None) == (port_name is None):
        reader.problem(f"{field_path}.service.port", "exactly one of port.number and port.name is required")
        return None
    return BackendRef(name, number, port_name, field_path)


def _ingress(obj: Mapping[str, Any]) -> Ingress:
    ref, meta = _ref(obj, "Ingress")
    r = _Reader(ref)
    spec = r.mapping(obj.get("spec"), "spec")
    annotations = _string_map(r, meta.get("annotations"), "metadata.annotations")
    class_name = r.text(spec.get("ingressClassName"), "spec.ingressClassName") or None
    default_backend = None
    if spec.get("defaultBackend") is not None:
        default_backend = _backend(r, spec.get("defaultBackend"), "spec.defaultBackend")
    rules: list[IngressRule] = []
    for i, raw_rule in enumerate(r.items(spec.get("rules"), "spec.rules")):
        where = f"spec.rules[{i}]"
        rule = r.mapping(raw_rule, where)
        host = r.text(rule.get("host"), f"{where}.host").lower()
        http = r.mapping(rule.get("http"), f"{where}.http")
        paths: list[IngressPath] = []
        for j, raw_path in enumerate(r.items(http.get("paths"), f"{where}.http.paths")):
            pwhere = f"{where}.http.paths[{j}]"
            item = r.mapping(raw_path, pwhere)
            paths.append(
                IngressPath(
                    path=r.text(item.get("path"), f"{pwhere}.path", "/") or "/",
                    path_type=r.text(item.get("pathType"), f"{pwhere}.pathType", "ImplementationSpecific"),
                    backend=_backend(r, item.get("backend"), f"{pwhere}.backend"),
                    field=pwhere,
                )
            )
        rules.append(IngressRule(host, tuple(paths), where))
    tls: list[IngressTLS] = []
    for i, raw_tls in enumerate(r.items(spec.get("tls"), "spec.tls")):
        where = f"spec.tls[{i}]"
        entry = r.mapping(raw_tls, where)
        hosts = tuple(r.text(h, f"{where}.hosts").lower() for h in r.items(entry.get("hosts"), f"{where}.hosts"))
        tls.append(IngressTLS(tuple(h for h in hosts if h), r.text(entry.get("secretName"), f"{where}.secretName"),
                              where))
    generation = meta.get("generation")
    return Ingress(
        ref=ref,
        created=_timestamp(meta.get("creationTimestamp")),
        annotations=annotations,
        class_name=class_name,
        default_backend=default_backend,
        rules=tuple(rules),
        tls=tuple(tls),
        uid=r.text(meta.get("uid"), "metadata.uid"),
        generation=generation if isinstance(generation, int) else 0,
        problems=tuple(r.problems),
        status_addresses=_lb_addresses(obj),
    )


def _lb_addresses(obj: Mapping[str, Any]) -> tuple[str, ...]:
    status = obj.get("status")
    lb = status.get("loadBalancer") if isinstance(status, Mapping) else None
    items = lb.get("ingress") if isinstance(lb, Mapping) else None
    addresses: list[str] = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, Mapping):
            value = item.get("ip") or item.get("hostname")
            if isinstance(value, str) and value:
                addresses.append(value)
    return tuple(addresses)


def _timestamp(value: Any) -> str:
    """RFC 3339 text sorts chronologically; YAML may have parsed it into a datetime already."""
    if isinstance(value, str):
        return value
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return ""


def _secret(obj: Mapping[str, Any]) -> Secret:
    ref, _ = _ref(obj, "Secret")
    r = _Reader(ref)
    data: dict[str, bytes] = {}
    for key, value in r.mapping(obj.get("data"), "data").items():
        if not isinstance(value, str):
            r.problem(f"data[{key}]", "value must be a base64 string")
            continue
        try:
            data[str(key)] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            r.problem(f"data[{key}]", "value is not valid base64")
    # stringData is write-only in a cluster; in local manifests it is the friendly way to write PEM.
    for key, value in _string_map(r, obj.get("stringData"), "stringData").items():
        data[key] = value.encode()
    return Secret(ref, r.text(obj.get("type"), "type", "Opaque"), data, tuple(r.problems))


def _service(obj: Mapping[str, Any]) -> Service:
    ref, _ = _ref(obj, "Service")
    r = _Reader(ref)
    spec = r.mapping(obj.get("spec"), "spec")
    ports: list[ServicePort] = []
    for i, raw in enumerate(r.items(spec.get("ports"), "spec.ports")):
        item = r.mapping(raw, f"spec.ports[{i}]")
        port = r.port(item.get("port"), f"spec.ports[{i}].port")
        if port is None:
            continue
        target = item.get("targetPort")
        ports.append(
            ServicePort(
                name=r.text(item.get("name"), f"spec.ports[{i}].name"),
                port=port,
                target_port=target if isinstance(target, (int, str)) and not isinstance(target, bool) else None,
                app_protocol=r.text(item.get("appProtocol"), f"spec.ports[{i}].appProtocol").lower(),
            )
        )
    external = tuple(a for a in spec.get("externalIPs") or () if isinstance(a, str)) if isinstance(
        spec.get("externalIPs"), list) else ()
    return Service(ref, r.text(spec.get("type"), "spec.type", "ClusterIP"), tuple(ports), tuple(r.problems),
                   _lb_addresses(obj) or external)


def _endpoint_slice(obj: Mapping[str, Any]) -> EndpointSlice:
    ref, meta = _ref(obj, "EndpointSlice")
    r = _Reader(ref)
    labels = _string_map(r, meta.get("labels"), "metadata.labels")
    endpoints: list[SliceEndpoint] = []
    for i, raw in enumerate(r.items(obj.get("endpoints"), "endpoints")):
        item = r.mapping(raw, f"endpoints[{i}]")
        addresses = tuple(
            a for a in (r.text(x, f"endpoints[{i}].addresses") for x in r.items(item.get("addresses"),
                                                                                 f"endpoints[{i}].addresses")) if a
        )
        conditions = r.mapping(item.get("conditions"), f"endpoints[{i}].conditions")
        # Kubernetes: a nil "ready" means ready; only an explicit false excludes the endpoint.
        endpoints.append(SliceEndpoint(addresses, conditions.get("ready") is not False))
    ports: list[SlicePort] = []
    for i, raw in enumerate(r.items(obj.get("ports"), "ports")):
        item = r.mapping(raw, f"ports[{i}]")
        port = r.port(item.get("port"), f"ports[{i}].port")
        if port is not None:
            ports.append(SlicePort(r.text(item.get("name"), f"ports[{i}].name"), port,
                                   r.text(item.get("appProtocol"), f"ports[{i}].appProtocol").lower()))
    return EndpointSlice(
        ref,
        labels.get(SERVICE_NAME_LABEL, ""),
        r.text(obj.get("addressType"), "addressType", "IPv4"),
        tuple(endpoints),
        tuple(ports),
        tuple(r.problems),
    )


def _ingress_class(obj: Mapping[str, Any]) -> IngressClass:
    ref, meta = _ref(obj, "IngressClass")
    ref = ObjectRef("IngressClass", "", ref.name)
    r = _Reader(ref)
    spec = r.mapping(obj.get("spec"), "spec")
    annotations = _string_map(r, meta.get("annotations"), "metadata.annotations")
    return IngressClass(
        ref,
        r.text(spec.get("controller"), "spec.controller"),
        annotations.get(DEFAULT_CLASS_ANNOTATION, "").lower() == "true",
        tuple(r.problems),
    )


_BUILDERS: dict[str, Callable[[Mapping[str, Any]], Projection]] = {
    "Ingress": _ingress,
    "Secret": _secret,
    "Service": _service,
    "EndpointSlice": _endpoint_slice,
    "IngressClass": _ingress_class,
}

__all__ = [
    "BackendRef", "EndpointSlice", "Ingress", "IngressClass", "IngressPath", "IngressRule", "IngressTLS", "Inputs",
    "Projection", "Secret", "Service", "ServicePort", "SliceEndpoint", "SlicePort", "project",
]
