"""What the HTTP engine knows about the client connection (decided by the edge, completed from the transport).

Kept apart from ``connection.py`` so the header-rewriting code can use it without importing the
protocol class. ``dataplane.http.connection`` re-exports both names (contracts.md section 2).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, replace
from typing import Any, Literal

from dataplane import openssl
from dataplane.snapshot import TLSHost


@dataclass(frozen=True)
class ClientCert:
    verified: bool
    subject_dn: str
    issuer_dn: str
    pem: str
    error: str = ""  # why it is not verified (OpenSSL's reason), "" when verified


@dataclass(frozen=True)
class ConnectionInfo:
    scheme: Literal["http", "https"]
    client_addr: tuple[str, int] = ("", 0)  # ("", 0): read the peer address from the transport
    server_port: int = 0  # 0: read the local port from the transport
    sni: str | None = None
    tls_host: TLSHost | None = None
    client_cert: ClientCert | None = None
    # What the client speaks on this exchange, for metrics and the access log: "http/1.1" (also HTTP/1.0),
    # "h2" (an HTTP/2 stream, handed to the engine as one HTTP/1.1 exchange) or "grpc" (an h2 stream whose
    # content-type is application/grpc).
    protocol: str = "http/1.1"


def _dn(rdns: Any) -> str:
    """RFC 4514 order (most specific first), as ingress-nginx's ``$ssl_client_s_dn`` prints it."""
    parts: list[str] = []
    for rdn in reversed(rdns or ()):
        for key, value in rdn:
            short = _DN_KEYS.get(key, key)
            escaped = str(value).replace("\\", "\\\\").replace(",", "\\,").replace("+", "\\+")
            parts.append(f"{short}={escaped}")
    return ",".join(parts)


_DN_KEYS = {
    "commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
    "stateOrProvinceName": "ST", "localityName": "L", "emailAddress": "emailAddress", "domainComponent": "DC",
}


def client_cert_from_ssl(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> ClientCert | None:
    """The verified client certificate of a finished handshake (None when the client sent none).

    With the standard verify callback a handshake only completes with a certificate OpenSSL
    verified, and ``getpeercert()`` has details only then. A context that accepts any chain
    (``optional_no_ca``, error pages) completes with untrusted certificates too, and ``getpeercert()``
    parses those as well: there OpenSSL's own verify result decides, and anything but success (or a
    result that cannot be read) is "not verified". Subject and issuer are filled either way (the
    backend gets them with ``ssl-client-verify`` saying whether to believe them).
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    details = ssl_object.getpeercert()
    pem_text = ssl.DER_cert_to_PEM_cert(der)
    if not details:
        return ClientCert(False, "", "", pem_text, "certificate not verified")
    subject, issuer = _dn(details.get("subject")), _dn(details.get("issuer"))
    if isinstance(ssl_object.context, openssl.AcceptAnyPeerContext):
        verified, error = openssl.peer_verify_result(ssl_object)
        return ClientCert(verified, subject, issuer, pem_text, error)
    return ClientCert(True, subject, issuer, pem_text)


def complete_info(info: ConnectionInfo, transport: asyncio.BaseTransport) -> ConnectionInfo:
    """Fill what the edge left open from the transport: peer address, local port, and the client
    certificate when the transport itself did the TLS handshake (``create_server(ssl=...)``)."""
    changes: dict[str, Any] = {}
    if not info.client_addr[0]:
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            changes["client_addr"] = (str(peer[0]), int(peer[1]))
    if not info.server_port:
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            changes["server_port"] = int(local[1])
    row = info.tls_host
    if info.client_cert is None and row is not None and row.client_auth is not None:  # only where it is used
        cert = client_cert_from_ssl(transport.get_extra_info("ssl_object"))
        if cert is not None:
            changes["client_cert"] = cert
    return replace(info, **changes) if changes else info
