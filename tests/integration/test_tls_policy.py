"""TLS policy with real handshakes: per-host ciphers and server preference, ``optional_no_ca`` and error-page
hosts (untrusted certificates complete the handshake and are reported unverified), session tickets off with
resumption from the server-side cache, and the backend side (versions, ciphers, verify depth) against real TLS
servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from dataplane import pem
from dataplane.http.info import ConnectionInfo
from dataplane.http.upstream import TLSContextCache, client_context
from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.snapshot import CABundle, ClientAuth, Snapshot, TLSHost, UpstreamTLS, content_id
from tests.integration.conftest import TOKEN, certificate, running_dataplane
from tests.integration.conftest import client_context as edge_client
from tests.pki import CA, Issued

LOOPS = ("asyncio", "uvloop")
HOST = "secure.example.com"
AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"


class ReportingEcho(asyncio.Protocol):
    """Reports what the edge decided about the client certificate, then echoes."""

    def __init__(self, info: ConnectionInfo) -> None:
        self.info = info

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        cert = self.info.client_cert
        report = {"client": cert.subject_dn if cert else None, "verified": cert.verified if cert else None,
                  "error": cert.error if cert else None}
        self.transport.write(json.dumps(report).encode() + b"\n")

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@pytest.fixture
async def edge() -> AsyncIterator[DataPlane]:
    async with running_dataplane(ReportingEcho, clienthello_timeout=1.0, handshake_timeout=3.0) as dp:
        yield dp


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    server_ca, client_ca, stranger = CA("Server CA"), CA("Client CA"), CA("Stranger CA")
    revoked = client_ca.issue(client=True, common_name="revoked")
    return {"server_ca": server_ca, "client_ca": client_ca, "web": server_ca.issue(HOST),
            "alice": client_ca.issue(client=True, common_name="alice"),
            "mallory": stranger.issue(client=True, common_name="mallory"),
            "revoked": revoked, "crl": client_ca.crl([revoked])}


def host_snapshot(pki: dict[str, Any], **row: Any) -> Snapshot:
    web = certificate(pki["web"], HOST)
    auth = row.pop("client_auth", None)
    bundles: tuple[CABundle, ...] = ()
    if auth is not None:
        crl = pki["crl"]
        bundle = CABundle(content_id(pki["client_ca"].cert_pem, crl), pki["client_ca"].cert_pem, crl)
        bundles = (bundle,)
        auth = ClientAuth(bundle.id, **auth)
    return Snapshot(generation=1, certificates=(web,), ca_bundles=bundles, tls_hosts=(
        TLSHost(HOST, "terminate", web.id, client_auth=auth, **row),)).canonical()


async def report(port: int, ctx: ssl.SSLContext) -> tuple[dict[str, Any], str]:
    """Handshake with SNI ``HOST``; the edge's report about the client certificate and the negotiated cipher."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=HOST),
                                            10)
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
        cipher = writer.get_extra_info("ssl_object").cipher()[0]
        return json.loads(line), cipher
    finally:
        writer.close()


