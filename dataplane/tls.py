"""Server-side TLS at the edge: the SNI table, certificate choice, and cached ``SSLContext``s.

A ``TLSTable`` is built once per snapshot and never changes. Contexts are keyed by the *content*
of what goes into them (certificate and key bytes, minimum version, client CA bytes and mode), not
by ids the snapshot asserts, so an apply that does not change a certificate reuses the very same
context object: no key reload, and sessions cached before the apply stay resumable.

Session tickets are off (``OP_NO_TICKET``): a ticket is encrypted with a key that lives as long as
the context (so for the life of the process), and whoever steals that key can decrypt every
recorded session that resumed with it. Resumption instead uses OpenSSL's server-side session cache
(per context; TLS 1.3 tickets then only carry a cache reference), which keeps no long-lived key.
The handshake cost of this is measured in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dataplane import openssl, pem
from dataplane.hosts import HostTable
from dataplane.snapshot import CABundle, Certificate, ClientAuth, Snapshot, TLSHost, TLSVersion, content_id

log = logging.getLogger(__name__)

# ALPN: h2 first where the row allows it (TLSHost.http2), so HTTP/2 clients multiplex; HTTP/1.1 always.
ALPN_H2 = ["h2", "http/1.1"]
ALPN_HTTP11 = ["http/1.1"]
# Mozilla "intermediate": forward secrecy and AEAD only for TLS 1.2 (TLS 1.3 suites are all good).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!SHA1:!SHA256:!SHA384"
FALLBACK_NAME = "Portcullis Fallback Certificate"


def generate_fallback_certificate(days: int = 365) -> Certificate:
    """A self-signed certificate for hosts that name none (as ingress-nginx's fake certificate).

    Made at start and never written to disk; clients will not trust it, which is the point: it
    lets a misconfigured host fail visibly instead of closing connections.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FALLBACK_NAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return Certificate(
        content_id(cert_pem, key_pem), cert_pem, key_pem, (), int(cert.not_valid_after_utc.timestamp())
    )


@dataclass(frozen=True)
class ContextKey:
    certificate: str  # content id of cert + key
    min_version: TLSVersion
    client_ca: str | None = None  # content id of CA + CRL
    client_mode: str | None = None
    verify_depth: int = 1
    ciphers: str = ""
    prefer_server_ciphers: bool = True
    accept_any_client_cert: bool = False
    http2: bool = True  # ALPN offers h2 (two rows differing only here need two contexts)


def accepts_any_client_cert(client_auth: ClientAuth | None) -> bool:
    """Whether the handshake must complete whatever client certificate is sent.

    ``optional_no_ca`` forwards certificates nobody verified (marked unverified); a host with an
    error page lets the handshake finish so the HTTP engine can redirect instead of the client
    seeing a TLS alert. Both then rely on the verify result read after the handshake.
    """
    return client_auth is not None and (client_auth.mode == "optional_no_ca" or bool(client_auth.error_page))


def server_context(
    certificate: Certificate, min_version: TLSVersion = "1.2", client_auth: ClientAuth | None = None,
    client_ca: CABundle | None = None, ciphers: str = "", prefer_server_ciphers: bool = True, http2: bool = True,
) -> ssl.SSLContext:
    """A hardened server context; raises ``ssl.SSLError`` when the PEM or the cipher list does not load."""
    accept_any = client_ca is not None and accepts_any_client_cert(client_auth)
    ctx = openssl.AcceptAnyPeerContext(ssl.PROTOCOL_TLS_SERVER) if accept_any else \
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers or TLS12_CIPHERS)
    ctx.set_alpn_protocols(ALPN_H2 if http2 else ALPN_HTTP11)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE | ssl.OP_NO_TICKET
    if prefer_server_ciphers:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    pem.load_key_pair(ctx, certificate.cert_pem, certificate.key_pem)
    if client_auth is not None and client_ca is not None:
        pem.load_trust(ctx, client_ca.pem, client_ca.crl_pem)
        if isinstance(ctx, openssl.AcceptAnyPeerContext):
            if not openssl.accept_any_peer_certificate(ctx):
                log.warning("cannot accept unverified client certificates here; untrusted ones fail the handshake",
                            extra={"client_mode": client_auth.mode})
        else:
            ctx.verify_mode = ssl.CERT_REQUIRED if client_auth.mode == "required" else ssl.CERT_OPTIONAL
        if not openssl.set_verify_depth(ctx, client_auth.verify_depth):
            log.warning("client certificate verify depth not set; OpenSSL's default (100) applies",
                        extra={"verify_depth": client_auth.verify_depth})
    return ctx


