"""Builders for Kubernetes objects as the API returns them, so renderer tests read like manifests."""

from __future__ import annotations

import base64
from typing import Any

from controller.model import Inputs
from controller.problems import Problem
from controller.render import RenderConfig, render
from dataplane.snapshot import Snapshot, validate

NS = "shop"


def ingress(
    name: str,
    host: str | None = "a.example.com",
    service: str = "web",
    port: int | str = 80,
    annotations: dict[str, str] | None = None,
    tls_secret: str | None = None,
    tls_hosts: list[str] | None = None,
    paths: list[tuple[str, str, str, int | str]] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    namespace: str = NS,
    class_name: str | None = "portcullis",
    default_backend: tuple[str, int | str] | None = None,
) -> dict[str, Any]:
    """``paths``: (path, pathType, service, port) tuples; default one ``/`` Prefix path to ``service:port``."""
    rule: dict[str, Any] = {
        "http": {"paths": [
            {"path": p, "pathType": t, "backend": {"service": {"name": s, "port": _port(n)}}}
            for p, t, s, n in (paths if paths is not None else [("/", "Prefix", service, port)])
        ]}
    }
    if host is not None:
        rule["host"] = host
    spec: dict[str, Any] = {"rules": [rule]}
    if class_name is not None:
        spec["ingressClassName"] = class_name
    if tls_secret is not None or tls_hosts is not None:
        entry: dict[str, Any] = {"hosts": tls_hosts if tls_hosts is not None else [host]}
        if tls_secret is not None:
            entry["secretName"] = tls_secret
        spec["tls"] = [entry]
    if default_backend is not None:
        spec["defaultBackend"] = {"service": {"name": default_backend[0], "port": _port(default_backend[1])}}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "creationTimestamp": created}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}


def _port(port: int | str) -> dict[str, Any]:
    return {"number": port} if isinstance(port, int) else {"name": port}


def service(name: str, port: int = 80, port_name: str = "http", app_protocol: str | None = None,
            namespace: str = NS, type_: str = "ClusterIP") -> dict[str, Any]:
    item: dict[str, Any] = {"name": port_name, "port": port, "targetPort": 8080}
    if app_protocol:
        item["appProtocol"] = app_protocol
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"type": type_, "ports": [item]}}


def endpoints(service_name: str, *addresses: str, port: int = 8080, port_name: str = "http",
              not_ready: tuple[str, ...] = (), namespace: str = NS, name: str | None = None) -> dict[str, Any]:
    eps = [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]
    eps += [{"addresses": [a], "conditions": {"ready": False}} for a in not_ready]
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name or f"{service_name}-abc", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4", "endpoints": eps, "ports": [{"name": port_name, "port": port}],
    }


def tls_secret(name: str, cert_pem: str, key_pem: str, namespace: str = NS) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"tls.crt": _b64(cert_pem), "tls.key": _b64(key_pem)}}


def ca_secret(name: str, ca_pem: str, crl_pem: str | None = None, namespace: str = NS) -> dict[str, Any]:
    data = {"ca.crt": _b64(ca_pem)}
    if crl_pem:
        data["ca.crl"] = _b64(crl_pem)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "data": data}


def ingress_class(name: str, controller: str = "portcullis.io/ingress-controller",
                  default: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if default:
        meta["annotations"] = {"ingressclass.kubernetes.io/is-default-class": "true"}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": meta,
            "spec": {"controller": controller}}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def rendered(*objs: dict[str, Any], config: RenderConfig | None = None) -> tuple[Snapshot, list[Problem]]:
    """Render the objects as the controller does; the snapshot must be one the data plane accepts."""
    inputs, problems = Inputs.from_objects(objs)
    snapshot, render_problems = render(inputs, config or RenderConfig())
    assert validate(snapshot, check_pem=True) == [], "the renderer must never emit a snapshot the data plane refuses"
    return snapshot, problems + render_problems
