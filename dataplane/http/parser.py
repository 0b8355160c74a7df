"""Strict HTTP/1.1 message-head and chunked-body parsing (pure, no I/O).

Why not httptools: a reverse proxy must stop exactly at the end of one request and not look at the
next pipelined one until the response is done (else it has to buffer it unboundedly or forward two
requests at once). llhttp through httptools cannot pause between messages nor report how many bytes
it consumed, so the framing is done here, where every smuggling rule is explicit:

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

from dataplane.http.path import PathError, normalize_path

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control bytes other than HTAB, CR and LF anywhere in a head are never valid.
_FORBIDDEN = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_STATUS = re.compile(rb"[0-9]{3}")

MAX_CHUNK_LINE = 4096
DEFAULT_MAX_HEADERS = 100
MAX_TRAILER_BYTES = 16384


class ParseError(Exception):
    """A message the proxy must refuse; ``status`` is what the client gets (then the connection closes)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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


def partial_head_error(buf: bytes | bytearray) -> ParseError | None:
    """Whether an incomplete request head (no blank line yet) is already invalid, so the client gets
    its 400 now instead of waiting for a blank CRLF line that a bare-LF client never sends."""
    lf = buf.count(b"\n")
    if lf and lf != buf.count(b"\r\n"):
        return ParseError(400, "bare LF in request head (lines must end with CRLF)")
    cr = buf.count(b"\r")
    if cr != lf and (cr != lf + 1 or buf[-1] != 13):
        return ParseError(400, "bare CR in request head")
    return None


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


def parse_request_head(
    head: bytes, max_request_line: int, max_header_bytes: int, max_headers: int = DEFAULT_MAX_HEADERS
) -> RequestHead:
    """Parse a request head (everything before the blank line, without the final CRLFCRLF)."""
    line_end = head.find(b"\r\n")
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

    absolute_host: bytes | None = None
    if target[0] != 47:  # "/"
        if target == b"*" and method == b"OPTIONS":
            pass
        else:
            lower = target[:8].lower()
            if lower.startswith(b"http://") or lower.startswith(b"https://"):
                rest = target[target.index(b"//") + 2:]
                slash = rest.find(b"/")
                cut = min((i for i in (slash, rest.find(b"?")) if i >= 0), default=len(rest))
                absolute_host = rest[:cut]
                if b"@" in absolute_host or _HOST.fullmatch(absolute_host) is None or not absolute_host:
                    raise ParseError(400, "malformed request target")
                target = rest[cut:] or b"/"
                if target[0] != 47:
                    target = b"/" + target
            else:
                raise ParseError(400, "unsupported request target form")

    headers: list[tuple[bytes, bytes]] = []
    host: bytes | None = None
    content_length = -1
    chunked = False
    connection: frozenset[bytes] = frozenset()
    upgrade = b""
    request_id = b""
    lines = head[line_end + 2:].split(b"\r\n") if line_end >= 0 else []
    if len(lines) > max_headers:
        raise ParseError(431, f"more than {max_headers} request headers")
    for lname, line, value in _header_lines(lines, 400):
        headers.append((lname, line))
        if lname == b"host":
            if host is not None:
                raise ParseError(400, "duplicate Host header")
            if _HOST.fullmatch(value) is None:
                raise ParseError(400, "malformed Host header")
            host = value
        elif lname == b"content-length":
            content_length = _content_length(value, content_length, 400)
        elif lname == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":
                raise ParseError(400, "unsupported Transfer-Encoding")
            chunked = True
        elif lname == b"connection":
            connection = connection | _tokens(value)
        elif lname == b"upgrade":
            upgrade = value
        elif lname == b"x-request-id":
            request_id = value
    if chunked and content_length != -1:
        raise ParseError(400, "both Content-Length and Transfer-Encoding")
    if chunked and version == 10:
        raise ParseError(400, "Transfer-Encoding on HTTP/1.0")
    if absolute_host is not None:
        host = absolute_host
    elif host is None:
        if version == 11:
            raise ParseError(400, "missing Host header")
        host = b""
    if b"upgrade" not in connection:
        upgrade = b""
    keep_alive = b"close" not in connection if version == 11 else b"keep-alive" in connection
    if target == b"*":
        path = "*"
    else:
        target, path = _split_target(target)
    return RequestHead(
        method, target, path, version, headers, host, content_length, chunked, keep_alive, upgrade,
        connection, request_id,
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


# --- chunked bodies ------------------------------------------------------------------------------

_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)


class ChunkedDecoder:
    """Incremental, strict chunked decoder. ``feed`` appends body pieces to ``out`` and returns how
    many input bytes belong to this message (the rest is whatever follows it on the connection)."""

    __slots__ = ("_line", "_remaining", "_state", "_trailer_bytes", "status")

    def __init__(self, status: int = 400) -> None:
        self._state = _SIZE
        self._remaining = 0
        self._line = bytearray()
        self._trailer_bytes = 0
        self.status = status

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes, out: list[bytes]) -> int:
        i = 0
        n = len(data)
        while i < n:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - i)
                out.append(data[i:i + take] if (i or take != n) else data)
                i += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _DATA_CRLF
            elif state == _DONE:
                return i
            else:
                j = data.find(b"\n", i)
                if j < 0:
                    self._line += data[i:]
                    self._check_line_length()
                    return n
                self._line += data[i:j + 1]
                i = j + 1
                self._check_line_length()
                line = bytes(self._line)
                self._line.clear()
                if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                    raise ParseError(self.status, "bare CR or LF in chunked framing")
                self._line_done(line[:-2])
        return i

    def _check_line_length(self) -> None:
        if len(self._line) > MAX_CHUNK_LINE:
            raise ParseError(self.status, "chunk size line too long")

    def _line_done(self, line: bytes) -> None:
        state = self._state
        if state == _SIZE:
            size, _, ext = line.partition(b";")
            if _HEX.fullmatch(size) is None or _FORBIDDEN.search(ext) is not None:
                raise ParseError(self.status, "invalid chunk size")
            self._remaining = int(size, 16)
            self._state = _DATA if self._remaining else _TRAILER
        elif state == _DATA_CRLF:
            if line:
                raise ParseError(self.status, "missing CRLF after chunk data")
            self._state = _SIZE
        else:  # trailer section: validated and dropped
            if not line:
                self._state = _DONE
                return
            self._trailer_bytes += len(line)
            if self._trailer_bytes > MAX_TRAILER_BYTES:
                raise ParseError(self.status, "trailer section too large")
            name, colon, _ = line.partition(b":")
            if not colon or TOKEN.fullmatch(name) is None or _FORBIDDEN.search(line) is not None:
                raise ParseError(self.status, "malformed trailer")


def chunk(data: bytes) -> bytes:
    """One chunk of chunked transfer coding."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
