"""Regenerate deploy/examples: the manifests `portcullis local` serves out of the box.

Certificates are real (one example CA issues all of them, valid for ten years) so the README's
curl lines verify end to end. Run: `.venv/bin/python scripts/make_examples.py`.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pki import CA

OUT = Path(__file__).resolve().parents[1] / "deploy" / "examples"
NS = "demo"
DAYS = 3650


def meta(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": NS, **extra}


def tls_secret(name: str, cert_pem: str, key_pem: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": meta(name),
        "data": {"tls.crt": b64(cert_pem), "tls.key": b64(key_pem)},
    }


def ca_secret(name: str, ca_pem: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta(name),
            "data": {"ca.crt": b64(ca_pem)}}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def backend(name: str, port: int, port_name: str, target: int, app_protocol: str | None = None) -> list[dict[str, Any]]:
    service_port: dict[str, Any] = {"name": port_name, "port": port, "targetPort": target, "protocol": "TCP"}
    slice_port: dict[str, Any] = {"name": port_name, "port": target, "protocol": "TCP"}
    if app_protocol:
        service_port["appProtocol"] = app_protocol
        slice_port["appProtocol"] = app_protocol
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": meta(name), "spec": {"ports": [service_port]}},
        {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": meta(f"{name}-local", labels={"kubernetes.io/service-name": name}),
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [slice_port],
        },
    ]


def ingress(name: str, host: str, service: str, port: int, annotations: dict[str, str],
            secret: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ingressClassName": "portcullis",
        "rules": [{"host": host, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": {"number": port}}},
        }]}}],
    }
    if secret is not None:
        spec["tls"] = [{"hosts": [host], "secretName": secret}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": meta(name, annotations=annotations) if annotations else meta(name), "spec": spec}


def write(name: str, comment: str, docs: list[dict[str, Any]]) -> None:
    body = "\n---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)
    (OUT / name).write_text(f"# {comment}\n{body}")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ca = CA("Portcullis Example CA")
    (OUT / "ca.crt").write_text(ca.cert_pem)
    client = ca.issue("demo-client", client=True, days=DAYS, common_name="demo-client")
    (OUT / "client.crt").write_text(client.cert_pem)
    (OUT / "client.key").write_text(client.key_pem)
    issued = {h: ca.issue(f"{h}.portcullis.test", days=DAYS) for h in ("edge", "bridge", "legacy", "mtls", "direct")}
    secure_web = ca.issue("secure-web.demo.svc", days=DAYS)

    write("00-class.yaml", "The IngressClass Portcullis serves, and the demo namespace.", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
         "metadata": {"name": "portcullis"}, "spec": {"controller": "portcullis.io/ingress-controller"}},
    ])
    write("10-backends.yaml", "Backends served by `python -m examples.backends --examples deploy/examples` on 127.0.0.1.",
          [*backend("web", 80, "http", 9001),
           *backend("secure-web", 443, "https", 9443, "https"),
           *backend("tls-app", 443, "tls", 9444)])
    write("20-secrets.yaml", "Certificates, all issued by the example CA (ca.crt); regenerate with "
          "scripts/make_examples.py.", [
              *(tls_secret(f"{h}-tls", c.cert_pem, c.key_pem) for h, c in issued.items() if h != "direct"),
              tls_secret("secure-web-serving", secure_web.cert_pem, secure_web.key_pem),
              tls_secret("tls-app-serving", issued["direct"].cert_pem, issued["direct"].key_pem),
              ca_secret("example-ca", ca.cert_pem),
          ])
    write("30-plain.yaml", "HTTP only: no spec.tls.", [ingress("plain", "plain.portcullis.test", "web", 80, {}, None)])
    write("31-edge.yaml", "offload (edge): TLS ends at Portcullis, the backend gets plain HTTP.", [
        ingress("edge", "edge.portcullis.test", "web", 80, {"portcullis.io/hsts": "max-age=300"}, "edge-tls")])
    write("32-bridge.yaml", "reencrypt: TLS to the backend, its certificate verified against the example CA.", [
        ingress("bridge", "bridge.portcullis.test", "secure-web", 443, {
            "portcullis.io/tls-mode": "reencrypt",
            "portcullis.io/backend-ca-secret": "example-ca",
        }, "bridge-tls")])
    write("33-direct.yaml", "passthrough: the backend terminates TLS with its own certificate.", [
        ingress("direct", "direct.portcullis.test", "tls-app", 443, {"portcullis.io/tls-mode": "passthrough"}, None)])
    write("34-legacy.yaml", "Migrated from ingress-nginx: its TLS annotations keep their meaning.", [
        ingress("legacy", "legacy.portcullis.test", "secure-web", 443, {
            "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
            "nginx.ingress.kubernetes.io/proxy-ssl-secret": "demo/example-ca",
            "nginx.ingress.kubernetes.io/proxy-ssl-verify": "on",
            "nginx.ingress.kubernetes.io/proxy-ssl-name": "secure-web.demo.svc",
        }, "legacy-tls")])
    write("35-mtls.yaml", "offload with client-certificate auth (client.crt/client.key are a valid client).", [
        ingress("mtls", "mtls.portcullis.test", "web", 80, {
            "portcullis.io/client-auth-secret": "example-ca",
            "portcullis.io/client-cert-headers": "true",
        }, "mtls-tls")])


if __name__ == "__main__":
    main()
