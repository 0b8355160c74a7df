"""Header-name hygiene: every spelling of a trusted name is dropped, ``_`` names only where allowed,
header count limit, bare LF detected in a partial head; plus a hypothesis fuzz of the path
normaliser and the header filter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.http.headers import client_response_head, connection_block, upstream_request_head
from dataplane.http.info import ConnectionInfo
from dataplane.http.parser import (
    ParseError,
    canonical_name,
    parse_request_head,
    parse_response_head,
    partial_head_error,
)
from dataplane.http.path import PathError, normalize_path
from dataplane.metrics import Metrics

INFO = ConnectionInfo("https", ("192.0.2.7", 5555), 443)
# What a WSGI server builds from a header name: HTTP_<NAME> with "-" -> "_".
EDGE_SET = ("X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto", "X-Forwarded-Port", "X-Forwarded-Host",
            "X-Request-ID", "Forwarded", "Host", "ssl-client-verify", "ssl-client-subject-dn",
            "ssl-client-issuer-dn", "ssl-client-cert", "Content-Length", "Transfer-Encoding", "Connection",
            "Upgrade", "Proxy-Authorization", "Proxy")
TRUSTED_WSGI = {n.upper().replace("-", "_") for n in EDGE_SET}


def wsgi(name: str) -> str:
    return name.upper().replace("-", "_")


def forward(extra: list[tuple[str, str]], allow: bool = False, metrics: Metrics | None = None) -> list[str]:
    raw = b"GET / HTTP/1.1\r\nHost: app.test" + b"".join(
        b"\r\n" + k.encode() + b": " + v.encode() for k, v in extra)
    req = parse_request_head(raw, 8192, 65536, 1000)
    head = upstream_request_head(req, b"", b"rid", allow, metrics)
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].decode().split("\r\n")[1:]


def test_canonical_name() -> None:
    assert canonical_name(b"X_Forwarded_For") == b"x-forwarded-for"
    assert canonical_name(b"SSL_CLIENT-subject_DN") == b"ssl-client-subject-dn"


@pytest.mark.parametrize("name", [
    "ssl_client_subject_dn", "SSL_CLIENT_VERIFY", "ssl-client_cert", "X_Forwarded_For", "x_forwarded-proto",
    "X_Real_IP", "x-real_ip", "X_Request_ID", "Proxy_Authorization", "Transfer_Encoding", "Content_Length",
    "Keep_Alive",
])
@pytest.mark.parametrize("allow", [False, True])
def test_trusted_and_hop_by_hop_names_dropped_in_every_spelling(name: str, allow: bool) -> None:
    out = forward([(name, "6.6.6.6")], allow)
    assert not any("6.6.6.6" in line for line in out), out


def test_underscore_names_dropped_by_default_and_kept_when_allowed() -> None:
    assert not any(line.startswith("My_Header") for line in forward([("My_Header", "v")]))
    assert "My_Header: v" in forward([("My_Header", "v")], allow=True)
    assert "My-Header: v" in forward([("My-Header", "v")])  # dashes are never touched


def test_connection_listed_names_dropped_in_every_spelling() -> None:
    out = forward([("Connection", "x_secret, keep-alive"), ("X-Secret", "1"), ("x_secret", "2"),
                   ("Connection", "Other-Thing"), ("Other_Thing", "3")], allow=True)
    assert not any(line.split(":")[0].lower() in ("x-secret", "x_secret", "other_thing") for line in out), out


def test_drops_counted_once_per_reason() -> None:
    metrics = Metrics()
    forward([("X_Forwarded_For", "a"), ("ssl-client-verify", "SUCCESS"), ("A_B", "x"), ("C_D", "y"),
             ("Accept", "*/*")], metrics=metrics)
    value = metrics.registry.get_sample_value
    assert value("portcullis_http_dropped_request_headers_total", {"reason": "trusted"}) == 2
    assert value("portcullis_http_dropped_request_headers_total", {"reason": "underscore"}) == 2
    forward([("Accept", "*/*")], metrics=metrics)
    assert value("portcullis_http_dropped_request_headers_total", {"reason": "underscore"}) == 2


def test_underscore_framing_names_do_not_frame() -> None:
    """``Content_Length`` is not a Content-Length: a front proxy did not frame by it either."""
    req = parse_request_head(b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\nTransfer_Encoding: chunked",
                             8192, 32768)
    assert (req.content_length, req.chunked) == (-1, False)
    head = upstream_request_head(req, b"", b"rid", True)
    assert b"_" not in head.split(b"\r\n\r\n")[0].split(b"\r\n", 1)[1]


def test_response_hop_by_hop_in_underscore_spelling_dropped() -> None:
    resp = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nKeep_Alive: x\r\nProxy_Thing: y\r\nA_B: z")
    head = client_response_head(resp, 1, True, 11, None)
    assert b"Keep_Alive" not in head and b"Proxy_Thing" not in head and b"A_B: z" in head


def test_header_count_limit() -> None:
    many = b"GET / HTTP/1.1\r\nHost: a" + b"".join(b"\r\nX-%d: v" % i for i in range(99))
    assert len(parse_request_head(many, 8192, 1 << 20, 100).headers) == 100
    with pytest.raises(ParseError) as err:
        parse_request_head(many + b"\r\nX-Last: v", 8192, 1 << 20, 100)
    assert err.value.status == 431


@pytest.mark.parametrize(("partial", "bad"), [
    (b"GET / HTTP/1.1\n", True),
    (b"GET / HTTP/1.1\nHost: a\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\n", True),
    (b"GET / HTTP/1.1\rHost: a", True),
    (b"GET / HTTP/1.1", False),
    (b"GET / HTTP/1.1\r", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r", False),
])
def test_partial_head_error(partial: bytes, bad: bool) -> None:
    error = partial_head_error(bytearray(partial))
    assert (error is not None) == bad
    if error is not None:
        assert error.status == 400


# --- fuzz --------------------------------------------------------------------------------------

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~"


def _respell(name: str, flips: list[int]) -> str:
    out = []
    for i, ch in enumerate(name):
        f = flips[i % len(flips)] if flips else 0
        if ch in "-_" and f & 1:
            ch = "_" if ch == "-" else "-"
        out.append(ch.upper() if f & 2 else ch.lower())
    return "".join(out)


_names = st.one_of(
    st.text(_NAME_CHARS, min_size=1, max_size=24),
    st.builds(_respell, st.sampled_from(EDGE_SET), st.lists(st.integers(0, 3), max_size=8)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_names, st.text("abcxyz0123 ,._-", max_size=10)), max_size=20), st.booleans(),
       st.lists(_names, max_size=3))
def test_fuzz_no_forwarded_client_header_reads_as_a_trusted_name(
    headers: list[tuple[str, str]], allow: bool, conn_tokens: list[str]
) -> None:
    headers = [(n, v) for n, v in headers if n.lower() != "host"]
    if conn_tokens:
        headers.append(("Connection", ", ".join(conn_tokens)))
    try:
        raw = b"GET / HTTP/1.1\r\nHost: app.test" + b"".join(
            b"\r\n" + k.encode() + b": " + v.strip().encode() for k, v in headers)
        req = parse_request_head(raw, 8192, 1 << 20, 1000)
    except ParseError:
        return  # refused (e.g. a malformed Content-Length): nothing forwarded
    head = upstream_request_head(req, connection_block(INFO), b"rid", allow)
    lines = head[:-4].decode().split("\r\n")[1:]
    block = connection_block(INFO).decode().split("\r\n")
    edge_lines = set(block) | {"Host: app.test", "X-Forwarded-Host: app.test", "X-Request-ID: rid"}
    listed = {canonical_name(t.strip().encode()) for t in conn_tokens}
    for line in lines:
        if line in edge_lines or (line.startswith(("Content-Length: ", "Transfer-Encoding: ", "Connection: ",
                                                   "Upgrade: ")) and line.split(":")[0] in EDGE_SET):
            continue
        name = line.split(":")[0]
        assert wsgi(name) not in TRUSTED_WSGI, (name, lines)
        assert not wsgi(name).startswith(("HTTP_PROXY_", "X_FORWARDED_", "SSL_CLIENT_")), (name, lines)
        assert canonical_name(name.encode()) not in listed, (name, lines)
        if not allow:
            assert "_" not in name, (name, lines)


_path_bytes = st.lists(
    st.sampled_from(["/", "//", ".", "..", "%2e", "%2E%2e", "a", "B", "%61", "%7e", "%41", ";", ";p=1", "%3B",
                     "%", "%2", "%zz", "%2F", "%5C", "%00", "\\", "{", "~", "%C3%A9", "%c3", "!", "%21", "_", "-"]),
    max_size=16,
).map(lambda parts: ("/" + "".join(parts)).encode())


@settings(max_examples=2000, deadline=None)
@given(_path_bytes)
def test_fuzz_normalised_paths_are_idempotent_and_clean(raw: bytes) -> None:
    try:
        forwarded, routing = normalize_path(raw)
    except PathError:
        return
    assert normalize_path(forwarded) == (forwarded, routing)
    assert normalize_path(routing) == (routing, routing)
    for path in (forwarded, routing):
        assert path.startswith(b"/") and b"//" not in path and b"\\" not in path
        segments = path.split(b"/")
        assert not {b".", b".."} & {s.partition(b";")[0] for s in segments}
        assert b"%2F" not in path.upper() and b"%5C" not in path.upper() and b"%00" not in path
        # every escape left is upper-case hex of a byte a framework must not see decoded here
        i = path.find(b"%")
        while i >= 0:
            hx = path[i + 1:i + 3]
            assert hx == hx.upper() and int(hx, 16) not in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
            i = path.find(b"%", i + 1)
    assert b";" not in routing
