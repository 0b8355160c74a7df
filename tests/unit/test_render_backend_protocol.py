"""HTTP/2 and gRPC annotations (issue 13), through ``render``: objects in, snapshot and problems out.

``portcullis.io/backend-protocol`` and ingress-nginx's ``backend-protocol`` GRPC/GRPCS set ``Pool.protocol`` (and,
for h2/grpcs/GRPCS, TLS to the backend); ``portcullis.io/http2`` sets ``TLSHost.http2`` on terminated hosts. Each
case checks the snapshot field the data plane acts on and the exact problems an operator sees.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.annotations import annotation_table
from controller.model import Inputs
from controller.plan import upstream_tls_wanted
from controller.problems import Problem
from controller.render import RenderConfig, render
from dataplane.snapshot import Pool, Snapshot, validate
from tests.pki import CA
from tests.unit import objects as k

P = "portcullis.io/"
NGINX = "nginx.ingress.kubernetes.io/"
HOST = "a.example.com"


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture(scope="module")
def world(ca: CA) -> list[dict[str, Any]]:
    issued = ca.issue(HOST)
    return [k.tls_secret("a-tls", issued.cert_pem, issued.key_pem), k.ca_secret("cas", ca.cert_pem),
            k.service("web"), k.endpoints("web", "10.0.0.1")]


def run(*objs: dict[str, Any]) -> tuple[Snapshot, list[Problem]]:
    inputs, problems = Inputs.from_objects(objs)
    snapshot, render_problems = render(inputs, RenderConfig())
    assert validate(snapshot, check_pem=True) == [], "the renderer must never emit a snapshot the data plane refuses"
    return snapshot, problems + render_problems


def pool_of(snap: Snapshot, host: str = HOST, index: int = 0) -> Pool:
    vhost = next(v for v in snap.virtual_hosts if v.host == host)
    pool = snap.pool(vhost.routes[index].pool_id)
    assert pool is not None
    return pool


def reasons(problems: list[Problem]) -> list[tuple[str, str]]:
    return sorted((p.severity, p.reason) for p in problems)


# --- portcullis.io/backend-protocol -------------------------------------------------------------


@pytest.mark.parametrize(("value", "protocol", "tls"), [
    ("http1", "http1", False), ("h2c", "h2", False), ("grpc", "h2", False), ("h2", "h2", True),
    ("grpcs", "h2", True), ("GRPC", "h2", False), (" H2 ", "h2", True), ("HTTP1", "http1", False),
])
def test_each_native_value_sets_the_pool_protocol_and_tls(world: list[dict[str, Any]], value: str, protocol: str,
                                                          tls: bool) -> None:
    """An offload Ingress: h2/grpcs add verified TLS to the backend, and the backend CA annotation is used, not
    reported ignored (offload alone would report it)."""
    annotations = {P + "backend-protocol": value}
    if tls:
        annotations |= {P + "backend-ca-secret": "cas", P + "backend-server-name": "grpc.internal"}
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations=annotations), *world)
    assert problems == []
    pool = pool_of(snap)
    assert pool.protocol == protocol
    assert (pool.tls is not None) is tls
    if pool.tls is not None:
        assert pool.tls.verify and pool.tls.ca_id is not None and pool.tls.server_name == "grpc.internal"


def test_h2_over_tls_on_plain_http_ingress_keeps_plain_http_to_clients(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", annotations={P + "backend-protocol": "grpcs"}), *world)
    assert problems == []
    assert snap.tls_hosts == ()
    pool = pool_of(snap)
    assert pool.protocol == "h2" and pool.tls is not None and pool.tls.verify
    assert pool.tls.server_name == "web.shop.svc"


def test_reencrypt_with_a_cleartext_protocol_uses_tls_and_says_so(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={
        P + "tls-mode": "reencrypt", P + "backend-ca-secret": "cas", P + "backend-protocol": "h2c"}), *world)
    assert reasons(problems) == [("Warning", "BackendProtocolMismatch")]
    assert problems[0].field == f"metadata.annotations[{P}backend-protocol]" and "h2c" in problems[0].message
    pool = pool_of(snap)
    assert pool.protocol == "h2" and pool.tls is not None


def test_explicit_offload_with_grpcs_still_encrypts_to_the_backend(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={
        P + "tls-mode": "offload", P + "backend-protocol": "grpcs", P + "backend-ca-secret": "cas"}), *world)
    assert problems == []
    assert pool_of(snap).tls is not None


def test_cleartext_protocol_wins_over_a_tls_app_protocol_with_a_warning(world: list[dict[str, Any]]) -> None:
    snap, problems = run(
        k.ingress("shop", tls_secret="a-tls", service="secure", port=443, annotations={P + "backend-protocol": "grpc"}),
        k.service("secure", port=443, port_name="https", app_protocol="https"),
        k.endpoints("secure", "10.0.1.1", port=8443, port_name="https"), *world)
    assert reasons(problems) == [("Warning", "BackendProtocolMismatch")]
    assert "appProtocol https" in problems[0].message and "grpc" in problems[0].message
    pool = pool_of(snap)
    assert pool.protocol == "h2" and pool.tls is None


@pytest.mark.parametrize("value", ["http3", "grpc-web", "", "h2,h2c"])
def test_unknown_value_is_reported_and_the_ingress_served_as_http1(world: list[dict[str, Any]], value: str) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={P + "backend-protocol": value}), *world)
    assert len(problems) == 1
    bad = problems[0]
    assert (bad.reason, str(bad.obj), bad.field) == (
        "InvalidAnnotation", "Ingress shop/shop", f"metadata.annotations[{P}backend-protocol]")
    assert repr(value) in bad.message and "grpcs" in bad.message
    pool = pool_of(snap)
    assert pool.protocol == "http1" and pool.tls is None


def test_passthrough_ignores_backend_protocol_with_a_warning(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", annotations={
        P + "tls-mode": "passthrough", P + "backend-protocol": "grpcs", P + "backend-ca-secret": "cas"}), *world)
    assert reasons(problems) == [("Warning", "AnnotationIgnored")] * 2
    assert {p.field for p in problems} == {f"metadata.annotations[{P}backend-protocol]",
                                           f"metadata.annotations[{P}backend-ca-secret]"}
    row = snap.tls_hosts[0]
    pool = snap.pool(row.pool_id)
    assert row.mode == "passthrough" and pool is not None and pool.protocol == "http1" and pool.tls is None


def test_a_service_port_reached_with_two_protocols_gets_two_pools(world: list[dict[str, Any]]) -> None:
    snap, problems = run(
        k.ingress("plain", host="a.example.com"),
        k.ingress("grpc", host="b.example.com", annotations={P + "backend-protocol": "grpc"}),
        k.ingress("grpcs", host="c.example.com", annotations={P + "backend-protocol": "grpcs"}), *world)
    assert problems == []
    pools = [pool_of(snap, h) for h in ("a.example.com", "b.example.com", "c.example.com")]
    assert len({p.id for p in pools}) == 3 == len(snap.pools)
    assert [(p.protocol, p.tls is not None) for p in pools] == [("http1", False), ("h2", False), ("h2", True)]
    assert pools[0].id == "shop/web:80", "the default pool keeps its id: no churn for existing Ingresses"
    assert all(p.id.startswith("shop/web:80~") for p in pools[1:])


def test_same_protocol_shares_one_pool(world: list[dict[str, Any]]) -> None:
    snap, _ = run(k.ingress("one", host="a.example.com", annotations={P + "backend-protocol": "grpc"}),
                  k.ingress("two", host="b.example.com", annotations={P + "backend-protocol": "h2c"}), *world)
    assert len(snap.pools) == 1 and snap.pools[0].protocol == "h2"


# --- ingress-nginx backend-protocol ---------------------------------------------------------------


def test_nginx_grpc_is_h2_cleartext(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={NGINX + "backend-protocol": "GRPC"}),
                         *world)
    assert problems == []
    pool = pool_of(snap)
    assert pool.protocol == "h2" and pool.tls is None
    assert snap.tls_hosts[0].mode == "terminate"


def test_nginx_grpcs_is_h2_over_tls_unverified_as_https_is(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={NGINX + "backend-protocol": "grpcs"}),
                         *world)
    assert reasons(problems) == [("Warning", "InsecureBackend")]
    assert "ingress-nginx" in problems[0].message and problems[0].field.endswith("backend-protocol]")
    pool = pool_of(snap)
    assert pool.protocol == "h2" and pool.tls is not None and pool.tls.verify is False


def test_nginx_grpcs_with_proxy_ssl_verify_is_verified(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={
        NGINX + "backend-protocol": "GRPCS", NGINX + "proxy-ssl-verify": "on", NGINX + "proxy-ssl-secret": "shop/cas"}),
        *world)
    assert problems == []
    pool = pool_of(snap)
    assert pool.protocol == "h2" and pool.tls is not None and pool.tls.verify and pool.tls.ca_id is not None


@pytest.mark.parametrize("value", ["HTTP", "HTTPS"])
def test_nginx_http_and_https_stay_http1(world: list[dict[str, Any]], value: str) -> None:
    snap, _ = run(k.ingress("shop", tls_secret="a-tls", annotations={NGINX + "backend-protocol": value}), *world)
    assert pool_of(snap).protocol == "http1"
    assert (pool_of(snap).tls is not None) is (value == "HTTPS")


@pytest.mark.parametrize("value", ["AJP", "FCGI", "AUTO_HTTP"])
def test_nginx_unsupported_protocols_are_refused_as_before(world: list[dict[str, Any]], value: str) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={NGINX + "backend-protocol": value}),
                         *world)
    assert reasons(problems) == [("Error", "IngressSkipped"), ("Error", "InvalidAnnotation")]
    invalid = next(p for p in problems if p.reason == "InvalidAnnotation")
    assert repr(value) in invalid.message and "GRPCS" in invalid.message
    assert snap.virtual_hosts == () and snap.pools == ()


def test_nginx_grpc_with_ssl_passthrough_is_ignored_with_a_warning(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", annotations={
        NGINX + "backend-protocol": "GRPC", NGINX + "ssl-passthrough": "true"}), *world)
    assert reasons(problems) == [("Warning", "AnnotationIgnored")]
    assert problems[0].field == f"metadata.annotations[{NGINX}backend-protocol]"
    assert snap.tls_hosts[0].mode == "passthrough" and snap.pools[0].protocol == "http1"


# --- native and ingress-nginx together -----------------------------------------------------------------


@pytest.mark.parametrize(("native", "nginx"),
                         [("grpc", "GRPC"), ("h2c", "grpc"), ("http1", "HTTP"), ("grpcs", "GRPCS")])
def test_agreeing_pair_is_no_conflict(world: list[dict[str, Any]], native: str, nginx: str) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={
        P + "backend-protocol": native, NGINX + "backend-protocol": nginx}), *world)
    assert problems == [], "grpcs + GRPCS: the native one wins, so the backend is verified and no Warning says not"
    assert pool_of(snap).protocol == ("http1" if native == "http1" else "h2")


@pytest.mark.parametrize(("native", "nginx", "protocol", "tls"), [
    ("grpc", "GRPCS", "h2", False), ("grpcs", "GRPC", "h2", True), ("http1", "HTTPS", "http1", False),
    ("h2", "HTTP", "h2", True), ("http1", "GRPC", "http1", False),
])
def test_disagreeing_pair_warns_and_the_native_one_wins_entirely(world: list[dict[str, Any]], native: str,
                                                                  nginx: str, protocol: str, tls: bool) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={
        P + "backend-protocol": native, NGINX + "backend-protocol": nginx}), *world)
    assert reasons(problems) == [("Warning", "AnnotationConflict")]
    conflict = problems[0]
    assert str(conflict.obj) == "Ingress shop/shop" and conflict.field == f"metadata.annotations[{P}backend-protocol]"
    assert repr(native) in conflict.message and repr(nginx) in conflict.message
    pool = pool_of(snap)
    assert (pool.protocol, pool.tls is not None) == (protocol, tls)
    assert pool.tls is None or pool.tls.verify, "the native value's TLS is verified; no ingress-nginx opt-out"


def test_invalid_native_value_leaves_the_nginx_one_in_force(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={
        P + "backend-protocol": "grpc-web", NGINX + "backend-protocol": "GRPC"}), *world)
    assert reasons(problems) == [("Error", "InvalidAnnotation")]
    assert pool_of(snap).protocol == "h2"


# --- portcullis.io/http2 ------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "offered"), [(None, True), ("true", True), ("false", False), ("False", False),
                                                ("off", False), ("on", True)])
def test_http2_sets_the_terminated_rows(world: list[dict[str, Any]], value: str | None, offered: bool) -> None:
    annotations = {P + "http2": value} if value is not None else {}
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations=annotations), *world)
    assert problems == []
    assert [(r.host, r.http2) for r in snap.tls_hosts] == [(HOST, offered)]


def test_invalid_http2_is_reported_and_h2_still_offered(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={P + "http2": "sometimes"}), *world)
    assert [(p.reason, p.field) for p in problems] == [("InvalidAnnotation", f"metadata.annotations[{P}http2]")]
    assert "'sometimes'" in problems[0].message
    assert snap.tls_hosts[0].http2 is True


@pytest.mark.parametrize(("annotations", "where"), [
    ({P + "tls-mode": "passthrough"}, "passthrough mode"), ({}, "plain HTTP"),
])
def test_http2_is_ignored_where_nothing_is_terminated(world: list[dict[str, Any]], annotations: dict[str, str],
                                                      where: str) -> None:
    snap, problems = run(k.ingress("shop", annotations=annotations | {P + "http2": "false"}), *world)
    assert [(p.reason, p.field) for p in problems] == [("AnnotationIgnored", f"metadata.annotations[{P}http2]")]
    assert where in problems[0].message
    assert all(r.http2 for r in snap.tls_hosts)


@pytest.mark.parametrize(("older", "younger"), [("true", "false"), ("false", "true")])
def test_younger_ingress_cannot_change_http2_of_a_host(world: list[dict[str, Any]], older: str, younger: str) -> None:
    snap, problems = run(
        k.ingress("old", tls_secret="a-tls", annotations={P + "http2": older}, created="2026-01-01T00:00:00Z"),
        k.ingress("new", tls_secret="a-tls", annotations={P + "http2": younger}, created="2026-01-02T00:00:00Z",
                  paths=[("/api", "Prefix", "web", 80)]), *world)
    assert [(p.reason, str(p.obj)) for p in problems] == [("TLSSettingsConflict", "Ingress shop/new")]
    assert "portcullis.io/http2" in problems[0].message and "Ingress shop/old" in problems[0].message
    assert snap.tls_hosts[0].http2 is (older == "true")
    assert [r.path for r in next(v for v in snap.virtual_hosts if v.host == HOST).routes] == ["/"]


def test_agreeing_http2_shares_the_host(world: list[dict[str, Any]]) -> None:
    snap, problems = run(
        k.ingress("old", tls_secret="a-tls", annotations={P + "http2": "false"}, created="2026-01-01T00:00:00Z"),
        k.ingress("new", tls_secret="a-tls", annotations={P + "http2": "off"}, created="2026-01-02T00:00:00Z",
                  paths=[("/api", "Prefix", "web", 80)]), *world)
    assert problems == []
    assert len(next(v for v in snap.virtual_hosts if v.host == HOST).routes) == 2


def test_other_tls_differences_keep_their_message(world: list[dict[str, Any]]) -> None:
    _, problems = run(
        k.ingress("old", tls_secret="a-tls", created="2026-01-01T00:00:00Z"),
        k.ingress("new", tls_secret="a-tls", annotations={P + "tls-min-version": "1.3", P + "http2": "false"},
                  created="2026-01-02T00:00:00Z", paths=[("/api", "Prefix", "web", 80)]), *world)
    assert [p.reason for p in problems] == ["TLSSettingsConflict"]
    assert "minimum version" in problems[0].message



# --- Service appProtocol kubernetes.io/h2c ------------------------------------------------------------------


def h2c_service(app_protocol: str = "kubernetes.io/h2c") -> list[dict[str, Any]]:
    return [k.service("grpc", port=50051, port_name="grpc", app_protocol=app_protocol),
            k.endpoints("grpc", "10.0.2.1", port=50051, port_name="grpc")]


@pytest.mark.parametrize("tls_secret", ["a-tls", None])  # offload, and plain HTTP to clients
def test_h2c_app_protocol_selects_cleartext_http2(world: list[dict[str, Any]], tls_secret: str | None) -> None:
    snap, problems = run(k.ingress("shop", tls_secret=tls_secret, service="grpc", port=50051), *h2c_service(),
                         *world)
    assert problems == []
    pool = pool_of(snap)
    assert (pool.protocol, pool.tls) == ("h2", None)
    assert pool.endpoints[0].port == 50051


def test_h2c_app_protocol_and_the_annotation_share_one_pool(world: list[dict[str, Any]]) -> None:
    snap, problems = run(
        k.ingress("one", host="a.example.com", service="grpc", port=50051),
        k.ingress("two", host="b.example.com", service="grpc", port=50051,
                  annotations={P + "backend-protocol": "grpc"}),
        *h2c_service(), *world)
    assert problems == [] and len(snap.pools) == 1 and snap.pools[0].protocol == "h2"


@pytest.mark.parametrize(("annotations", "protocol", "tls"), [
    ({P + "backend-protocol": "http1"}, "http1", False),  # the annotation says otherwise: it wins, silently
    ({P + "backend-protocol": "h2"}, "h2", True),
    ({NGINX + "backend-protocol": "GRPCS"}, "h2", True),
])
def test_a_backend_protocol_annotation_wins_over_the_app_protocol(
        world: list[dict[str, Any]], annotations: dict[str, str], protocol: str, tls: bool) -> None:
    snap, _ = run(k.ingress("shop", tls_secret="a-tls", service="grpc", port=50051, annotations=annotations),
                  *h2c_service(), *world)
    pool = pool_of(snap)
    assert (pool.protocol, pool.tls is not None) == (protocol, tls)


def test_reencrypt_to_an_h2c_port_uses_http2_over_tls_and_says_so(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", service="grpc", port=50051, annotations={
        P + "tls-mode": "reencrypt", P + "backend-ca-secret": "cas"}), *h2c_service(), *world)
    assert reasons(problems) == [("Warning", "BackendProtocolMismatch")]
    assert "appProtocol kubernetes.io/h2c" in problems[0].message and problems[0].field.startswith("spec.")
    pool = pool_of(snap)
    assert pool.protocol == "h2" and pool.tls is not None


@pytest.mark.parametrize(("app_protocol", "tls"), [
    ("kubernetes.io/ws", False), ("kubernetes.io/wss", True), ("http", False), ("grpc", False), ("h2c", False),
])
def test_other_app_protocols_stay_http1(world: list[dict[str, Any]], app_protocol: str, tls: bool) -> None:
    """Only the standard value selects HTTP/2: WebSocket is HTTP/1.1, and bare "grpc"/"h2c" are not standard
    (an Ingress says grpc with portcullis.io/backend-protocol)."""
    snap, _ = run(k.ingress("shop", tls_secret="a-tls", service="grpc", port=50051), *h2c_service(app_protocol),
                  *world)
    pool = pool_of(snap)
    assert (pool.protocol, pool.tls is not None) == ("http1", tls)


def test_passthrough_ignores_the_h2c_app_protocol(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", service="grpc", port=50051, annotations={P + "tls-mode": "passthrough"}),
                         *h2c_service(), *world)
    assert problems == []
    pool = snap.pool(snap.tls_hosts[0].pool_id)
    assert pool is not None and pool.protocol == "http1"


# --- the decision and the docs ------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "explicit", "protocol_tls", "speaks_tls", "wanted"), [
    ("passthrough", True, True, True, False),
    ("reencrypt", True, False, False, True),
    ("offload", True, True, False, True),
    ("offload", True, None, True, False),
    ("offload", False, None, True, True),
    ("offload", False, False, True, False),
    ("http", False, None, False, False),
    ("http", False, True, False, True),
])
def test_upstream_tls_decision(mode: Any, explicit: bool, protocol_tls: bool | None, speaks_tls: bool,
                               wanted: bool) -> None:
    assert upstream_tls_wanted(mode, explicit, protocol_tls, speaks_tls) is wanted


def test_annotation_table_lists_the_new_annotations_and_values() -> None:
    table = annotation_table()
    assert f"`{P}backend-protocol` | http1 \\| h2c \\| h2 \\| grpc \\| grpcs (http1)" in table
    assert f"`{P}http2` | true \\| false (true)" in table
    assert f"`{NGINX}backend-protocol` | HTTP \\| HTTPS \\| GRPC \\| GRPCS" in table
