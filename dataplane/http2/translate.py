"""HTTP/2 <-> HTTP/1.1 message heads, and gRPC's status rules (pure: no I/O, no h2 objects).

A client stream's request fields become one HTTP/1.1 request head, so the HTTP engine routes, filters
and limits it exactly as a request that arrived over HTTP/1.1 (``Connection: close``: one exchange per
stream). What HTTP/2 forbids (RFC 9113 8.2, 8.3) is refused here with a status and a reason instead of
being smuggled into HTTP/1.1 syntax: connection-specific fields, CR/LF/NUL in values, upper-case or
non-token names, pseudo-header fields out of place. The response head the engine writes comes back as
HTTP/2 response fields, without the HTTP/1.1 connection-specific ones.

gRPC (a ``content-type`` starting with ``application/grpc``) cannot read an HTTP error page: a non-200
answer without ``grpc-status`` becomes a trailers-only response whose ``grpc-status`` follows gRPC's
HTTP-to-gRPC mapping (``doc/http-grpc-status-mapping.md``), and ``grpc-timeout`` is read so the stream
can be bounded by the client's deadline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dataplane.http.parser import ResponseHead

CRLF = b"\r\n"
_END = b"Connection: close\r\n\r\n"
_END_CHUNKED = b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
# RFC 9110 5.6.2 token, lower case only (RFC 9113 8.2.1: upper-case names are malformed).
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9113 8.2.1: NUL, CR and LF are never valid in a value; other controls (but HTAB) are not either (RFC 9110 5.5).
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# A valid value in one match (the per-field hot path): visible bytes at both ends, SP and HTAB allowed inside.
_VALUE = re.compile(rb"(?:[!-~\x80-\xff](?:[\t -~\x80-\xff]*[!-~\x80-\xff])?)?")
# HPACK's static-table names (RFC 7541 appendix A) and other common ones: valid tokens, no regex needed.
_KNOWN_NAMES = frozenset({
    b"accept-charset", b"accept-encoding", b"accept-language", b"accept-ranges", b"accept",
    b"access-control-allow-origin", b"age", b"allow", b"authorization", b"cache-control", b"content-disposition",
    b"content-encoding", b"content-language", b"content-length", b"content-location", b"content-range",
    b"content-type", b"cookie", b"date", b"etag", b"expect", b"expires", b"from", b"host", b"if-match",
    b"if-modified-since", b"if-none-match", b"if-range", b"if-unmodified-since", b"last-modified", b"link",
    b"location", b"max-forwards", b"proxy-authenticate", b"proxy-authorization", b"range", b"referer", b"refresh",
    b"retry-after", b"server", b"set-cookie", b"strict-transport-security", b"transfer-encoding", b"user-agent",
    b"vary", b"via", b"www-authenticate", b"te", b"origin", b"priority", b"dnt", b"upgrade-insecure-requests",
    b"sec-fetch-mode", b"sec-fetch-site", b"sec-fetch-dest", b"sec-fetch-user", b"sec-ch-ua", b"sec-ch-ua-mobile",
    b"sec-ch-ua-platform", b"x-requested-with", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding",
    b"x-forwarded-for", b"x-request-id", b"traceparent", b"tracestate",
})
# :path and :authority end up in the request line and Host: no whitespace or controls at all.
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                  b"upgrade"})
_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
# Regular names the loop looks at; every other valid field is copied as it is.
_SPECIAL = _CONNECTION_SPECIFIC | {b"te", b"cookie", b"host", b"content-length", b"content-type", b"grpc-timeout"}
_GRPC_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
_GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# gRPC's doc/http-grpc-status-mapping.md (413 is not in it: RESOURCE_EXHAUSTED is what the limit means).
_GRPC_FROM_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 413: 8, 429: 14, 502: 14, 503: 14, 504: 14}
GRPC_UNKNOWN = 2
# Response fields HTTP/2 forbids (RFC 9113 8.2.2); the names the Connection field lists go as well.
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
# gRPC's Percent-Byte-Unencoded: 0x20-0x7E except "%"; everything else is %XX (upper-case hex).
_PERCENT = {b: f"%{b:02X}".encode() for b in (*range(0x20), 0x25, *range(0x7F, 0x100))}


@dataclass(slots=True)
class H2Request:
    """One client stream as the HTTP engine will read it."""

    head: bytes  # the HTTP/1.1 request head, ending in CRLF CRLF
    method: bytes
    chunked: bool  # the body must be chunk-framed when fed (no content-length and more DATA follows)
    grpc: bool  # content-type application/grpc...: errors must be gRPC statuses, not HTTP pages
    timeout: float | None  # grpc-timeout in seconds (None: none, or not valid)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request HTTP/2 calls malformed (400), or one the proxy does not serve over HTTP/2 (501)."""

    status: int
    reason: str


