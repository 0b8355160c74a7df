"""Header rewriting between client and upstream (pure).

The edge is the trust boundary: anything a client sends that claims to describe the connection
(``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``, the ``ssl-client-*`` certificate headers) is
dropped and, where the proxy knows the truth, replaced. The parts that do not change during a
connection are rendered once per connection (``connection_block``).

Header names are compared in one canonical form, lower case with ``_`` -> ``-``
(``parser.canonical_name``): WSGI/CGI servers read ``X_Forwarded_For`` and ``X-Forwarded-For`` as
the same ``HTTP_X_FORWARDED_FOR``, so every drop list below matches every spelling. Client header
names containing ``_`` are dropped unless the virtual host allows them (as nginx's
``underscores_in_headers``); even then a name whose canonical form is hop-by-hop, listed in
``Connection``, or one the edge sets itself is dropped. Drops are counted per request, once.
"""

from __future__ import annotations

import random
import re
import urllib.parse

from dataplane.http.info import ConnectionInfo
from dataplane.http.parser import RequestHead, ResponseHead
from dataplane.metrics import Metrics

CRLF = b"\r\n"

# All names below are canonical (lower case, "-" never "_").
# Hop-by-hop (RFC 9110 7.6.1) plus the framing headers the proxy re-creates itself.
_HOP = frozenset({
    b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length",
})
# Names that describe the connection or the client certificate: only the edge may set them.
# ``Proxy`` too: CGI-style servers expose it as HTTP_PROXY, read as the outbound proxy (httpoxy).
TRUSTED = frozenset({
    b"forwarded", b"x-real-ip", b"proxy",
    b"ssl-client-verify", b"ssl-client-subject-dn", b"ssl-client-issuer-dn", b"ssl-client-cert",
})
TRUSTED_PREFIXES = (b"proxy-", b"x-forwarded-", b"ssl-client-")
_REQUEST_DROP = _HOP | TRUSTED | frozenset({b"host", b"x-request-id"})
# Request header names that are never dropped for what they are (canonical, not trusted, not hop-by-hop):
# ``upstream_request_head`` only checks them against the Connection tokens.
_REQUEST_KEEP = frozenset({
    b"user-agent", b"accept", b"accept-encoding", b"accept-language", b"cookie", b"content-type", b"authorization",
    b"referer", b"origin", b"cache-control", b"pragma", b"if-none-match", b"if-modified-since", b"range",
    b"dnt", b"sec-fetch-mode", b"sec-fetch-site", b"sec-fetch-dest", b"priority", b"x-requested-with",
})
_RESPONSE_DROP_PREFIXES = (b"proxy-",)
# Response header names that are never hop-by-hop, edge-owned or HSTS (canonical, so no "_" variants):
# the per-header checks of ``client_response_head`` reduce to one set lookup for them.
_RESPONSE_KEEP = frozenset({
    b"server", b"date", b"content-type", b"last-modified", b"etag", b"accept-ranges", b"cache-control",
    b"expires", b"vary", b"set-cookie", b"location", b"content-encoding", b"content-language", b"age",
    b"content-disposition", b"x-content-type-options", b"x-frame-options", b"access-control-allow-origin",
})

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:=+/@-]{1,128}")

# Response body framing towards the client.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)


def _safe(value: str) -> bytes:
    """Header-safe bytes: no CR/LF/NUL can reach the upstream through a certificate field."""
    return value.replace("\r", " ").replace("\n", " ").replace("\0", " ").encode("utf-8", "replace")


def connection_block(info: ConnectionInfo) -> bytes:
    """The forwarding headers that are the same for every request on one client connection."""
    ip = info.client_addr[0].encode()
    lines = [
        b"X-Forwarded-For: " + ip,
        b"X-Real-IP: " + ip,
        b"X-Forwarded-Proto: " + info.scheme.encode(),
        b"X-Forwarded-Port: %d" % info.server_port,
    ]
    row = info.tls_host
    if info.scheme == "https" and row is not None and row.client_auth is not None and row.client_auth.forward_headers:
        # As ingress-nginx: SUCCESS only for a certificate that verified against the CA, FAILED:<reason>
        # for one that did not (optional_no_ca, error-page hosts), NONE without one. The details
        # of an unverified certificate are passed too; the verify header says not to trust them.
        cert = info.client_cert
        if cert is None:
            lines.append(b"ssl-client-verify: NONE")
        else:
            if cert.verified:
                lines.append(b"ssl-client-verify: SUCCESS")
            else:
                lines.append(b"ssl-client-verify: FAILED:" + _safe(cert.error or "certificate not verified"))
            if cert.subject_dn:
                lines.append(b"ssl-client-subject-dn: " + _safe(cert.subject_dn))
                lines.append(b"ssl-client-issuer-dn: " + _safe(cert.issuer_dn))
            lines.append(b"ssl-client-cert: " + urllib.parse.quote(cert.pem, safe="").encode())
    return CRLF.join(lines) + CRLF


