"""limit-connections / limit-rps / limit-whitelist (ingress-nginx and portcullis.io/) reach the snapshot."""

from __future__ import annotations

from controller.annotations import annotation_table
from tests.pki import CA
from tests.unit import objects as k

NGINX = "nginx.ingress.kubernetes.io/"
NATIVE = "portcullis.io/"
WEB = [k.service("web"), k.endpoints("web", "10.0.0.1")]


run = k.rendered  # render as the controller does (tests/unit/objects.py)


def test_nginx_limits_reach_routes_and_tls_rows() -> None:
    issued = CA("Limits CA").issue("a.example.com")
    annotations = {NGINX + "limit-rps": "7", NGINX + "limit-connections": "3",
                   NGINX + "limit-whitelist": "10.0.0.0/8, 192.168.1.7"}
    snap, problems = run(k.ingress("a", annotations=annotations, tls_secret="a-tls"),
                         k.tls_secret("a-tls", issued.cert_pem, issued.key_pem), *WEB)
    assert not [p for p in problems if "limit" in p.field], problems
    route = next(v for v in snap.virtual_hosts if v.host == "a.example.com").routes[0]
    assert (route.limit_rps, route.limit_whitelist) == (7, ("10.0.0.0/8", "192.168.1.7"))
    row = next(h for h in snap.tls_hosts if h.host == "a.example.com")
    assert (row.limit_connections, row.limit_whitelist) == (3, ("10.0.0.0/8", "192.168.1.7"))


def test_native_beats_nginx_and_unset_means_no_limit() -> None:
    snap, _ = run(k.ingress("a", annotations={NGINX + "limit-rps": "7", NATIVE + "limit-rps": "2"}), *WEB)
    assert next(v for v in snap.virtual_hosts if v.host == "a.example.com").routes[0].limit_rps == 2
    snap, _ = run(k.ingress("a"), *WEB)
    route = next(v for v in snap.virtual_hosts if v.host == "a.example.com").routes[0]
    assert (route.limit_rps, route.limit_whitelist) == (0, ())


def test_bad_values_are_problems_naming_the_annotation_and_no_limit_applies() -> None:
    snap, problems = run(k.ingress("a", annotations={NGINX + "limit-rps": "-1",
                                                     NGINX + "limit-whitelist": "10.0.0.0/8,nope"}), *WEB)
    fields = {p.field for p in problems if p.reason == "InvalidAnnotation"}
    assert f"metadata.annotations[{NGINX}limit-rps]" in fields
    assert f"metadata.annotations[{NGINX}limit-whitelist]" in fields
    assert next(v for v in snap.virtual_hosts if v.host == "a.example.com").routes[0].limit_rps == 0


def test_limit_connections_on_plain_http_is_reported_as_ignored() -> None:
    _, problems = run(k.ingress("a", annotations={NGINX + "limit-connections": "5"}), *WEB)
    assert any(p.reason == "AnnotationIgnored" and "limit-connections" in p.field for p in problems)


def test_annotation_table_lists_the_limits() -> None:
    table = annotation_table()
    for key in ("limit-connections", "limit-rps", "limit-whitelist"):
        assert NGINX + key in table and NATIVE + key in table
