"""Builders for the Kubernetes objects the e2e tests apply: plain dicts, ready for ``Kube.apply``."""

from __future__ import annotations

from typing import Any

MANAGED_BY = "e2e.portcullis.io"


def selectorless_service(name: str, addresses: list[str], port: int, target_port: int,
                         port_name: str = "http", headless: bool = False,
                         ready: bool = True) -> list[dict[str, Any]]:
    """A Service without selector and the EndpointSlice a kubelet-less cluster needs for it, naming pod addresses
    (what the endpoints controller would have written for real pods)."""
    spec: dict[str, Any] = {"ports": [{"name": port_name, "port": port, "targetPort": target_port,
                                       "protocol": "TCP"}]}
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec},
        {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-e2e", "labels": {"kubernetes.io/service-name": name,
                                                            "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": target_port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": ready}} for address in addresses],
        },
    ]


def tls_secret(name: str, cert_pem: str, key_pem: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": cert_pem, "tls.key": key_pem}}


def ca_secret(name: str, ca_pem: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "stringData": {"ca.crt": ca_pem}}


def ingress(name: str, host: str, service: str, port: int, ingress_class: str, tls_secret: str | None = None,
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """One host, one ``/`` Prefix rule; ``tls_secret`` adds the host to ``spec.tls``."""
    spec: dict[str, Any] = {
        "ingressClassName": ingress_class,
        "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
            "service": {"name": service, "port": {"number": port}}}}]}}],
    }
    if tls_secret:
        spec["tls"] = [{"hosts": [host], "secretName": tls_secret}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "annotations": dict(annotations or {})}, "spec": spec}
