"""Path normalisation: one canonical spelling per path, 400 for what cannot be normalised safely."""

from __future__ import annotations

from typing import Literal

import pytest

from dataplane.http.parser import ParseError, parse_request_head
from dataplane.http.path import PathError, normalize_path, route_path
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import VHostEntry, build_http_table
from dataplane.metrics import Metrics
from dataplane.snapshot import Endpoint, Pool, Route, Snapshot, VirtualHost


@pytest.mark.parametrize(("raw", "forwarded", "routing"), [
    (b"/", b"/", b"/"),
    (b"/admin", b"/admin", b"/admin"),
    (b"/a/b/", b"/a/b/", b"/a/b/"),
    (b"/.well-known/acme-challenge/tok", b"/.well-known/acme-challenge/tok", b"/.well-known/acme-challenge/tok"),
    # percent-encoded unreserved (and path-neutral sub-delims) decode; other escapes get upper-case hex
    (b"/%61dmin", b"/admin", b"/admin"),
    (b"/%41%7a%30%2D%2e%5f%7E", b"/Az0-._~", b"/Az0-._~"),
    (b"/%21%24%26%27%28%29%2a%2b%2c%3d%3a%40", b"/!$&'()*+,=:@", b"/!$&'()*+,=:@"),
    (b"/caf%c3%a9", b"/caf%C3%A9", b"/caf%C3%A9"),
    (b"/a%3fb", b"/a%3Fb", b"/a%3Fb"),
    (b"/100%25", b"/100%25", b"/100%25"),
    (b"/%2561dmin", b"/%2561dmin", b"/%2561dmin"),  # double encoding is decoded once (by the backend)
    (b"/a{b}|c\"", b"/a%7Bb%7D%7Cc%22", b"/a%7Bb%7D%7Cc%22"),  # raw bytes not allowed in a path: escaped
    # dot segments and repeated slashes
    (b"//admin", b"/admin", b"/admin"),
    (b"/x//y///", b"/x/y/", b"/x/y/"),
    (b"///", b"/", b"/"),
    (b"/./admin", b"/admin", b"/admin"),
    (b"/x/../admin", b"/admin", b"/admin"),
    (b"/x/%2E%2E/admin", b"/admin", b"/admin"),
    (b"/x/%2e/admin", b"/x/admin", b"/x/admin"),
    (b"/a/.", b"/a/", b"/a/"),
    (b"/a/b/..", b"/a/", b"/a/"),
    (b"/a/..", b"/", b"/"),
    (b"/.well-known/acme-challenge/../x", b"/.well-known/x", b"/.well-known/x"),
    (b"/...", b"/...", b"/..."),
    (b"/.hidden/..x", b"/.hidden/..x", b"/.hidden/..x"),
    # ";" parameters: forwarded with them, routed without them
    (b"/admin;x", b"/admin;x", b"/admin"),
    (b"/admin;jsessionid=1/page", b"/admin;jsessionid=1/page", b"/admin/page"),
    (b"/;x/admin", b"/;x/admin", b"/admin"),
    (b"/admin/;x", b"/admin/;x", b"/admin/"),
    (b"/admin;x/", b"/admin;x/", b"/admin/"),
    (b"/%61dmin;x", b"/admin;x", b"/admin"),
    (b"/a%3Bb", b"/a%3Bb", b"/a%3Bb"),  # an escaped ";" is a literal character everywhere
    (b"/x;p/../admin", b"/admin", b"/admin"),
])
def test_normalises(raw: bytes, forwarded: bytes, routing: bytes) -> None:
    assert normalize_path(raw) == (forwarded, routing)
    assert normalize_path(forwarded) == (forwarded, routing)  # idempotent


@pytest.mark.parametrize(("raw", "why"), [
    (b"/%zz", "invalid percent-encoding"),
    (b"/a%2", "invalid percent-encoding"),
    (b"/a%", "invalid percent-encoding"),
    (b"/a%g1", "invalid percent-encoding"),
    (b"/admin%2Fx", "encoded '/'"),
    (b"/admin%2fx", "encoded '/'"),
    (b"/a%5Cb", "encoded '\\'"),
    (b"/a%5cb", "encoded '\\'"),
    (b"/a%00", "encoded NUL"),
    (b"/a\\b", "'\\'"),
    (b"/..", "above the root"),
    (b"/../admin", "above the root"),
    (b"/a/../../admin", "above the root"),
    (b"/%2e%2e/admin", "above the root"),
    (b"/public/..;/admin", "dot segment with ';'"),
    (b"/public/.;x/admin", "dot segment with ';'"),
    (b"/public/%2e%2e;/admin", "dot segment with ';'"),
])
def test_refuses(raw: bytes, why: str) -> None:
    with pytest.raises(PathError, match=why.replace("\\", "\\\\").replace("(", "\\(")):
        normalize_path(raw)