def tls12_client(pki: dict[str, Any], ciphers: str, cert: Issued | None = None) -> ssl.SSLContext:
    ctx = edge_client(pki["server_ca"].cert_pem, cert=cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    return ctx


# --- per-host ciphers -------------------------------------------------------------------------------


async def test_host_cipher_list_is_enforced(edge: DataPlane, pki: dict[str, Any]) -> None:
    assert edge.apply(host_snapshot(pki, ciphers=AES256)) == []
    _, cipher = await report(edge.https_port, tls12_client(pki, AES256))
    assert cipher == AES256
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await report(edge.https_port, tls12_client(pki, AES128))
    # TLS 1.3 suites are not governed by the TLS 1.2 list
    _, cipher = await report(edge.https_port, edge_client(pki["server_ca"].cert_pem))
    assert cipher.startswith("TLS_")


def test_openssl_s_client_with_an_excluded_cipher_fails(pki: dict[str, Any]) -> None:
    openssl_bin = shutil.which("openssl")
    assert openssl_bin, "openssl CLI is a test dependency"

    async def scenario() -> tuple[int, int]:
        dp = DataPlane(DataPlaneConfig(bind="127.0.0.1", https_port=0, http_port=0, admin_port=0,
                                       admin_token=TOKEN), app=ReportingEcho)
        await dp.start()
        try:
            assert dp.apply(host_snapshot(pki, ciphers=AES256)) == []

            async def s_client(cipher: str) -> int:
                proc = await asyncio.create_subprocess_exec(
                    openssl_bin, "s_client", "-connect", f"127.0.0.1:{dp.https_port}", "-servername", HOST,
                    "-tls1_2", "-cipher", cipher, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                return await asyncio.wait_for(proc.wait(), 20)

            return await s_client(AES128), await s_client(AES256)
        finally:
            await dp.stop(drain_timeout=0)

    excluded, allowed = asyncio.run(scenario())
    assert excluded != 0 and allowed == 0


@pytest.mark.parametrize(("prefer", "expected"), [(True, AES256), (False, AES128)])
async def test_server_cipher_preference(edge: DataPlane, pki: dict[str, Any], prefer: bool, expected: str) -> None:
    assert edge.apply(host_snapshot(pki, ciphers=f"{AES256}:{AES128}", prefer_server_ciphers=prefer)) == []
    _, cipher = await report(edge.https_port, tls12_client(pki, f"{AES128}:{AES256}"))  # client prefers AES128
    assert cipher == expected


# --- optional_no_ca and error pages -------------------------------------------------------------------


@pytest.mark.parametrize("auth", [{"mode": "optional_no_ca"}, {"mode": "required", "error_page": "https://e.test/"}])
async def test_untrusted_client_certificate_handshakes_and_is_reported_unverified(
        edge: DataPlane, pki: dict[str, Any], auth: dict[str, str]) -> None:
    assert edge.apply(host_snapshot(pki, client_auth=dict(auth))) == []
    port, trust = edge.https_port, pki["server_ca"].cert_pem
    seen, _ = await report(port, edge_client(trust, cert=pki["mallory"]))
    assert seen["client"] == "CN=mallory" and seen["verified"] is False and seen["error"]
    seen, _ = await report(port, edge_client(trust, cert=pki["revoked"]))
    assert seen["client"] == "CN=revoked" and seen["verified"] is False and "revoked" in seen["error"]
    seen, _ = await report(port, edge_client(trust, cert=pki["alice"]))
    assert seen == {"client": "CN=alice", "verified": True, "error": ""}
    seen, _ = await report(port, edge_client(trust))
    assert seen["client"] is None


async def test_plain_optional_still_refuses_an_untrusted_certificate(edge: DataPlane, pki: dict[str, Any]) -> None:
    assert edge.apply(host_snapshot(pki, client_auth={"mode": "optional"})) == []
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, json.JSONDecodeError)):
        await report(edge.https_port, edge_client(pki["server_ca"].cert_pem, cert=pki["mallory"]))


# --- session tickets off, session cache on ------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_no_session_tickets_but_sessions_resume_from_the_cache(edge: DataPlane, pki: dict[str, Any],
                                                                     version: ssl.TLSVersion) -> None:
    assert edge.apply(host_snapshot(pki)) == []
    port = edge.https_port
    ctx = edge_client(pki["server_ca"].cert_pem)
    ctx.maximum_version = version

    def connect(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=HOST, session=session) as tls:
            tls.recv(4096)  # the report line; TLS 1.3 session messages arrive with it
            tls.sendall(b"x")
            tls.recv(1)
            return tls.session, bool(tls.session_reused)

    first, reused = await asyncio.to_thread(connect, None)
    assert first is not None and not reused
    if version == ssl.TLSVersion.TLSv1_2:
        assert not first.has_ticket, "TLS 1.2: no ticket, the session id names a server-side cache entry"
    _, reused = await asyncio.to_thread(connect, first)
    assert reused


# --- backend TLS: versions, ciphers, verify depth ---------------------------------------------------------


def _intermediate(parent: CA, name: str) -> CA:
    """A CA whose certificate ``parent`` signed (tests.pki only makes roots)."""
    child = CA(name)
    now = dt.datetime.now(dt.UTC)
    child.cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(parent.cert.subject)
        .public_key(child.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(parent.key, hashes.SHA256())
    )
    child.cert_pem = child.cert.public_bytes(serialization.Encoding.PEM).decode()
    return child


