"""deploy/cluster-examples/ say what they mean: rendered with the real renderer (plus the Secrets and endpoints a
cluster would supply), each host gets its intended mode and no Ingress has an error."""

from __future__ import annotations

import base64
from typing import Any

from controller.manifests import load_paths
from controller.model import Inputs
from controller.render import RenderConfig, render
from dataplane.snapshot import Snapshot
from tests.chart.rendering import ROOT
from tests.pki import CA

EXAMPLES = ROOT / "deploy" / "cluster-examples"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def tls_secret(ca: CA, namespace: str, name: str, *hosts: str, days: int = 90) -> dict[str, Any]:
    """The Secret cert-manager (or a person) writes: kubernetes.io/tls with tls.crt and tls.key."""
    issued = ca.issue(*hosts, days=days)
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"tls.crt": b64(issued.cert_pem), "tls.key": b64(issued.key_pem)}}


def slice_for(namespace: str, service: str, port_name: str, port: int, address: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-x", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": port_name, "port": port}]}


def cluster_state(ca: CA, blog_days: int = 90) -> list[dict[str, Any]]:
    backend_ca = CA("payments backend CA")
    return [
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "portcullis"},
         "spec": {"controller": "portcullis.io/ingress-controller"}},
        tls_secret(ca, "shop", "shop-tls", "shop.example.com"),
        tls_secret(ca, "payments", "pay-tls", "pay.example.com"),
        tls_secret(ca, "blog", "blog-tls", "blog.example.com", days=blog_days),
        tls_secret(ca, "blog", "docs-tls", "docs.example.com"),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-backend-ca", "namespace": "payments"},
         "data": {"ca.crt": b64(backend_ca.cert_pem)}},
        slice_for("shop", "web", "http", 8080, "10.0.0.10"),
        slice_for("payments", "api", "https", 8443, "10.0.0.20"),
        slice_for("vault", "vault", "https", 8200, "10.0.0.30"),
        slice_for("blog", "blog", "http", 8080, "10.0.0.40"),
    ]


def render_examples(state: list[dict[str, Any]]) -> Snapshot:
    inputs, problems = Inputs.from_objects(load_paths([str(EXAMPLES)]) + state)
    snapshot, render_problems = render(inputs, RenderConfig())
    errors = [str(p) for p in problems + render_problems if p.severity == "Error"]
    assert errors == []
    return snapshot


def test_each_example_host_gets_its_mode() -> None:
    snapshot = render_examples(cluster_state(CA()))
    modes = {h.host: h.mode for h in snapshot.tls_hosts}
    # The SNI table knows passthrough and terminate; offload vs reencrypt is whether the route's pool speaks TLS.
    assert modes == {"shop.example.com": "terminate", "pay.example.com": "terminate",
                     "vault.example.com": "passthrough", "blog.example.com": "terminate",
                     "docs.example.com": "terminate"}
    pools = {p.id: p for p in snapshot.pools}
    hosts = {h.host: h for h in snapshot.tls_hosts}
    vault_pool = pools[hosts["vault.example.com"].pool_id or ""]
    assert vault_pool.proxy_protocol == "v2"
    assert [(e.address, e.port) for e in vault_pool.endpoints] == [("10.0.0.30", 8200)]
    assert hosts["pay.example.com"].min_version == "1.3"
    routes = {v.host: v for v in snapshot.virtual_hosts}
    (pay_route,) = routes["pay.example.com"].routes
    pay_pool = pools[pay_route.pool_id]
    assert pay_pool.tls is not None and pay_pool.tls.verify is True
    assert pay_pool.tls.server_name == "api.payments.svc" and pay_pool.tls.ca_id is not None
    assert pay_pool.load_balance == "least-conn"
    for offload in ("shop.example.com", "blog.example.com", "docs.example.com"):
        assert all(pools[r.pool_id].tls is None for r in routes[offload].routes)
    assert routes["shop.example.com"].insecure_policy == "redirect"
    assert routes["docs.example.com"].hsts == "max-age=63072000; includeSubDomains; preload"


def test_a_renewed_cert_manager_secret_changes_the_served_certificate() -> None:
    """cert-manager renews by rewriting the Secret; the next render serves the new certificate for the host."""
    ca = CA()
    before = render_examples(cluster_state(ca, blog_days=30))
    after = render_examples(cluster_state(ca, blog_days=90))

    def blog_cert(snapshot: Snapshot) -> tuple[str, int]:
        host = next(h for h in snapshot.tls_hosts if h.host == "blog.example.com")
        cert = next(c for c in snapshot.certificates if c.id == host.certificate_id)
        assert "blog.example.com" in cert.names
        return cert.id, cert.not_after

    (old_id, old_expiry), (new_id, new_expiry) = blog_cert(before), blog_cert(after)
    assert new_id != old_id and new_expiry > old_expiry