def test_canonical_fast_path_returns_the_same_object() -> None:
    raw = b"/api/v1/items/42"
    forwarded, routing = normalize_path(raw)
    assert forwarded is raw and routing is raw


def head(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: app.test"


@pytest.mark.parametrize(("target", "forwarded", "path"), [
    (b"/%61dmin?q=%2F..//x", b"/admin?q=%2F..//x", "/admin"),  # the query is kept as sent
    (b"//admin;x?", b"/admin;x?", "/admin"),
    (b"/plain?a=b", b"/plain?a=b", "/plain"),
    (b"http://app.test/x/../admin?q", b"/admin?q", "/admin"),
    (b"http://app.test", b"/", "/"),
    (b"http://app.test?q", b"/?q", "/"),
])
def test_request_head_carries_canonical_target(target: bytes, forwarded: bytes, path: str) -> None:
    req = parse_request_head(head(target), 8192, 32768)
    assert (req.target, req.path) == (forwarded, path)


def test_options_asterisk_untouched() -> None:
    req = parse_request_head(b"OPTIONS * HTTP/1.1\r\nHost: app.test", 8192, 32768)
    assert (req.target, req.path) == (b"*", "*")


@pytest.mark.parametrize("target", [b"/a%2Fb", b"/..", b"/a\\b", b"/%zz", b"/p/..;/admin",
                                    b"http://app.test/../x"])
def test_request_head_refuses_with_400(target: bytes) -> None:
    with pytest.raises(ParseError) as err:
        parse_request_head(head(target), 8192, 32768)
    assert err.value.status == 400


def routes(*paths: tuple[str, Literal["Exact", "Prefix"], str]) -> VHostEntry:
    vh = VirtualHost("app.test", tuple(Route(p, t, pool) for p, t, pool in paths))
    pools = tuple(Pool(pid, (Endpoint("127.0.0.1", 1),)) for pid in sorted({pool for _, _, pool in paths}))
    table = build_http_table(Snapshot(pools=pools, virtual_hosts=(vh,)), None, Metrics(), HTTPSettings())
    entry = table.vhost("app.test")
    assert entry is not None
    return entry


@pytest.mark.parametrize("target", [
    b"/admin", b"/%61dmin", b"/%41dmin".replace(b"%41", b"%61"), b"//admin", b"/./admin", b"/x/../admin",
    b"/admin;x", b"/;x/admin", b"/admin/", b"/admin/./", b"/%2e/admin", b"/admin;jsessionid=1",
    b"/admin/sub", b"/admin//sub", b"/x/%2E%2E/admin/sub",
])
def test_every_spelling_of_admin_routes_to_admin(target: bytes) -> None:
    entry = routes(("/admin", "Prefix", "A"), ("/", "Prefix", "B"))
    req = parse_request_head(head(target), 8192, 32768)
    forward = entry.match(req.path)
    assert forward is not None and forward.pool_id == "A", (target, req.path)


@pytest.mark.parametrize(("route", "target"), [
    ("/%7Euser", b"/~user"), ("/%7euser", b"/%7Euser"), ("/caf%c3%a9", b"/caf%C3%A9"), ("/api;v=1", b"/api;x"),
    ("/a{b}", b"/a%7bb%7d"),
])
def test_route_paths_are_matched_in_the_request_form(route: str, target: bytes) -> None:
    assert route_path(route) == parse_request_head(head(target), 8192, 32768).path
    entry = routes((route, "Exact", "A"), ("/", "Prefix", "B"))
    forward = entry.match(parse_request_head(head(target), 8192, 32768).path)
    assert forward is not None and forward.pool_id == "A"


def test_route_path_that_cannot_be_normalised_is_kept() -> None:
    assert route_path("/a%2Fb") == "/a%2Fb"
