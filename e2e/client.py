"""The test client: real TLS to the edge with a chosen SNI, to a chosen address (no DNS), reporting what a user
would see: status, body, and the certificate the edge presented."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from cryptography import x509


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    peer_cert: x509.Certificate | None

    def json(self) -> Any:
        return json.loads(self.body)


def _request(sock: socket.socket, host: str, path: str,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close", "User-Agent: portcullis-e2e"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def https_get(address: str, port: int, host: str, path: str = "/", ca_pem: str | None = None,
              timeout: float = 3.0, headers: dict[str, str] | None = None,
              client_cert: tuple[str, str] | None = None) -> Answer:
    """GET over TLS with SNI ``host``; verifies the edge's certificate against ``ca_pem`` when given and presents
    ``client_cert`` (certificate file, key file) when asked."""
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl._create_unverified_context()
    if client_cert is not None:
        context.load_cert_chain(*client_cert)
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((address, port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
        status, answer_headers, body = _request(tls, host, path, headers)
    return Answer(status, answer_headers, body, x509.load_der_x509_certificate(der) if der else None)


def http_get(address: str, port: int, host: str, path: str = "/", timeout: float = 3.0) -> Answer:
    with socket.create_connection((address, port), timeout=timeout) as sock:
        status, headers, body = _request(sock, host, path)
    return Answer(status, headers, body, None)


def tls_echo(address: str, port: int, host: str, payload: bytes, ca_pem: str,
             timeout: float = 3.0) -> tuple[bytes, x509.Certificate]:
    """Passthrough: a TLS session straight to the backend (its certificate, its echo)."""
    context = ssl.create_default_context(cadata=ca_pem)
    with socket.create_connection((address, port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = tls.recv(65536)
            if not chunk:
                break
            received += chunk
    return received, x509.load_der_x509_certificate(der)
