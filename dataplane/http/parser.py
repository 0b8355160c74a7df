"""Strict HTTP/1.1 message-head parsing (pure, no I/O): what a complete head means.

Where a head or a body ends is ``dataplane/http/framing.py`` (``HeadReader``, the body readers; their
names are re-exported here). Why a parser of our own rather than llhttp/httptools: the proxy forwards
header lines as the client spelled them (``RequestHead.headers`` keeps the raw line), forwards a
content-length body without copying it, keeps every smuggling rule in one place and pays less per
request than a callback-per-header binding. The rules:

- ``Content-Length`` together with ``Transfer-Encoding`` -> 400;
- several ``Content-Length`` values that differ -> 400 (equal copies are collapsed);
- ``Transfer-Encoding`` other than exactly ``chunked`` (or on HTTP/1.0) -> 400 (501 would invite retries);
- obs-fold, bare CR or LF, control bytes, whitespace before the colon, bad tokens -> 400;
- chunk sizes that are not 1-16 hex digits, missing CRLF after chunk data -> error;
- more than ``max_headers`` header lines -> 431.

The request path is normalised here (``dataplane/http/path.py``): ``RequestHead.target`` and
``.path`` are already canonical, so routing and the backend see one spelling. Header names keep
their exact lower-case spelling for framing (``Content_Length`` is not a Content-Length: a front
proxy did not frame by it either); ``canonical_name`` (``_`` -> ``-``) is the form used wherever a
header is stripped or trusted (``dataplane/http/headers.py``), so no spelling of a trusted name passes.

The cost stays in C: one ``find`` for the end of the head, one ``split`` into lines, one regex
over the whole head for forbidden bytes, a ``partition`` and a precompiled ``fullmatch`` per header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dataplane.http.framing import FORBIDDEN as _FORBIDDEN
from dataplane.http.framing import (
    LAST_CHUNK,
    TOKEN,
    ChunkedReader,
    ParseError,
    chunk,
    partial_head_error,
)
from dataplane.http.path import PathError, normalize_path

__all__ = [
    "LAST_CHUNK", "TOKEN", "ChunkedReader", "ParseError", "RequestHead", "ResponseHead", "canonical_name", "chunk",
    "parse_request_head", "parse_response_head", "partial_head_error",
]
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_STATUS = re.compile(rb"[0-9]{3}")

DEFAULT_MAX_HEADERS = 100


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes  # normalised origin-form (absolute-form is rewritten to it) plus the raw query, or b"*"
    path: str  # normalised path without the query and without ";" parameters, for routing
    version: int  # 10 or 11
    headers: list[tuple[bytes, bytes]]  # (lower-case name, raw "Name: value" line without CRLF)
    host: bytes  # Host header (or the authority of an absolute-form target); b"" when absent
    content_length: int  # -1: no Content-Length
    chunked: bool
    keep_alive: bool
    upgrade: bytes  # Upgrade header value when Connection lists "upgrade", else b""
    connection_tokens: frozenset[bytes]
    request_id: bytes  # client X-Request-ID, b"" when absent

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0


@dataclass(slots=True)
class ResponseHead:
    version: int
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    content_length: int  # -1: none
    chunked: bool
    close: bool  # the upstream will close (Connection: close or HTTP/1.0 without keep-alive)
    connection_tokens: frozenset[bytes]


def _check_bytes(head: bytes, status: int) -> None:
    if _FORBIDDEN.search(head) is not None:
        raise ParseError(status, "control character in message head")
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        raise ParseError(status, "bare CR or LF in message head")


def canonical_name(name: bytes) -> bytes:
    """The one spelling of a header name used for every strip/trust decision: lower case, ``_`` -> ``-``.

    WSGI/CGI servers (wsgiref, gunicorn < 22, uWSGI, PHP) map both ``-`` and ``_`` to ``_`` in
    ``HTTP_*`` variables, so ``X_Forwarded_For`` is ``X-Forwarded-For`` to them."""
    return name.lower().replace(b"_", b"-")


def _split_target(target: bytes) -> tuple[bytes, str]:
    """Normalise an origin-form target: ``(canonical path + raw query, routing path)``."""
    raw, q, query = target.partition(b"?")
    try:
        forwarded, routing = normalize_path(raw)
    except PathError as exc:
        raise ParseError(400, str(exc)) from None
    if forwarded is not raw:
        target = forwarded + q + query
    return target, routing.decode("latin-1")


def _header_lines(lines: list[bytes], status: int) -> list[tuple[bytes, bytes, bytes]]:
    out: list[tuple[bytes, bytes, bytes]] = []
    for line in lines:
        if not line or line[0] in (32, 9):
            raise ParseError(status, "obsolete line folding or empty header line")
        name, colon, value = line.partition(b":")
        if not colon or TOKEN.fullmatch(name) is None:
            raise ParseError(status, "malformed header name")
        out.append((name.lower(), line, value.strip(b" \t")))
    return out


def _content_length(value: bytes, current: int, status: int) -> int:
    for part in value.split(b","):
        part = part.strip(b" \t")
        if not part.isdigit() or len(part) > 18:
            raise ParseError(status, "invalid Content-Length")
        n = int(part)
        if current not in (-1, n):
            raise ParseError(status, "conflicting Content-Length values")
        current = n
    return current


def _tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(t.strip(b" \t").lower() for t in value.split(b","))


def _request_line(head: bytes, line_end: int, max_request_line: int, max_header_bytes: int) -> tuple[bytes, bytes, int]:
    """Limits, forbidden bytes and the request line: ``(method, raw target, version)``."""
    request_line = head if line_end < 0 else head[:line_end]
    if len(request_line) > max_request_line:
        raise ParseError(414, "request line too long")
    if line_end >= 0 and len(head) - line_end > max_header_bytes:
        raise ParseError(431, "request headers too large")
    _check_bytes(head, 400)
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise ParseError(400, "malformed request line")
    method, target, proto = parts
    if TOKEN.fullmatch(method) is None:
        raise ParseError(400, "malformed method")
    if proto == b"HTTP/1.1":
        version = 11
    elif proto == b"HTTP/1.0":
        version = 10
    elif _VERSION.fullmatch(proto):
        raise ParseError(505, "HTTP version not supported")
    else:
        raise ParseError(400, "malformed HTTP version")
    if not target or not target.isascii():
        raise ParseError(400, "malformed request target")
    return method, target, version


def _absolute_target(method: bytes, target: bytes) -> tuple[bytes, bytes | None]:
    """A target that is not origin-form: ``OPTIONS *`` stays, absolute-form becomes
    ``(origin-form target, authority)``; any other form is refused."""
    if target == b"*" and method == b"OPTIONS":
        return target, None
    lower = target[:8].lower()
    if not (lower.startswith(b"http://") or lower.startswith(b"https://")):
        raise ParseError(400, "unsupported request target form")
    rest = target[target.index(b"//") + 2:]
    slash = rest.find(b"/")
    cut = min((i for i in (slash, rest.find(b"?")) if i >= 0), default=len(rest))
    authority = rest[:cut]
    if b"@" in authority or _HOST.fullmatch(authority) is None or not authority:
        raise ParseError(400, "malformed request target")
    target = rest[cut:] or b"/"
    if target[0] != 47:
        target = b"/" + target
    return target, authority


@dataclass(slots=True)
class _Fields:
    """What the framing and routing need from the header fields of one request."""

    headers: list[tuple[bytes, bytes]]
    host: bytes | None = None
    content_length: int = -1
    chunked: bool = False
    connection: frozenset[bytes] = frozenset()
    upgrade: bytes = b""
    request_id: bytes = b""


def _request_fields(lines: list[bytes], max_headers: int) -> _Fields:
    if len(lines) > max_headers:
        raise ParseError(431, f"more than {max_headers} request headers")
    f = _Fields([])
    headers = f.headers
    for lname, line, value in _header_lines(lines, 400):
        headers.append((lname, line))
        if lname == b"host":
            if f.host is not None:
                raise ParseError(400, "duplicate Host header")
            if _HOST.fullmatch(value) is None:
                raise ParseError(400, "malformed Host header")
            f.host = value
        elif lname == b"content-length":
            f.content_length = _content_length(value, f.content_length, 400)
        elif lname == b"transfer-encoding":
            if f.chunked or value.lower() != b"chunked":
                raise ParseError(400, "unsupported Transfer-Encoding")
            f.chunked = True
        elif lname == b"connection":
            f.connection = f.connection | _tokens(value)
        elif lname == b"upgrade":
            f.upgrade = value
        elif lname == b"x-request-id":
            f.request_id = value
    return f


def parse_request_head(
    head: bytes, max_request_line: int, max_header_bytes: int, max_headers: int = DEFAULT_MAX_HEADERS
) -> RequestHead:
    """Parse a request head (everything before the blank line, without the final CRLFCRLF)."""
    line_end = head.find(b"\r\n")
    method, target, version = _request_line(head, line_end, max_request_line, max_header_bytes)
    absolute_host: bytes | None = None
    if target[0] != 47:  # "/"
        target, absolute_host = _absolute_target(method, target)
    f = _request_fields(head[line_end + 2:].split(b"\r\n") if line_end >= 0 else [], max_headers)
    chunked = f.chunked
    if chunked and f.content_length != -1:
        raise ParseError(400, "both Content-Length and Transfer-Encoding")
    if chunked and version == 10:
        raise ParseError(400, "Transfer-Encoding on HTTP/1.0")
    host = absolute_host if absolute_host is not None else f.host
    if host is None:
        if version == 11:
            raise ParseError(400, "missing Host header")
        host = b""
    connection = f.connection
    upgrade = f.upgrade if b"upgrade" in connection else b""
    keep_alive = b"close" not in connection if version == 11 else b"keep-alive" in connection
    if target == b"*":
        path = "*"
    else:
        target, path = _split_target(target)
    return RequestHead(
        method, target, path, version, f.headers, host, f.content_length, chunked, keep_alive, upgrade,
        connection, f.request_id,
    )


def parse_response_head(head: bytes) -> ResponseHead:
    """Parse an upstream response head; errors mean 502 for the client."""
    line_end = head.find(b"\r\n")
    status_line = head if line_end < 0 else head[:line_end]
    _check_bytes(head, 502)
    proto, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if proto == b"HTTP/1.1":
        version = 11
    elif proto == b"HTTP/1.0":
        version = 10
    else:
        raise ParseError(502, "upstream sent an unsupported HTTP version")
    if _STATUS.fullmatch(code) is None or code[0] == 48:
        raise ParseError(502, "upstream sent a malformed status line")
    headers: list[tuple[bytes, bytes]] = []
    content_length = -1
    chunked = False
    te_seen = False
    connection: frozenset[bytes] = frozenset()
    lines = head[line_end + 2:].split(b"\r\n") if line_end >= 0 else []
    for lname, line, value in _header_lines(lines, 502):
        headers.append((lname, line))
        if lname == b"content-length":
            content_length = _content_length(value, content_length, 502)
        elif lname == b"transfer-encoding":
            if te_seen or value.lower() != b"chunked":
                raise ParseError(502, "upstream sent an unsupported Transfer-Encoding")
            te_seen = chunked = True
        elif lname == b"connection":
            connection = connection | _tokens(value)
    if chunked and content_length != -1:
        raise ParseError(502, "upstream sent both Content-Length and Transfer-Encoding")
    close = b"close" in connection if version == 11 else b"keep-alive" not in connection
    return ResponseHead(version, int(code), reason, headers, content_length, chunked, close, connection)


# --- implementation choice ---------------------------------------------------------------------
# dataplane/http/_headparser.c gives the same RequestHead, or the same ParseError, as the function
# above for every input (tests/unit/test_http_parser_c.py runs the two against each other) at a
# fraction of the cost; the Python function stays as the reference and the fallback when the
# extension was not built (no C compiler at install time).
parse_request_head_py = parse_request_head
PARSER_IMPLEMENTATION = "python"
try:
    from dataplane.http._headparser import HeadParser as _HeadParser
except ImportError:  # pragma: no cover - depends on how the package was installed
    pass
else:
    parse_request_head = _HeadParser(
        parse_request_head_py, RequestHead, ParseError, _split_target
    )
    PARSER_IMPLEMENTATION = "c"
# The same for response heads (same discipline: tests/unit/test_http_parser_c.py compares the two).
parse_response_head_py = parse_response_head
try:
    from dataplane.http._headparser import ResponseParser as _ResponseParser
except ImportError:  # pragma: no cover - depends on how the package was installed (or an older build)
    pass
else:
    parse_response_head = _ResponseParser(parse_response_head_py, ResponseHead, ParseError)