def translate_request(fields: Sequence[tuple[bytes, bytes]], end_stream: bool) -> H2Request | Refusal:
    """A stream's request header fields (as decoded from HPACK, in order) -> an HTTP/1.1 request head.

    ``end_stream``: the HEADERS frame ended the stream, so no body follows. Host comes from
    ``:authority`` (or the ``host`` field when there is none; both present must agree), cookies are
    joined with ``"; "`` (RFC 9113 8.2.3), ``Connection: close`` always, and without a content-length a
    body that follows is sent ``Transfer-Encoding: chunked``.
    """
    method = scheme = path = authority = None
    host: bytes | None = None
    content_length: bytes | None = None
    content_type = b""
    grpc_timeout: bytes | None = None
    cookies: list[bytes] = []
    lines: list[bytes] = []
    regular = False
    for name, value in fields:
        if name[:1] == b":":
            if regular:
                return Refusal(400, "pseudo-header field after a regular field")
            if name not in _PSEUDO:
                return Refusal(400, f"unknown pseudo-header field {name.decode('latin-1')[:40]}")
            if name == b":method":
                if method is not None:
                    return Refusal(400, "duplicate :method")
                method = value
            elif name == b":scheme":
                if scheme is not None:
                    return Refusal(400, "duplicate :scheme")
                scheme = value
            elif name == b":path":
                if path is not None:
                    return Refusal(400, "duplicate :path")
                path = value
            else:
                if authority is not None:
                    return Refusal(400, "duplicate :authority")
                authority = value
            continue
        regular = True
        if name not in _KNOWN_NAMES and _NAME.fullmatch(name) is None:
            return Refusal(400, "invalid header field name")
        if _VALUE.fullmatch(value) is None:
            if _BAD_VALUE.search(value) is not None:
                return Refusal(400, "invalid character in a header field value")
            return Refusal(400, "whitespace around a header field value")
        if name not in _SPECIAL:
            lines += (name, b": ", value, CRLF)
            continue
        if name in _CONNECTION_SPECIFIC:
            return Refusal(400, f"connection-specific header field {name.decode()} in HTTP/2")
        if name == b"te":
            if value.lower() != b"trailers":
                return Refusal(400, "te other than trailers in HTTP/2")
        elif name == b"cookie":
            cookies.append(value)
            continue
        elif name == b"host":
            if host is not None:
                return Refusal(400, "duplicate host")
            host = value
            continue
        elif name == b"content-length":
            if not value.isdigit() or len(value) > 18 or (content_length is not None and value != content_length):
                return Refusal(400, "invalid content-length")
            if content_length is not None:
                continue
            content_length = value
        elif name == b"content-type":
            content_type = value
        elif name == b"grpc-timeout":
            grpc_timeout = value
        lines += (name, b": ", value, CRLF)
    if method is None:
        return Refusal(400, "missing :method")
    if _METHOD.fullmatch(method) is None:
        return Refusal(400, "invalid :method")
    if method == b"CONNECT":
        return Refusal(501, "CONNECT is not supported over HTTP/2")
    if scheme is None:
        return Refusal(400, "missing :scheme")
    if scheme not in (b"http", b"https"):
        return Refusal(400, "unsupported :scheme")
    if not path:
        return Refusal(400, "missing or empty :path")
    if _BAD_TARGET.search(path) is not None or not (path[:1] == b"/" or (path == b"*" and method == b"OPTIONS")):
        return Refusal(400, "invalid :path")
    if authority is not None:
        if not authority or _BAD_TARGET.search(authority) is not None or b"@" in authority:
            return Refusal(400, "invalid :authority")
        if host is not None and host.lower() != authority.lower():
            return Refusal(400, "host and :authority differ")
        host = authority
    elif not host or _BAD_TARGET.search(host) is not None or b"@" in host:
        return Refusal(400, "missing :authority and host")
    if content_length is not None and end_stream and content_length.strip(b"0"):
        return Refusal(400, "content-length without a body")
    chunked = content_length is None and not end_stream
    parts = [method, b" ", path, b" HTTP/1.1\r\nHost: ", host, CRLF]
    if cookies:
        parts += (b"cookie: ", b"; ".join(cookies), CRLF)
    parts += lines
    parts.append(_END_CHUNKED if chunked else _END)
    grpc = content_type.startswith(b"application/grpc")
    return H2Request(b"".join(parts), method, chunked, grpc,
                     parse_grpc_timeout(grpc_timeout) if grpc_timeout is not None else None)


def response_fields(resp: ResponseHead) -> list[tuple[bytes, bytes]]:
    """An HTTP/1.1 response head -> HTTP/2 response fields, ``:status`` first, lower-case names, without the
    connection-specific fields (and those the Connection field names)."""
    out = [(b":status", b"%d" % resp.status)]
    listed = resp.connection_tokens
    for lname, line in resp.headers:
        if lname in _RESPONSE_DROP or (listed and lname in listed):
            continue
        out.append((lname, line.partition(b":")[2].strip(b" \t")))
    return out


def grpc_status(http_status: int) -> int:
    """The gRPC status a client reports for an HTTP status without grpc-status (gRPC's mapping)."""
    return _GRPC_FROM_HTTP.get(http_status, GRPC_UNKNOWN)


def grpc_message(message: str) -> bytes:
    """``grpc-message`` encoding: UTF-8, then percent-encoding of "%" and every byte outside 0x20-0x7E."""
    data = message.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in data):
        return data
    return b"".join(_PERCENT.get(b, bytes((b,))) for b in data)


def grpc_trailers_only(http_status: int, message: str, grpc_code: int | None = None) -> list[tuple[bytes, bytes]]:
    """A trailers-only gRPC response (one HEADERS frame with END_STREAM) standing for an HTTP error."""
    code = grpc_status(http_status) if grpc_code is None else grpc_code
    out = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % code)]
    if message:
        out.append((b"grpc-message", grpc_message(message)))
    return out


def parse_grpc_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (1 to 8 digits and a unit of H, M, S, m, u, n) in seconds; None when not valid."""
    match = _GRPC_TIMEOUT.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)) * _GRPC_UNITS[match.group(2)]
