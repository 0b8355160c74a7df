"""The strict HTTP/1.1 parser: every smuggling vector is refused, valid messages parse exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.http.parser import (
    LAST_CHUNK,
    ChunkedReader,
    ParseError,
    chunk,
    parse_request_head,
    parse_response_head,
)


def req(head: bytes):  # type: ignore[no-untyped-def]
    return parse_request_head(head, 8192, 32768)


def test_simple_get() -> None:
    r = req(b"GET /a/b?x=1 HTTP/1.1\r\nHost: App.Test:8080\r\nX-Request-ID: abc\r\nAccept: */*")
    assert r.method == b"GET" and r.target == b"/a/b?x=1" and r.path == "/a/b" and r.version == 11
    assert r.host == b"App.Test:8080" and r.request_id == b"abc"
    assert r.keep_alive and not r.has_body and r.content_length == -1 and not r.chunked
    assert [n for n, _ in r.headers] == [b"host", b"x-request-id", b"accept"]
    assert r.headers[2][1] == b"Accept: */*"


@pytest.mark.parametrize(
    ("head", "content_length", "chunked", "keep_alive"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5", 5, False, True),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5", 5, False, True),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5", 5, False, True),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked", -1, True, True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close", -1, False, False),
        (b"GET / HTTP/1.0", -1, False, False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive", -1, False, True),
    ],
)
def test_framing(head: bytes, content_length: int, chunked: bool, keep_alive: bool) -> None:
    r = req(head)
    assert (r.content_length, r.chunked, r.keep_alive) == (content_length, chunked, keep_alive)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        # request smuggling vectors
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 3", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b", 400),  # obs-fold
        (b"GET / HTTP/1.1\r\nHost: a\r\n\tX: b", 400),
        (b"GET / HTTP/1.1\r\nHost: a\nX: b", 400),  # bare LF
        (b"GET / HTTP/1.1\r\nHost: a\rX: b", 400),  # bare CR
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX\x7f: b", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n: empty-name", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400),
        (b"GET / HTTP/1.1\r\nHost: a b", 400),
        (b"GET / HTTP/1.1\r\nHost: a/b", 400),
        (b"GET / HTTP/1.1", 400),  # 1.1 needs Host
        (b"GET  / HTTP/1.1\r\nHost: a", 400),
        (b"GET / HTTP/1.1 \r\nHost: a", 400),
        (b"GET /a b HTTP/1.1\r\nHost: a", 400),
        (b"G@T / HTTP/1.1\r\nHost: a", 400),
        (b"GET / HTTP/2.0\r\nHost: a", 505),
        (b"GET / HTTX/1.1\r\nHost: a", 400),
        (b"GET a HTTP/1.1\r\nHost: a", 400),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a", 400),
        (b"GET http://user@evil/ HTTP/1.1\r\nHost: a", 400),
        (b"GET /\xff HTTP/1.1\r\nHost: a", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 40000, 431),
    ],
)
def test_refused(head: bytes, status: int) -> None:
    with pytest.raises(ParseError) as err:
        req(head)
    assert err.value.status == status


def test_absolute_form_takes_host_from_target() -> None:
    r = req(b"GET http://App.test:81/x?y HTTP/1.1\r\nHost: other")
    assert r.host == b"App.test:81" and r.target == b"/x?y" and r.path == "/x"
    r = req(b"GET https://app.test HTTP/1.1\r\nHost: app.test")
    assert r.target == b"/"


def test_options_star_and_upgrade() -> None:
    assert req(b"OPTIONS * HTTP/1.1\r\nHost: a").target == b"*"
    r = req(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket")
    assert r.upgrade == b"websocket" and b"upgrade" in r.connection_tokens
    assert req(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket").upgrade == b""  # not in Connection


@pytest.mark.parametrize(
    ("head", "status", "length", "chunked", "close"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3", 200, 3, False, False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", 200, -1, True, False),
        (b"HTTP/1.1 204 No Content", 204, -1, False, False),
        (b"HTTP/1.1 200 OK\r\nConnection: close", 200, -1, False, True),
        (b"HTTP/1.0 200 OK", 200, -1, False, True),
        (b"HTTP/1.1 404 ", 404, -1, False, False),
        (b"HTTP/1.1 500", 500, -1, False, False),
    ],
)
def test_response(head: bytes, status: int, length: int, chunked: bool, close: bool) -> None:
    r = parse_response_head(head)
    assert (r.status, r.content_length, r.chunked, r.close) == (status, length, chunked, close)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 099 X",
        b"HTTP/2 200 OK",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b",
        b"garbage",
    ],
)
def test_bad_response(head: bytes) -> None:
    with pytest.raises(ParseError) as err:
        parse_response_head(head)
    assert err.value.status == 502


# --- chunked -----------------------------------------------------------------------------------


def decode(data: bytes, step: int = 0) -> tuple[bytes, int]:
    dec = ChunkedReader()
    out: list[bytes] = []
    if not step:
        pieces, used = dec.feed(data)
        out += pieces
    else:
        used = 0
        for i in range(0, len(data), step):
            pieces, n = dec.feed(data[i:i + step])
            out += pieces
            used += n
            if dec.done:
                break
    assert dec.done
    return b"".join(out), used


@pytest.mark.parametrize("step", [0, 1, 2, 3, 7])
def test_chunked_roundtrip(step: int) -> None:
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT"
    data, used = decode(body, step)
    assert data == b"hello world0123456789"
    assert body[used:] == b"NEXT"  # consumed stops exactly at the end of the message, in every slicing


@pytest.mark.parametrize(
    "body",
    [
        b"g\r\nx\r\n0\r\n\r\n",
        b"-1\r\nx\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nBad trailer\r\n\r\n",
        b"5\r\nhello\r\n0\r\n folded: x\r\n\r\n",
        b"11111111111111111\r\n",
        b"1" * 5000,
    ],
)
def test_chunked_refused(body: bytes) -> None:
    with pytest.raises(ParseError):
        ChunkedReader().feed(body)


def test_chunk_encoding() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert decode(chunk(b"x" * 300) + LAST_CHUNK)[0] == b"x" * 300


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_request_parser_never_crashes(data: bytes) -> None:
    try:
        r = req(data)
    except ParseError as exc:
        assert exc.status in (400, 414, 431, 505)
    else:
        assert not (r.chunked and r.content_length >= 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"GET", b" ", b"/", b"HTTP/1.1", b"\r\n", b"Host: a", b"Content-Length: 1",
                                 b"Transfer-Encoding: chunked", b":", b"\t", b"\n", b"\r", b"x"]), max_size=30))
def test_request_parser_structured_fuzz(parts: list[bytes]) -> None:
    try:
        r = req(b"".join(parts))
    except ParseError:
        return
    assert not (r.chunked and r.content_length >= 0)
    assert b"\r" not in r.target and b"\n" not in r.target


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=17))
def test_chunked_never_crashes(data: bytes, step: int) -> None:
    dec = ChunkedReader()
    try:
        for i in range(0, len(data), step):
            _, used = dec.feed(data[i:i + step])
            assert 0 <= used <= len(data[i:i + step])
            if dec.done:
                break
    except ParseError as exc:
        assert exc.status == 400


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=50), max_size=8), st.integers(min_value=1, max_value=9))
def test_chunked_roundtrip_property(pieces: list[bytes], step: int) -> None:
    wire = b"".join(chunk(p) for p in pieces) + LAST_CHUNK
    assert decode(wire, step)[0] == b"".join(pieces)
