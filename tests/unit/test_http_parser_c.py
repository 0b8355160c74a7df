"""The C request- and response-head parsers against the pure-Python reference: the same RequestHead (field by field,
types included) or the same ParseError (status and reason) for every input, and no leaked references.

Fails, never skips, when the extension is missing: ``make install`` builds it, and a silently skipped
comparison would let the two parsers drift."""

from __future__ import annotations

import contextlib
import sys
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.http import parser
from dataplane.http.parser import ParseError, RequestHead, ResponseHead, parse_request_head_py, parse_response_head_py

try:
    from dataplane.http._headparser import HeadParser, ResponseParser
except ImportError as exc:  # pragma: no cover - a broken build must be loud
    raise AssertionError(f"the C request-head parser is not built ({exc}); run `make install`") from exc

c_parse = HeadParser(parse_request_head_py, RequestHead, ParseError, parser._split_target)
FIELDS = RequestHead.__slots__


def outcome(fn: Any, head: bytes, *limits: int) -> tuple[Any, ...]:
    try:
        r = fn(head, *limits)
    except ParseError as exc:
        return ("error", exc.status, exc.reason, type(exc))
    assert type(r) is RequestHead
    values = tuple(getattr(r, f) for f in FIELDS)
    return ("ok", *values, tuple(type(v) for v in values), [tuple(map(type, h)) for h in r.headers])


def same(head: bytes, *limits: int) -> None:
    assert outcome(c_parse, head, *limits) == outcome(parse_request_head_py, head, *limits), head


def test_the_package_uses_the_c_parser() -> None:
    assert parser.PARSER_IMPLEMENTATION == "c"
    assert isinstance(parser.parse_request_head, HeadParser)


METHODS = [b"GET", b"POST", b"OPTIONS", b"CONNECT", b"G@T", b"", b"get", b"PRI"]
TARGETS = [
    b"/", b"/a/b", b"/a/b/", b"/a/../b", b"/../a", b"/./a", b"/a/.", b"/%61dmin", b"/%2e%2E/x", b"//x", b"/a//b",
    b"/a;b", b"/..;/x", b"/a;jsessionid=1/b", b"*", b"/*", b"http://h:80/x?y", b"https://[::1]:8443", b"HTTP://h?q",
    b"http://user@h/", b"http://", b"https://h:123456/", b"http://h#f/x", b"/\xff", b"/a\tb", b"/?q=1", b"/a?b?c",
    b"/%2F", b"/%5c", b"/%00", b"/%zz", b"/%", b"/a\\b", b"/~u/./x/", b"/\"{|}", b"/%c3%a9", b"/..", b"/...",
    b"a", b"", b"ftp://h/", b"/" + b"a" * 60,
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"HTTX/1.1", b"HTTP/1.10", b"http/1.1", b"HTTP/0.9"]
NAMES = [
    b"Host", b"host", b"HOST", b"Content-Length", b"content_length", b"Content_Length", b"Transfer-Encoding",
    b"transfer-encoding", b"Transfer_Encoding", b"Connection", b"Upgrade", b"X-Request-ID", b"X_Request_Id",
    b"Accept", b"Bad Name", b"", b"\xc3\x84", b"X\x7f", b"Cookie", b"x-request-id ",
]
VALUES = [
    b"a", b" a ", b"\tchunked", b"chunked", b"Chunked", b"CHUNKED ", b"gzip, chunked", b"chunked, chunked", b"5",
    b"5, 5", b"5,5,", b"3, 4", b"+3", b"-1", b"0x3", b"99999999999999999999", b"999999999999999999", b"007", b"",
    b"close", b"Keep-Alive", b"keep-alive, Upgrade", b" , upgrade,,", b"upgrade", b"websocket", b"[::1]:80",
    b"[::1", b"h:", b"h:123456", b"a b", b"a/b", b"a@b", b"\x00", b"\x1f", b"\xc3\xa9", b"x\ty", b"id-1",
]
SEPS = [b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n", b"\n\r"]
COLONS = [b": ", b":", b" :", b": \t", b"::", b""]


GOOD_METHODS = [b"GET", b"POST", b"OPTIONS"]
GOOD_VERSIONS = [b"HTTP/1.1", b"HTTP/1.0"]
GOOD_NAMES = [n for n in NAMES if n and n.replace(b"-", b"").replace(b"_", b"").isalpha() and n.isascii()]


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """Half of the heads are well-formed line by line (so the field rules are reached), half are not."""
    clean = draw(st.booleans())

    def pick(good: list[bytes], every: list[bytes]) -> bytes:
        return draw(st.sampled_from(good if clean else every))

    line = pick(GOOD_METHODS, METHODS) + pick([b" "], [b" ", b"  ", b"\t"]) + draw(
        st.sampled_from(TARGETS)) + b" " + pick(GOOD_VERSIONS, VERSIONS)
    parts = [line]
    for _ in range(draw(st.integers(0, 12))):
        parts.append(pick([b"\r\n"], SEPS))
        parts.append(pick([b""], [b""] * 8 + [b" ", b"\t"]) + pick(GOOD_NAMES, NAMES) + pick([b": ", b":"], COLONS)
                     + draw(st.sampled_from(VALUES)))
    if not clean and draw(st.booleans()):
        parts.append(draw(st.sampled_from([b"\r\n", b"\r", b"\n", b"\r\n\r\n", b"\x00"])))
    return b"".join(parts)


LIMITS = st.one_of(
    st.just((8192, 32768)),
    st.just((8192, 32768, 100)),
    st.tuples(st.integers(-1, 80), st.integers(-1, 300), st.integers(-1, 12)),
)


@settings(max_examples=3000, deadline=None)
@given(heads(), LIMITS)
def test_structured_heads_agree(head: bytes, limits: tuple[int, ...]) -> None:
    same(head, *limits)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300), LIMITS)