@dataclass(frozen=True)
class TLSTable:
    """The SNI table of one snapshot and the contexts its rows handshake with."""

    hosts: HostTable[TLSHost]  # no default row: no match means the default certificate
    host_contexts: Mapping[str, ssl.SSLContext]  # terminate rows by host
    default_context: ssl.SSLContext
    contexts: Mapping[ContextKey, ssl.SSLContext] = field(default_factory=dict)  # the cache to carry over

    def lookup(self, sni: str | None) -> TLSHost | None:
        """Exact name, then a single-label wildcard (``hosts.HostTable``); None means the default certificate."""
        return self.hosts.lookup(sni)

    def context_for(self, row: TLSHost | None) -> ssl.SSLContext:
        if row is None:
            return self.default_context
        return self.host_contexts.get(row.host, self.default_context)


def build_tls_table(
    snapshot: Snapshot, fallback: Certificate, previous: TLSTable | None = None, offer_h2: bool = True,
) -> tuple[TLSTable | None, list[str]]:
    """Build every context the snapshot needs, reusing ``previous``'s by content; (None, errors) on failure.

    ``offer_h2``: whether this data plane serves HTTP/2 at all; a row then offers h2 unless its ``http2`` is
    False, and the default certificate's context (unknown SNI, no SNI) offers it too."""
    old = previous.contexts if previous is not None else {}
    contexts: dict[ContextKey, ssl.SSLContext] = {}
    errors: list[str] = []
    certs = {c.id: c for c in snapshot.certificates}
    cas = {c.id: c for c in snapshot.ca_bundles}
    default_cert = certs.get(snapshot.default_certificate_id or "", fallback)

    def context(cert: Certificate, min_version: TLSVersion, auth: ClientAuth | None, ciphers: str = "",
                prefer: bool = True, http2: bool = offer_h2) -> ssl.SSLContext | None:
        ca = cas.get(auth.ca_id) if auth is not None else None
        key = ContextKey(
            content_id(cert.cert_pem, cert.key_pem), min_version,
            content_id(ca.pem, ca.crl_pem) if ca is not None else None,
            auth.mode if auth is not None else None,
            auth.verify_depth if auth is not None else 1,
            ciphers, prefer, accepts_any_client_cert(auth), http2,
        )
        found = contexts.get(key) or old.get(key)
        if found is None:
            try:
                found = server_context(cert, min_version, auth, ca, ciphers, prefer, http2)
            except (ssl.SSLError, ValueError, OSError) as exc:
                reasons = pem.check_key_pair(cert.cert_pem, cert.key_pem) or [f"cannot load into OpenSSL ({exc})"]
                errors.extend(f"certificate {cert.id}: {reason}" for reason in reasons)
                return None
        contexts[key] = found
        return found

    default_context = context(default_cert, "1.2", None)
    host_contexts: dict[str, ssl.SSLContext] = {}
    for row in snapshot.tls_hosts:
        if row.mode != "terminate":
            continue
        if row.client_auth is not None and row.client_auth.ca_id not in cas:
            errors.append(f"TLS host {row.host!r}: client CA {row.client_auth.ca_id} is not in the snapshot")
            continue
        ctx = context(certs.get(row.certificate_id or "", default_cert), row.min_version, row.client_auth,
                      row.ciphers, row.prefer_server_ciphers, offer_h2 and row.http2)
        if ctx is not None:
            host_contexts[row.host] = ctx
    if errors or default_context is None:
        return None, errors or ["default certificate does not load"]
    hosts = HostTable((row.host, row) for row in snapshot.tls_hosts)
    return TLSTable(hosts, host_contexts, default_context, contexts), []
