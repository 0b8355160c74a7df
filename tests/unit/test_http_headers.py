"""Header rewriting: hop-by-hop removal, spoofed forwarding headers replaced, response framing."""

from __future__ import annotations

import urllib.parse

import pytest

from dataplane.http.headers import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    client_response_head,
    connection_block,
    request_id,
    response_framing,
    upstream_request_head,
)
from dataplane.http.info import ClientCert, ConnectionInfo
from dataplane.http.parser import parse_request_head, parse_response_head
from dataplane.snapshot import ClientAuth, TLSHost

INFO = ConnectionInfo("https", ("192.0.2.7", 5555), 443)


def lines(head: bytes) -> list[str]:
    return head.decode().split("\r\n")


def up(request: bytes, info: ConnectionInfo = INFO, rid: bytes = b"rid") -> list[str]:
    req = parse_request_head(request, 8192, 32768)
    head = upstream_request_head(req, connection_block(info), rid)
    assert head.endswith(b"\r\n\r\n")
    return lines(head[:-4])


def names(hdrs: list[str]) -> list[str]:
    return [h.split(":")[0].lower() for h in hdrs[1:]]


def test_forwarding_headers_replace_client_copies() -> None:
    out = up(
        b"GET /x HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /evil\r\nForwarded: for=6.6.6.6\r\n"
        b"X-Real-IP: 6.6.6.6\r\nAccept: */*"
    )
    assert out[0] == "GET /x HTTP/1.1"
    assert "X-Forwarded-For: 192.0.2.7" in out and "X-Real-IP: 192.0.2.7" in out
    assert "X-Forwarded-Proto: https" in out and "X-Forwarded-Port: 443" in out
    assert "X-Forwarded-Host: app.test" in out and "Host: app.test" in out
    assert "Accept: */*" in out
    assert not any("6.6.6.6" in h or "evil" in h or h.startswith("Forwarded") for h in out)
    assert names(out).count("x-forwarded-for") == 1 and names(out).count("host") == 1


@pytest.mark.parametrize(
    "header",
    ["Connection: close, X-Secret", "Keep-Alive: timeout=5", "Proxy-Connection: keep-alive",
     "Proxy-Authorization: Basic x", "TE: trailers", "Trailer: X", "Upgrade: h2c"],
)
def test_hop_by_hop_removed(header: str) -> None:
    out = up(f"GET / HTTP/1.1\r\nHost: a\r\n{header}\r\nX-Secret: 1\r\nX-Other: 2".encode())
    lower = [h.lower() for h in out]
    assert not any(h.startswith(header.split(":")[0].lower() + ":") for h in lower)
    assert "X-Other: 2" in out
    if "X-Secret" in header:
        assert "X-Secret: 1" not in out  # listed in Connection