def request_id(client_value: bytes) -> bytes:
    """Keep a sane client X-Request-ID (so traces join up), else a fresh random one."""
    if client_value and _REQUEST_ID.fullmatch(client_value) is not None:
        return client_value
    # An identifier, not a secret: the seeded PRNG avoids a getrandom(2) syscall per request.
    return b"%032x" % random.getrandbits(128)


def _canonical_tokens(tokens: frozenset[bytes]) -> frozenset[bytes]:
    for t in tokens:
        if b"_" in t:
            return frozenset(t.replace(b"_", b"-") for t in tokens)
    return tokens


def upstream_request_head(
    req: RequestHead, block: bytes, req_id: bytes, allow_underscore: bool = False, metrics: Metrics | None = None
) -> bytes:
    """The request head sent to the backend: HTTP/1.1, hop-by-hop and spoofable headers removed
    (in every spelling), client names with ``_`` removed unless ``allow_underscore``."""
    parts = [req.method, b" ", req.target, b" HTTP/1.1\r\n"]
    if req.host:
        parts += (b"Host: ", req.host, CRLF)
    conn = _canonical_tokens(req.connection_tokens)
    trusted = underscore = 0
    for lname, line in req.headers:
        if lname in _REQUEST_KEEP:  # common names: only the Connection check applies
            if conn and lname in conn:
                continue
            parts += (line, CRLF)
            continue
        if b"_" in lname:
            lname = lname.replace(b"_", b"-")
            if lname in TRUSTED or lname.startswith(TRUSTED_PREFIXES):
                trusted += 1
                continue
            if not allow_underscore or lname in _REQUEST_DROP or lname in conn:
                underscore += 1
                continue
        elif lname in _REQUEST_DROP or lname.startswith(TRUSTED_PREFIXES) or lname in conn:
            if lname in TRUSTED or lname.startswith(TRUSTED_PREFIXES):
                trusted += 1
            continue
        parts += (line, CRLF)
    if (trusted or underscore) and metrics is not None:
        metrics.count_dropped_headers(trusted, underscore)
    parts.append(block)
    if req.host:
        parts += (b"X-Forwarded-Host: ", req.host, CRLF)
    parts += (b"X-Request-ID: ", req_id, CRLF)
    if req.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif req.content_length >= 0:
        parts.append(b"Content-Length: %d\r\n" % req.content_length)
    if req.upgrade:
        parts += (b"Connection: upgrade\r\nUpgrade: ", req.upgrade, CRLF)
    parts.append(CRLF)
    return b"".join(parts)


def response_framing(head_request: bool, resp: ResponseHead, client_version: int) -> int:
    """How the response body reaches the client: length passed through, re-chunked, or until close."""
    status = resp.status
    if head_request or status < 200 or status in (204, 304):
        return NO_BODY
    if resp.content_length >= 0 and not resp.chunked:
        return LENGTH
    return CHUNKED if client_version == 11 else UNTIL_CLOSE


def client_response_head(
    resp: ResponseHead,
    framing: int,
    keep_alive: bool,
    client_version: int,
    hsts: bytes | None,
    upgrade: bytes = b"",
) -> bytes:
    """The response head for the client; ``upgrade`` set only for a 101 the client asked for."""
    lines = [b"HTTP/1.1 %d %b" % (resp.status, resp.reason)]
    conn = _canonical_tokens(resp.connection_tokens)
    for lname, line in resp.headers:
        if lname not in _RESPONSE_KEEP:  # the common names need only the Connection check below
            if b"_" in lname:
                lname = lname.replace(b"_", b"-")
            if lname in _HOP or lname.startswith(_RESPONSE_DROP_PREFIXES):
                continue
            if hsts is not None and lname == b"strict-transport-security":
                continue
        if conn and lname in conn:
            continue
        lines.append(line)
    if resp.content_length >= 0 and (framing == LENGTH or (framing == NO_BODY and resp.status >= 200)):
        lines.append(b"Content-Length: %d" % resp.content_length)
    elif framing == CHUNKED:
        lines.append(b"Transfer-Encoding: chunked")
    if upgrade:
        lines.append(b"Connection: upgrade\r\nUpgrade: " + upgrade)
    elif resp.status >= 200:
        if not keep_alive:
            lines.append(b"Connection: close")
        elif client_version == 10:
            lines.append(b"Connection: keep-alive")
    if hsts is not None:
        lines.append(b"Strict-Transport-Security: " + hsts)
    lines.append(CRLF)
    return CRLF.join(lines)
