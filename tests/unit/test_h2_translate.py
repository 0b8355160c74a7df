"""dataplane.http2.translate: HTTP/2 request fields -> HTTP/1.1 heads the engine parses, refusals for what
RFC 9113 calls malformed, HTTP/1.1 response heads -> h2 fields, and gRPC's status and timeout rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.http.parser import ParseError, parse_request_head, parse_response_head
from dataplane.http2.translate import (
    H2Request,
    Refusal,
    grpc_message,
    grpc_status,
    grpc_trailers_only,
    parse_grpc_timeout,
    response_fields,
    translate_request,
)

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a/b?x=1"), (b":authority", b"example.com")]


def ok(fields: list[tuple[bytes, bytes]], end_stream: bool = True) -> H2Request:
    result = translate_request(fields, end_stream)
    assert isinstance(result, H2Request), result
    return result


def refused(fields: list[tuple[bytes, bytes]], end_stream: bool = True) -> Refusal:
    result = translate_request(fields, end_stream)
    assert isinstance(result, Refusal), result
    return result


def parsed(req: H2Request):  # type: ignore[no-untyped-def]
    assert req.head.endswith(b"\r\n\r\n")
    return parse_request_head(req.head[:-4], 8192, 65536, 200)


# --- requests ------------------------------------------------------------------------------------


def test_simple_get_becomes_an_http11_head_the_engine_parses() -> None:
    req = ok([*BASE, (b"accept", b"*/*"), (b"user-agent", b"curl/8")])
    assert req.head == (b"GET /a/b?x=1 HTTP/1.1\r\nHost: example.com\r\naccept: */*\r\nuser-agent: curl/8\r\n"
                        b"Connection: close\r\n\r\n")
    assert (req.method, req.chunked, req.grpc, req.timeout) == (b"GET", False, False, None)
    head = parsed(req)
    assert (head.method, head.target, head.host, head.keep_alive, head.has_body) == (
        b"GET", b"/a/b?x=1", b"example.com", False, False)


def test_body_without_content_length_is_chunked() -> None:
    req = ok([*BASE[:1], (b":scheme", b"https"), (b":path", b"/up"), (b":authority", b"h")], end_stream=False)
    assert req.chunked
    head = parsed(req)
    assert head.chunked and head.content_length == -1


def test_content_length_is_kept_and_not_chunked() -> None:
    req = ok([(b":method", b"POST"), *BASE[1:], (b"content-length", b"12")], end_stream=False)
    assert not req.chunked
    head = parsed(req)
    assert head.content_length == 12 and not head.chunked


def test_repeated_equal_content_length_is_one_field() -> None:
    req = ok([(b":method", b"POST"), *BASE[1:], (b"content-length", b"3"), (b"content-length", b"3")], False)
    assert req.head.count(b"content-length") == 1


@pytest.mark.parametrize("values", [[b"3", b"4"], [b"-1"], [b"1e3"], [b""], [b"9" * 19]])
def test_bad_content_length_is_refused(values: list[bytes]) -> None:
    fields = [(b":method", b"POST"), *BASE[1:], *((b"content-length", v) for v in values)]
    assert refused(fields, False).status == 400


def test_content_length_with_headers_ending_the_stream_is_malformed() -> None:
    assert refused([(b":method", b"POST"), *BASE[1:], (b"content-length", b"5")], True).status == 400
    assert not ok([(b":method", b"POST"), *BASE[1:], (b"content-length", b"0")], True).chunked


def test_cookies_are_joined() -> None:
    req = ok([*BASE, (b"cookie", b"a=1"), (b"x-y", b"z"), (b"cookie", b"b=2"), (b"cookie", b"c=3")])
    head = parsed(req)
    cookies = [line for name, line in head.headers if name == b"cookie"]
    assert cookies == [b"cookie: a=1; b=2; c=3"]


def test_host_field_without_authority() -> None:
    req = ok([*BASE[:3], (b"host", b"other.example:8443")])
    assert parsed(req).host == b"other.example:8443"


def test_host_and_authority_must_agree() -> None:
    assert not ok([*BASE, (b"host", b"EXAMPLE.com")]).head.count(b"host:")  # the one Host is :authority
    assert refused([*BASE, (b"host", b"evil.example")]).reason == "host and :authority differ"


def test_options_asterisk() -> None:
    req = ok([(b":method", b"OPTIONS"), (b":scheme", b"https"), (b":path", b"*"), (b":authority", b"h")])
    assert parsed(req).target == b"*"
    assert refused([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"*"), (b":authority", b"h")]).status \
        == 400


def test_connect_is_not_implemented() -> None:
    result = refused([(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
    assert result == Refusal(501, "CONNECT is not supported over HTTP/2")


@pytest.mark.parametrize(("fields", "reason"), [
    (BASE[1:], "missing :method"),
    ([BASE[0], *BASE[2:]], "missing :scheme"),
    ([*BASE[:2], BASE[3]], "missing or empty :path"),
    ([*BASE[:2], (b":path", b""), BASE[3]], "missing or empty :path"),
    (BASE[:3], "missing :authority and host"),
    ([*BASE[:3], (b":authority", b"")], "invalid :authority"),
    ([*BASE[:3], (b":authority", b"user@example.com")], "invalid :authority"),
    ([*BASE[:3], (b":authority", b"a b")], "invalid :authority"),
    ([BASE[0], (b":scheme", b"ftp"), *BASE[2:]], "unsupported :scheme"),
    ([*BASE[:2], (b":path", b"a/b"), BASE[3]], "invalid :path"),
    ([*BASE[:2], (b":path", b"/a b"), BASE[3]], "invalid :path"),
    ([*BASE[:2], (b":path", b"/a\r\nX: y"), BASE[3]], "invalid :path"),
    ([(b":method", b"GE T"), *BASE[1:]], "invalid :method"),
    ([*BASE, BASE[0]], "duplicate :method"),
    ([*BASE, BASE[1]], "duplicate :scheme"),
    ([*BASE, BASE[2]], "duplicate :path"),
    ([*BASE, BASE[3]], "duplicate :authority"),
    ([*BASE[:3], (b"accept", b"*/*"), BASE[3]], "pseudo-header field after a regular field"),
    ([*BASE, (b":protocol", b"websocket")], "unknown pseudo-header field :protocol"),
    ([*BASE, (b"Accept", b"x")], "invalid header field name"),
    ([*BASE, (b"a b", b"x")], "invalid header field name"),
    ([*BASE, (b"", b"x")], "invalid header field name"),
    ([*BASE, (b"x", b"a\r\nInjected: 1")], "invalid character in a header field value"),
    ([*BASE, (b"x", b"a\nb")], "invalid character in a header field value"),
    ([*BASE, (b"x", b"a\x00b")], "invalid character in a header field value"),
    ([*BASE, (b"x", b" a")], "whitespace around a header field value"),
    ([*BASE, (b"x", b"a\t")], "whitespace around a header field value"),
    ([*BASE, (b"connection", b"keep-alive")], "connection-specific header field connection in HTTP/2"),
    ([*BASE, (b"transfer-encoding", b"chunked")], "connection-specific header field transfer-encoding in HTTP/2"),
    ([*BASE, (b"upgrade", b"websocket")], "connection-specific header field upgrade in HTTP/2"),
    ([*BASE, (b"keep-alive", b"5")], "connection-specific header field keep-alive in HTTP/2"),
    ([*BASE, (b"proxy-connection", b"x")], "connection-specific header field proxy-connection in HTTP/2"),
    ([*BASE, (b"te", b"gzip")], "te other than trailers in HTTP/2"),
    ([*BASE[:3], (b"host", b"a"), (b"host", b"a")], "duplicate host"),
])
def test_malformed_requests_are_refused(fields: list[tuple[bytes, bytes]], reason: str) -> None:
    assert refused(fields) == Refusal(400, reason)


def test_te_trailers_and_inner_tab_are_allowed() -> None:
    req = ok([*BASE, (b"te", b"trailers"), (b"x", b"a\tb"), (b"y", b"\xc3\xa9")])
    assert b"te: trailers\r\n" in req.head and b"x: a\tb\r\n" in req.head


def test_grpc_request() -> None:
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.Svc/Call"), (b":authority", b"g"),
              (b"content-type", b"application/grpc+proto"), (b"te", b"trailers"), (b"grpc-timeout", b"250m")]
    req = ok(fields, end_stream=False)
    assert req.grpc and req.chunked
    assert req.timeout == pytest.approx(0.25)
    assert b"grpc-timeout: 250m\r\n" in req.head  # the backend sees the deadline too
    assert not ok([*BASE, (b"content-type", b"application/json")]).grpc
    assert ok([*fields[:-1], (b"grpc-timeout", b"soon")], False).timeout is None


_names = st.sampled_from([b"accept", b"x-a", b"cookie", b"content-type", b"te", b"host", b"content-length",
                          b"Bad", b"connection", b"x_under", b":path", b":method", b""])
_values = st.binary(max_size=12)


@settings(max_examples=400, deadline=None)
@given(extra=st.lists(st.tuples(_names, _values), max_size=8), end_stream=st.booleans())
def test_every_translation_is_one_unambiguous_http11_head(extra: list[tuple[bytes, bytes]], end_stream: bool) -> None:
    """Whatever the fields, a translation parses as one HTTP/1.1 head with the same method, Host and framing
    (nothing a client sends in HTTP/2 can split or re-frame the HTTP/1.1 message: the smuggling class)."""
    result = translate_request([*BASE, *extra], end_stream)
    if isinstance(result, Refusal):
        assert result.status == 400
        return
    assert result.head.count(b"\r\n\r\n") == 1
    try:
        head = parsed(result)
    except ParseError as exc:  # the engine may still refuse (e.g. an invalid Host): never a different message
        assert exc.status == 400
        return
    assert head.method == b"GET" and head.host == b"example.com" and not head.keep_alive
    assert head.chunked == result.chunked
    assert head.has_body == (result.chunked or head.content_length > 0)


# --- responses -----------------------------------------------------------------------------------


def test_response_fields_drop_connection_specific_ones() -> None:
    resp = parse_response_head(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close, X-Hop\r\nKeep-Alive: 5\r\n"
        b"Transfer-Encoding: chunked\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nX-Hop: 1\r\nSet-Cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\nX-Val:   spaced  ")
    assert response_fields(resp) == [
        (b":status", b"404"), (b"content-type", b"text/plain"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
        (b"x-val", b"spaced"),
    ]


def test_response_fields_keep_content_length() -> None:
    resp = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nStrict-Transport-Security: max-age=1")
    assert response_fields(resp) == [(b":status", b"200"), (b"content-length", b"5"),
                                     (b"strict-transport-security", b"max-age=1")]


# --- gRPC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("http", "grpc"), [
    (400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (413, 8), (502, 14), (503, 14), (504, 14),
    (500, 2), (431, 2), (408, 2), (301, 2), (200, 2),
])
def test_grpc_status_mapping(http: int, grpc: int) -> None:
    assert grpc_status(http) == grpc


def test_trailers_only_response() -> None:
    assert grpc_trailers_only(503, "no endpoint available") == [
        (b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
        (b"grpc-message", b"no endpoint available"),
    ]
    assert grpc_trailers_only(504, "", grpc_code=4) == [
        (b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"4"),
    ]


def test_grpc_message_percent_encoding() -> None:
    assert grpc_message("100% sure") == b"100%25 sure"
    assert grpc_message("caf\u00e9\n") == b"caf%C3%A9%0A"
    assert grpc_message(" ~") == b" ~"


@given(st.text(max_size=40))
def test_grpc_message_is_printable_ascii_and_decodes_back(message: str) -> None:
    encoded = grpc_message(message)
    assert all(0x20 <= b <= 0x7E for b in encoded)
    from urllib.parse import unquote_to_bytes
    assert unquote_to_bytes(encoded) == message.encode("utf-8", "replace")


@pytest.mark.parametrize(("value", "seconds"), [
    (b"1S", 1.0), (b"100m", 0.1), (b"2H", 7200.0), (b"3M", 180.0), (b"5u", 5e-6), (b"7n", 7e-9),
    (b"99999999S", 99999999.0), (b"0m", 0.0),
])
def test_grpc_timeout(value: bytes, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"1", b"1s", b"1Sx", b"123456789S", b"-1S", b" 1S", b"1.5S", b"1K"])
def test_invalid_grpc_timeout(value: bytes) -> None:
    assert parse_grpc_timeout(value) is None


@given(st.binary(max_size=12))
def test_grpc_timeout_total(value: bytes) -> None:
    result = parse_grpc_timeout(value)
    assert result is None or 0 <= result <= 99999999 * 3600


@settings(max_examples=500, deadline=None)
@given(value=st.binary(max_size=10) | st.sampled_from([b" ", b"\t", b"a b", b"a\tb", b"\xff", b"a\x7f", b"\x00"]),
       name=st.sampled_from([b"x-custom", b"accept", b"user-agent"]))
def test_value_rule_is_rfc9113(value: bytes, name: bytes) -> None:
    """A field value is accepted exactly when it has no NUL/CR/LF/other control but HTAB, and no SP or HTAB at
    either end (RFC 9113 8.2.1, RFC 9110 5.5), whether the name is a well-known one or not."""
    valid = not any((b < 0x20 and b != 0x09) or b == 0x7F for b in value) and value[:1] not in (b" ", b"\t") \
        and value[-1:] not in (b" ", b"\t")
    result = translate_request([*BASE, (name, value)], True)
    assert isinstance(result, H2Request) == valid, result
    if valid:
        assert name + b": " + value + b"\r\n" in result.head  # type: ignore[union-attr]