def test_random_bytes_agree(head: bytes, limits: tuple[int, ...]) -> None:
    same(head, *limits)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_after_a_valid_request_line_agree(tail: bytes) -> None:
    same(b"GET /x HTTP/1.1\r\nHost: a\r\n" + tail, 8192, 32768)
    same(b"GET " + tail + b" HTTP/1.1\r\nHost: a", 8192, 32768)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(alphabet="/.%;aA2Ff5Cc~\\?:@!\t e\u00e9", max_size=12), max_size=6))
def test_path_spellings_agree(segments: list[str]) -> None:
    target = ("/" + "/".join(segments)).encode("utf-8")
    same(b"GET " + target + b" HTTP/1.1\r\nHost: a", 8192, 32768)


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Many: v\r\n" * 150 + b"Last: v",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 40000,
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a",
        b"OPTIONS * HTTP/1.1\r\nHost: a",
        b"OPTIONS * HTTP/1.0",
        b"GET * HTTP/1.1\r\nHost: a",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: a\r\nUpgrade: b",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\nBad Name: x",  # a malformed line wins over a duplicate Host
        b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: b\rc",  # a control byte wins over a bare CR
        b"",
        b"\r\n",
        b"GET / HTTP/1.1\r\n",
    ],
)
def test_edge_cases_agree(head: bytes) -> None:
    for limits in ((8192, 32768), (8192, 32768, 100), (8192, 1 << 20, 1000), (10, 10, 0)):
        same(head, *limits)


def test_other_call_forms_behave_like_python() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a"
    assert c_parse(head, 8192, 32768, max_headers=5) == parse_request_head_py(head, 8192, 32768, max_headers=5)
    assert c_parse(bytearray(head), 8192, 32768) == parse_request_head_py(
        bytearray(head), 8192, 32768)  # type: ignore[arg-type]
    assert c_parse(head, 1 << 70, 1 << 70) == parse_request_head_py(head, 1 << 70, 1 << 70)
    with pytest.raises(TypeError):
        c_parse(head)


SAMPLES = [
    b"GET /a/b?x=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: x\r\nAccept: */*\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: ws\r\nX-Request-ID: r",
    b"POST /%61/../b;x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5",
    b"GET http://h:1/x HTTP/1.1\r\nHost: a",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b",
    b"GET /%2F HTTP/1.1\r\nHost: a",
    b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 120 + b"Host: a",
    b"GET /x HTTP/1.0",
]


def test_no_leaks() -> None:
    """References and memory stay flat over many parses, on every success and error path."""
    def run(times: int) -> None:
        for _ in range(times):
            for head in SAMPLES:
                with contextlib.suppress(ParseError):
                    c_parse(head, 8192, 32768)

    run(200)
    before = [sys.getrefcount(o) for o in (*SAMPLES, RequestHead, ParseError, parser._split_target)]
    tracemalloc.start()
    try:
        run(10)
        start, _ = tracemalloc.get_traced_memory()
        run(3000)  # 24,000 parses: one leaked object per parse would be > 700 KB
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    after = [sys.getrefcount(o) for o in (*SAMPLES, RequestHead, ParseError, parser._split_target)]
    assert after == before
    assert end - start < 64 * 1024, end - start


# --- response heads: the C ResponseParser against parse_response_head_py -------------------------------------

c_parse_response = ResponseParser(parse_response_head_py, ResponseHead, ParseError)
RESPONSE_FIELDS = ResponseHead.__slots__