@contextmanager
def tls_server(cert_pem: str, key_pem: str, max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
               ciphers: str = "") -> Iterator[int]:
    """A real TLS server on 127.0.0.1 that completes handshakes (one per connection) until closed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = max_version
    if ciphers:
        ctx.set_ciphers(ciphers)
    pem.load_key_pair(ctx, cert_pem, key_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def backend_handshake(port: int, tls: UpstreamTLS, ca: CABundle) -> tuple[str, str]:
    """(version, cipher) the upstream client context negotiates with the backend at ``port``."""
    ctx = TLSContextCache().get(tls, {ca.id: ca}, {})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=tls.server_name) as conn:
        conn.recv(2)
        version, cipher = conn.version(), conn.cipher()
        assert version is not None and cipher is not None
        return version, cipher[0]


@pytest.fixture(scope="module")
def backend_pki() -> dict[str, Any]:
    root = CA("Backend Root")
    mid1 = _intermediate(root, "Backend Intermediate 1")
    mid2 = _intermediate(mid1, "Backend Intermediate 2")
    direct = root.issue("direct.svc")
    deep = mid2.issue("deep.svc")
    bundle = CABundle(content_id(root.cert_pem, ""), root.cert_pem)
    return {"direct": direct, "deep": deep, "deep_chain": deep.cert_pem + mid2.cert_pem + mid1.cert_pem,
            "bundle": bundle}


def test_backend_versions_are_honoured(backend_pki: dict[str, Any]) -> None:
    direct, bundle = backend_pki["direct"], backend_pki["bundle"]
    with tls_server(direct.cert_pem, direct.key_pem) as port:
        assert backend_handshake(port, UpstreamTLS("direct.svc", bundle.id), bundle)[0] == "TLSv1.3"
        only12 = UpstreamTLS("direct.svc", bundle.id, min_version="1.2", max_version="1.2")
        assert backend_handshake(port, only12, bundle)[0] == "TLSv1.2"
    with tls_server(direct.cert_pem, direct.key_pem, max_version=ssl.TLSVersion.TLSv1_2) as port, \
            pytest.raises(ssl.SSLError):
        backend_handshake(port, UpstreamTLS("direct.svc", bundle.id, min_version="1.3"), bundle)


def test_backend_ciphers_are_honoured(backend_pki: dict[str, Any]) -> None:
    direct, bundle = backend_pki["direct"], backend_pki["bundle"]
    with tls_server(direct.cert_pem, direct.key_pem, max_version=ssl.TLSVersion.TLSv1_2, ciphers=AES256) as port:
        tls = UpstreamTLS("direct.svc", bundle.id, max_version="1.2", ciphers=AES256)
        assert backend_handshake(port, tls, bundle) == ("TLSv1.2", AES256)
        with pytest.raises(ssl.SSLError):
            backend_handshake(port, UpstreamTLS("direct.svc", bundle.id, max_version="1.2", ciphers=AES128), bundle)


def test_backend_verify_depth_is_honoured(backend_pki: dict[str, Any]) -> None:
    deep, bundle = backend_pki["deep"], backend_pki["bundle"]
    with tls_server(backend_pki["deep_chain"], deep.key_pem) as port:
        assert backend_handshake(port, UpstreamTLS("deep.svc", bundle.id), bundle)[0]  # OpenSSL default: 100
        assert backend_handshake(port, UpstreamTLS("deep.svc", bundle.id, verify_depth=2), bundle)[0]
        with pytest.raises(ssl.SSLCertVerificationError):
            backend_handshake(port, UpstreamTLS("deep.svc", bundle.id, verify_depth=1), bundle)


def test_backend_context_cache_key_covers_the_new_settings(backend_pki: dict[str, Any]) -> None:
    bundle = backend_pki["bundle"]
    cache = TLSContextCache()
    base = UpstreamTLS("direct.svc", bundle.id)
    contexts = {id(cache.get(t, {bundle.id: bundle}, {})) for t in (
        base, UpstreamTLS("direct.svc", bundle.id, max_version="1.2"),
        UpstreamTLS("direct.svc", bundle.id, ciphers=AES256), UpstreamTLS("direct.svc", bundle.id, verify_depth=3))}
    assert len(contexts) == 4
    assert cache.get(base, {bundle.id: bundle}, {}) is cache.get(UpstreamTLS("direct.svc", bundle.id),
                                                                  {bundle.id: bundle}, {})
    assert client_context(UpstreamTLS("x", max_version="1.2"), None, None).maximum_version == ssl.TLSVersion.TLSv1_2
