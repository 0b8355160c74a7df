"""Routing decisions (pure): host matching, path matching, SNI/Host agreement, insecure policy."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dataplane.http.parser import parse_request_head
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import (
    TLS_CLOSE_AFTER,
    TLS_REFUSE,
    TLS_SAME,
    Forward,
    Local,
    build_http_table,
    client_auth_gate,
    host_name,
    match_cn_patterns,
    tls_change,
)
from dataplane.metrics import Metrics
from dataplane.snapshot import ClientAuth, Endpoint, Pool, Route, Snapshot, TLSHost, UpstreamTLS, VirtualHost

EP = Endpoint("127.0.0.1", 9)


def snap() -> Snapshot:
    pools = tuple(Pool(p, (EP,)) for p in ("exact", "foo", "root", "wild", "default", "api", "tls", "acme"))
    return Snapshot(
        pools=pools,
        tls_hosts=(
            TLSHost("secure.test", "terminate"),
            TLSHost("*.wild.test", "terminate"),
            TLSHost("pass.test", "passthrough", pool_id="root"),
        ),
        virtual_hosts=(
            VirtualHost("app.test", (
                Route("/", "Prefix", "root"), Route("/foo", "Prefix", "foo"), Route("/foo/exact", "Exact", "exact"),
                Route("/api/", "Prefix", "api"),
            )),
            VirtualHost("*.wild.test", (Route("/", "Prefix", "wild"),), tls=True, insecure_policy="allow"),
            VirtualHost("", (Route("/", "Prefix", "default"),)),
            VirtualHost("secure.test", (
                Route("/", "Prefix", "tls"), Route("/.well-known/acme-challenge", "Prefix", "acme"),
            ), tls=True, insecure_policy="redirect", hsts="max-age=31536000"),
            VirtualHost("deny.test", (Route("/", "Prefix", "tls"),), tls=True, insecure_policy="deny"),
            VirtualHost("nopaths.test", (Route("/only", "Exact", "exact"),)),
        ),
    ).canonical()


def decide(target: str, host: str = "app.test", https: bool = False, row: str | None = None,
           port: int = 443) -> Forward | Local:
    table = build_http_table(snap(), None, Metrics(), HTTPSettings(https_redirect_port=port))
    head = f"GET {target} HTTP/1.1\r\nHost: {host}".encode()
    return table.route(parse_request_head(head, 8192, 32768), https, row)


@pytest.mark.parametrize(
    ("path", "pool"),
    [
        ("/", "root"),
        ("/anything", "root"),
        ("/foo", "foo"),
        ("/foo/", "foo"),
        ("/foo/bar", "foo"),
        ("/foobar", "root"),  # segment semantics
        ("/foo/exact", "exact"),
        ("/foo/exact/", "foo"),  # Exact is exact
        ("/api", "api"),  # "/api/" prefix also matches "/api"
        ("/api/v1", "api"),
        ("/apix", "root"),
        ("/foo?q=/bar", "foo"),
    ],
)
def test_paths(path: str, pool: str) -> None:
    d = decide(path)
    assert isinstance(d, Forward) and d.pool_id == pool


@pytest.mark.parametrize(
    ("host", "pool"),
    [
        ("app.test", "root"),
        ("APP.Test:8080", "root"),
        ("app.test.", "root"),
        ("a.wild.test", "wild"),
        ("b.wild.test:1", "wild"),
        ("x.y.wild.test", "default"),  # single label only
        ("wild.test", "default"),
        ("unknown.test", "default"),
        ("[::1]:80", "default"),
    ],
)
def test_hosts(host: str, pool: str) -> None:
    d = decide("/", host)
    assert isinstance(d, Forward) and d.pool_id == pool


def test_no_route_is_404() -> None:
    d = decide("/other", "nopaths.test")
    assert isinstance(d, Local) and d.status == 404 and d.label == "nopaths.test"


def test_no_default_vhost_is_404() -> None:
    s = snap()
    from dataclasses import replace

    s = replace(s, virtual_hosts=tuple(v for v in s.virtual_hosts if v.host)).canonical()
    table = build_http_table(s, None, Metrics(), HTTPSettings())
    d = table.route(parse_request_head(b"GET / HTTP/1.1\r\nHost: nobody.test", 8192, 32768), False, None)
    assert isinstance(d, Local) and d.status == 404


@pytest.mark.parametrize(
    ("host", "row", "status"),
    [
        ("secure.test", "secure.test", None),
        ("secure.test", None, 421),  # handshake with the default certificate, then ask for a TLS host
        ("app.test", "secure.test", 421),
        ("app.test", None, None),  # no row either way
        ("a.wild.test", "*.wild.test", None),
        ("b.wild.test", "*.wild.test", None),
        ("secure.test", "*.wild.test", 421),
        ("pass.test", None, 421),
    ],
)
def test_https_host_must_match_sni_row(host: str, row: str | None, status: int | None) -> None:
    d = decide("/", host, https=True, row=row)
    if status is None:
        assert isinstance(d, Forward)
    else:
        assert isinstance(d, Local) and d.status == status


@pytest.mark.parametrize(
    ("target", "host", "port", "status", "location"),
    [
        ("/a?b=1", "secure.test", 443, 308, b"https://secure.test/a?b=1"),
        ("/a", "Secure.Test:8080", 8443, 308, b"https://secure.test:8443/a"),
        ("/x", "deny.test", 443, 403, None),
        ("/.well-known/acme-challenge/tok", "secure.test", 443, None, None),
        ("/.well-known/acme-challenge/tok", "deny.test", 443, None, None),
        ("/", "a.wild.test", 443, None, None),  # allow
    ],
)
def test_insecure_policy(target: str, host: str, port: int, status: int | None, location: bytes | None) -> None:
    d = decide(target, host, port=port)
    if status is None:
        assert isinstance(d, Forward)
    else:
        assert isinstance(d, Local) and d.status == status and d.location == location


def test_acme_goes_to_its_route() -> None:
    d = decide("/.well-known/acme-challenge/tok", "secure.test")
    assert isinstance(d, Forward) and d.pool_id == "acme"


def test_https_is_never_redirected_and_carries_hsts() -> None:
    d = decide("/", "secure.test", https=True, row="secure.test")
    assert isinstance(d, Forward) and d.vhost.hsts == b"max-age=31536000"


def test_host_name() -> None:
    assert host_name(b"Example.COM:443") == "example.com"
    assert host_name(b"[::1]:8443") == "[::1]"
    assert host_name(b"") == ""


def test_pool_state_carries_over_when_unchanged() -> None:
    metrics = Metrics()
    first = build_http_table(snap(), None, metrics, HTTPSettings())
    second = build_http_table(snap(), first, metrics, HTTPSettings())
    assert second.upstreams["root"] is first.upstreams["root"]
    assert second.pools["root"] is first.pools["root"]
    first.pools["foo"].failed(EP)
    from dataclasses import replace

    s = snap()
    changed = replace(s, pools=tuple(replace(p, read_timeout=5.0) if p.id == "foo" else p for p in s.pools))
    third = build_http_table(changed.canonical(), second, metrics, HTTPSettings())
    assert third.upstreams["foo"] is not second.upstreams["foo"]
    assert not third.pools["foo"].is_up(EP)  # the down mark of a remaining endpoint survives


def test_tls_contexts_shared_and_insecure_counted() -> None:
    from tests.pki import CA

    ca = CA()
    from dataplane.snapshot import CABundle, content_id

    bundle = CABundle(content_id(ca.cert_pem), ca.cert_pem)
    s = Snapshot(
        ca_bundles=(bundle,),
        pools=(
            Pool("a", (EP,), UpstreamTLS("a.svc", bundle.id)),
            Pool("b", (EP,), UpstreamTLS("b.svc", bundle.id)),
            Pool("c", (EP,), UpstreamTLS("c.svc", None, verify=False)),
        ),
    ).canonical()
    metrics = Metrics()
    table = build_http_table(s, None, metrics, HTTPSettings())
    assert table.upstreams["a"].ssl_context is table.upstreams["b"].ssl_context
    assert table.upstreams["a"].server_name == "a.svc"
    assert metrics.registry.get_sample_value("portcullis_insecure_upstream_pools") == 1.0
    again = build_http_table(s, None, metrics, HTTPSettings())
    assert again.upstreams["a"].ssl_context is not table.upstreams["a"].ssl_context  # no previous, no cache
    carried = build_http_table(s, table, metrics, HTTPSettings())
    assert carried.upstreams["a"].ssl_context is table.upstreams["a"].ssl_context


# --- connection-lifetime decisions (pure) ---------------------------------------------------------

_ROW = TLSHost("m.test", "terminate", "cert-a")


@pytest.mark.parametrize(
    ("current", "verdict"),
    [
        (_ROW, TLS_SAME),
        (replace(_ROW, source="ns/other"), TLS_SAME),
        (replace(_ROW, certificate_id="cert-b"), TLS_CLOSE_AFTER),
        (replace(_ROW, min_version="1.3"), TLS_CLOSE_AFTER),
        (replace(_ROW, ciphers="ECDHE-RSA-AES128-GCM-SHA256"), TLS_CLOSE_AFTER),
        (replace(_ROW, prefer_server_ciphers=False), TLS_CLOSE_AFTER),
        (replace(_ROW, host="*.test"), TLS_CLOSE_AFTER),  # a wildcard row now answers: new certificate
        (replace(_ROW, client_auth=ClientAuth("ca")), TLS_REFUSE),
        (replace(_ROW, mode="passthrough", pool_id="p"), TLS_REFUSE),
        (None, TLS_REFUSE),
    ],
)
def test_tls_change(current: TLSHost | None, verdict: int) -> None:
    assert tls_change(_ROW, current) == verdict


def test_tls_change_without_handshake_row() -> None:
    assert tls_change(None, None) == TLS_SAME
    assert tls_change(None, _ROW) == TLS_REFUSE  # a row (maybe with client auth) appeared for this name


_PAGE = "https://login.test/cert"


@pytest.mark.parametrize(
    ("auth", "verified", "dn", "expected"),
    [
        (None, None, "", None),
        (ClientAuth("ca"), True, "CN=a", None),
        (ClientAuth("ca"), None, "", 400),
        (ClientAuth("ca", error_page=_PAGE), None, "", 302),
        (ClientAuth("ca", error_page=_PAGE), False, "CN=a", 302),
        (ClientAuth("ca", "optional"), None, "", None),
        (ClientAuth("ca", "optional"), False, "CN=a", 403),
        (ClientAuth("ca", "optional", error_page=_PAGE), None, "", None),  # optional: none is fine
        (ClientAuth("ca", match_cn="CN=alice"), True, "CN=alice,O=Org", None),
        (ClientAuth("ca", match_cn="^CN=alice$"), True, "CN=alice,O=Org", 403),
        (ClientAuth("ca", match_cn="CN=alice", error_page=_PAGE), True, "CN=bob", 302),
        (ClientAuth("ca", "optional", match_cn="CN=alice"), None, "", 403),
        (ClientAuth("ca", "optional_no_ca"), False, "CN=alice", None),
        (ClientAuth("ca", "optional_no_ca", match_cn="CN=alice"), False, "CN=alice", 403),  # never unverified
        (ClientAuth("ca", "optional_no_ca", match_cn="CN=alice"), True, "CN=alice", None),
        (ClientAuth("ca", match_cn="("), True, "CN=(", 403),  # does not compile: fails closed
    ],
)
def test_client_auth_gate(auth: ClientAuth | None, verified: bool | None, dn: str, expected: int | None) -> None:
    rows = {"m.test": replace(_ROW, client_auth=auth)} if auth is not None else {}
    gate = client_auth_gate(auth, verified, dn, match_cn_patterns(rows))
    assert (gate.status if gate is not None else None) == expected
    if gate is not None and gate.status == 302:
        assert gate.location == _PAGE.encode()


def test_body_limit_resolved_at_build() -> None:
    s = Snapshot(pools=(Pool("p", (EP,)),), virtual_hosts=(VirtualHost("b.test", (
        Route("/default", "Prefix", "p"), Route("/none", "Prefix", "p", max_body_size=0),
        Route("/small", "Prefix", "p", max_body_size=10),
    )),)).canonical()
    table = build_http_table(s, None, Metrics(), HTTPSettings(max_body_size=1000))
    limits = {}
    for path in ("/default", "/none", "/small"):
        decision = table.route(parse_request_head(f"GET {path} HTTP/1.1\r\nHost: b.test".encode(), 8192, 32768),
                               False, None)
        assert isinstance(decision, Forward)
        limits[path] = decision.max_body
    assert limits == {"/default": 1000, "/none": 0, "/small": 10}