def test_body_framing_recreated() -> None:
    assert "Content-Length: 5" in up(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5")
    out = up(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked")
    assert "Transfer-Encoding: chunked" in out and not any(h.startswith("Content-Length") for h in out)


def test_upgrade_kept_when_upgrading() -> None:
    out = up(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k")
    assert "Connection: upgrade" in out and "Upgrade: websocket" in out and "Sec-WebSocket-Key: k" in out


def test_http10_upstream_is_http11() -> None:
    out = up(b"GET / HTTP/1.0")
    assert out[0] == "GET / HTTP/1.1" and "host" not in names(out)


def test_request_id() -> None:
    assert request_id(b"abc-123") == b"abc-123"
    for bad in (b"", b"a b", b"x" * 200, b"<script>"):
        generated = request_id(bad)
        assert generated != bad and len(generated) == 32
    out = up(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: keep.me", rid=request_id(b"keep.me"))
    assert names(out).count("x-request-id") == 1 and "X-Request-ID: keep.me" in out


ROW = TLSHost("m.test", "terminate", client_auth=ClientAuth("ca", forward_headers=True))
SPOOF = (b"GET / HTTP/1.1\r\nHost: m.test\r\nssl-client-verify: SUCCESS\r\nSSL-Client-Subject-DN: CN=admin\r\n"
         b"ssl-client-issuer-dn: CN=x\r\nssl-client-cert: x\r\nssl-client-other: y")


def test_client_cert_headers_forwarded() -> None:
    pem_text = "-----BEGIN CERTIFICATE-----\nAAA+/=\n-----END CERTIFICATE-----\n"
    cert = ClientCert(True, "CN=alice,O=Org", "CN=Test CA", pem_text)
    out = up(SPOOF, ConnectionInfo("https", ("1.2.3.4", 1), 443, "m.test", ROW, cert))
    assert "ssl-client-verify: SUCCESS" in out
    assert "ssl-client-subject-dn: CN=alice,O=Org" in out and "ssl-client-issuer-dn: CN=Test CA" in out
    encoded = next(h for h in out if h.startswith("ssl-client-cert: ")).split(": ", 1)[1]
    assert urllib.parse.unquote(encoded) == pem_text and "\n" not in encoded
    assert not any("admin" in h or h.lower().startswith("ssl-client-other") for h in out)


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (ConnectionInfo("https", ("1.2.3.4", 1), 443, "m.test", ROW, None), ["ssl-client-verify: NONE"]),
        (ConnectionInfo("https", ("1.2.3.4", 1), 443, "m.test", ROW, ClientCert(False, "", "", "x")),
         ["ssl-client-verify: FAILED:certificate not verified", "ssl-client-cert: x"]),
        (ConnectionInfo("https", ("1.2.3.4", 1), 443, "m.test", ROW,
                        ClientCert(False, "CN=a", "CN=b", "x", "unable to get local issuer certificate")),
         ["ssl-client-verify: FAILED:unable to get local issuer certificate", "ssl-client-subject-dn: CN=a",
          "ssl-client-issuer-dn: CN=b", "ssl-client-cert: x"]),  # optional_no_ca: never SUCCESS unverified
        (ConnectionInfo("https", ("1.2.3.4", 1), 443, "m.test", TLSHost("m.test", "terminate"),
                        ClientCert(True, "CN=a", "CN=b", "x")), []),  # forwarding off: stripped only
        (ConnectionInfo("http", ("1.2.3.4", 1), 80), []),
    ],
)
def test_client_cert_headers_otherwise_stripped(info: ConnectionInfo, expected: list[str]) -> None:
    out = up(SPOOF, info)
    assert [h for h in out if h.lower().startswith("ssl-client-")] == expected


def test_cert_fields_cannot_inject_headers() -> None:
    cert = ClientCert(True, "CN=a\r\nX-Evil: 1", "CN=b", "x")
    out = up(SPOOF, ConnectionInfo("https", ("1.2.3.4", 1), 443, "m.test", ROW, cert))
    assert not any(h.startswith("X-Evil") for h in out)


@pytest.mark.parametrize(
    ("head_req", "resp", "version", "framing"),
    [
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 3", 11, LENGTH),
        (False, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", 11, CHUNKED),
        (False, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", 10, UNTIL_CLOSE),
        (False, b"HTTP/1.0 200 OK", 11, CHUNKED),
        (True, b"HTTP/1.1 200 OK\r\nContent-Length: 3", 11, NO_BODY),
        (False, b"HTTP/1.1 304 Not Modified", 11, NO_BODY),
        (False, b"HTTP/1.1 204 No Content", 11, NO_BODY),
    ],
)
def test_response_framing(head_req: bool, resp: bytes, version: int, framing: int) -> None:
    assert response_framing(head_req, parse_response_head(resp), version) == framing


def test_client_response_head() -> None:
    resp = parse_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n"
        b"X-Internal: 1\r\nProxy-Authenticate: x\r\nStrict-Transport-Security: max-age=1\r\nSet-Cookie: a=b"
    )
    out = lines(client_response_head(resp, LENGTH, True, 11, b"max-age=31536000")[:-4])
    assert out[0] == "HTTP/1.1 200 OK"
    assert "Content-Length: 3" in out and "Set-Cookie: a=b" in out
    assert "Strict-Transport-Security: max-age=31536000" in out and "Strict-Transport-Security: max-age=1" not in out
    assert not any(h.split(":")[0].lower() in ("connection", "keep-alive", "x-internal", "proxy-authenticate")
                   for h in out[1:])
    closing = lines(client_response_head(resp, LENGTH, False, 11, None)[:-4])
    assert "Connection: close" in closing and "Strict-Transport-Security: max-age=1" in closing
    chunked = lines(client_response_head(parse_response_head(b"HTTP/1.1 200 OK"), CHUNKED, True, 11, None)[:-4])
    assert "Transfer-Encoding: chunked" in chunked
    head = lines(client_response_head(resp, NO_BODY, True, 10, None)[:-4])
    assert "Content-Length: 3" in head and "Connection: keep-alive" in head