def response_outcome(fn: Any, head: Any) -> tuple[Any, ...]:
    try:
        r = fn(head)
    except ParseError as exc:
        return ("error", exc.status, exc.reason, type(exc))
    assert type(r) is ResponseHead
    values = tuple(getattr(r, f) for f in RESPONSE_FIELDS)
    return ("ok", *values, tuple(type(v) for v in values), [tuple(map(type, h)) for h in r.headers])


def same_response(head: bytes) -> None:
    assert response_outcome(c_parse_response, head) == response_outcome(parse_response_head_py, head), head


def test_the_package_uses_the_c_response_parser() -> None:
    assert isinstance(parser.parse_response_head, ResponseParser)


STATUS_PROTOS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b"", b"HTTP/1.10", b"ICY"]
STATUS_CODES = [b"200", b"204", b"304", b"101", b"100", b"099", b"000", b"20", b"2000", b"2a0", b"", b" 200", b"999",
                b"\xb2\xb0\xb0"]
REASONS_ = [b"", b" OK", b" Not Found", b" ", b"  two  spaces ", b" \xc3\xa9", b" a\tb"]
RESPONSE_NAMES = [n for n in NAMES if n != b"Host"] + [b"Keep-Alive", b"Content-Type", b"Set-Cookie"]


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    """Half well-formed line by line (so the field rules are reached), half not."""
    clean = draw(st.booleans())

    def pick(good: list[bytes], every: list[bytes]) -> bytes:
        return draw(st.sampled_from(good if clean else every))

    line = pick([b"HTTP/1.1", b"HTTP/1.0"], STATUS_PROTOS) + pick([b" "], [b" ", b"", b"  "]) + pick(
        [b"200", b"204", b"101", b"404"], STATUS_CODES) + draw(st.sampled_from(REASONS_))
    parts = [line]
    for _ in range(draw(st.integers(0, 10))):
        parts.append(pick([b"\r\n"], SEPS))
        parts.append(pick([b""], [b""] * 8 + [b" ", b"\t"]) + pick(
            [n for n in RESPONSE_NAMES if n in GOOD_NAMES or n in (b"Keep-Alive", b"Content-Type", b"Set-Cookie")],
            RESPONSE_NAMES) + pick([b": ", b":"], COLONS) + draw(st.sampled_from(VALUES)))
    if not clean and draw(st.booleans()):
        parts.append(draw(st.sampled_from([b"\r\n", b"\r", b"\n", b"\r\n\r\n", b"\x00"])))
    return b"".join(parts)


@settings(max_examples=3000, deadline=None)
@given(response_heads())
def test_structured_response_heads_agree(head: bytes) -> None:
    same_response(head)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_as_response_heads_agree(head: bytes) -> None:
    same_response(head)
    same_response(b"HTTP/1.1 200 OK\r\n" + head)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\nBad Name: x",  # form wins over fields
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive",
        b"HTTP/1.0 200 OK",
        b"HTTP/1.1 200 OK\r\nConnection: Close, Upgrade\r\nConnection: ,",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket",
        b"HTTP/1.1 200",
        b"HTTP/1.1 200 ",
        b"HTTP/1.1",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nX\x00: b\rc",  # a control byte wins over a bare CR
        b"",
        b"\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: v\r\n" * 150 + b"Content-Length: 999999999999999999",
    ],
)
def test_response_edge_cases_agree(head: bytes) -> None:
    same_response(head)


def test_response_other_call_forms_behave_like_python() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3"
    assert c_parse_response(bytearray(head)) == parse_response_head_py(bytearray(head))  # type: ignore[arg-type]
    assert c_parse_response(head=head) == parse_response_head_py(head=head)
    with pytest.raises(TypeError):
        c_parse_response()


RESPONSE_SAMPLES = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\nConnection: keep-alive, x",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6",
    b"HTTP/1.1 200 OK\r\nBad Name: x",
    b"HTTP/1.1 2x0 OK",
    b"HTTP/1.0 204\r\n" + b"X: y\r\n" * 120 + b"Connection: close",
]


def test_response_parser_does_not_leak() -> None:
    def run(times: int) -> None:
        for _ in range(times):
            for head in RESPONSE_SAMPLES:
                with contextlib.suppress(ParseError):
                    c_parse_response(head)

    run(200)
    before = [sys.getrefcount(o) for o in (*RESPONSE_SAMPLES, ResponseHead, ParseError)]
    tracemalloc.start()
    try:
        run(10)
        start, _ = tracemalloc.get_traced_memory()
        run(4000)  # 24,000 parses: one leaked object per parse would be > 700 KB
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    after = [sys.getrefcount(o) for o in (*RESPONSE_SAMPLES, ResponseHead, ParseError)]
    assert after == before
    assert end - start < 64 * 1024, end - start
