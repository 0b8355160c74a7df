"""TLS termination at the edge: certificate choice by SNI, fallbacks, client certificates, hostile input.

The application protocol here is a small echo that first reports what the edge handed it, so these
tests see the edge's decisions without depending on the HTTP engine.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, cast

import pytest

from dataplane.http.info import ConnectionInfo
from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.snapshot import CABundle, ClientAuth, Snapshot, content_id
from dataplane.tls import FALLBACK_NAME
from tests.integration.conftest import (
    TOKEN,
    certificate,
    client_context,
    common_name,
    raw_connect,
    running_dataplane,
    server_certificate,
    terminate_host,
)
from tests.pki import CA
from tests.unit.test_clienthello import real_client_hello

LOOPS = ("asyncio", "uvloop")  # the server runs on uvloop, whose transports differ in detail

class ReportingEcho(asyncio.Protocol):
    def __init__(self, info: ConnectionInfo) -> None:
        self.info = info

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        a = self.info
        report = {"scheme": a.scheme, "sni": a.sni, "row": a.tls_host.host if a.tls_host else None,
                  "client": a.client_cert.subject_dn if a.client_cert else None,
                  "issuer": a.client_cert.issuer_dn if a.client_cert else None,
                  "client_addr": list(a.client_addr), "server_port": a.server_port, "protocol": a.protocol}
        transport.write(json.dumps(report).encode() + b"\n")

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@pytest.fixture
async def edge() -> AsyncIterator[DataPlane]:
    async with running_dataplane(ReportingEcho, clienthello_timeout=1.0, handshake_timeout=3.0) as dp:
        yield dp


async def open_tls(port: int, name: str | None, ctx: ssl.SSLContext) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, dict[str, object]]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name), 10)
    report = json.loads(await asyncio.wait_for(reader.readline(), 10))
    return reader, writer, report


def snapshot_with_hosts(ca: CA, generation: int = 1) -> tuple[Snapshot, dict[str, str]]:
    """web.example.com (exact), *.apps.example.com (wildcard), a default certificate."""
    exact = certificate(ca.issue("web.example.com"), "web.example.com")
    wild = certificate(ca.issue("*.apps.example.com"), "*.apps.example.com")
    default = certificate(ca.issue("default.example.com"), "default.example.com")
    snap = Snapshot(
        generation=generation,
        default_certificate_id=default.id,
        certificates=(exact, wild, default),
        tls_hosts=(terminate_host("web.example.com", exact), terminate_host("*.apps.example.com", wild)),
    ).canonical()
    return snap, {"exact": "web.example.com", "wild": "*.apps.example.com", "default": "default.example.com"}


async def test_exact_wildcard_default_and_no_sni(edge: DataPlane, ca: CA) -> None:
    snap, _ = snapshot_with_hosts(ca)
    assert edge.apply(snap) == []
    port = edge.https_port
    assert common_name(await server_certificate(port, "web.example.com")) == "web.example.com"
    assert common_name(await server_certificate(port, "a.apps.example.com")) == "*.apps.example.com"
    # a wildcard covers one label only
    assert common_name(await server_certificate(port, "a.b.apps.example.com")) == "default.example.com"
    assert common_name(await server_certificate(port, "apps.example.com")) == "default.example.com"
    assert common_name(await server_certificate(port, "unknown.example.org")) == "default.example.com"
    assert common_name(await server_certificate(port, None)) == "default.example.com"


async def test_verified_handshake_and_what_the_app_is_told(edge: DataPlane, ca: CA) -> None:
    snap, _ = snapshot_with_hosts(ca)
    edge.apply(snap)
    reader, writer, report = await open_tls(edge.https_port, "x.apps.example.com", client_context(ca.cert_pem))
    assert report["sni"] == "x.apps.example.com"
    assert report["row"] == "*.apps.example.com"
    assert report["scheme"] == "https"
    assert report["server_port"] == edge.https_port
    assert report["client_addr"] == list(writer.get_extra_info("sockname")[:2])
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
    writer.write(b"echo me")
    assert await asyncio.wait_for(reader.readexactly(7), 10) == b"echo me"
    writer.close()


async def test_alpn_h2_by_default_and_http11_where_a_host_opts_out(edge: DataPlane, ca: CA) -> None:
    """A terminate row offers h2 then http/1.1 (the app is told "h2"); one with http2 False only http/1.1."""
    snap, _ = snapshot_with_hosts(ca)
    old = certificate(ca.issue("old.example.com"), "old.example.com")
    snap = replace(snap, certificates=(*snap.certificates, old), tls_hosts=(
        *snap.tls_hosts, replace(terminate_host("old.example.com", old), http2=False))).canonical()
    assert edge.apply(snap) == []
    for name, offer, selected, protocol in [
        ("web.example.com", ["h2", "http/1.1"], "h2", "h2"),
        ("web.example.com", ["http/1.1"], "http/1.1", "http/1.1"),
        ("x.apps.example.com", ["h2"], "h2", "h2"),
        ("unknown.example.org", ["h2", "http/1.1"], "h2", "h2"),  # the default certificate offers h2 too
        ("old.example.com", ["h2", "http/1.1"], "http/1.1", "http/1.1"),
    ]:
        ctx = client_context(ca.cert_pem, alpn=offer)
        ctx.check_hostname = name != "unknown.example.org"
        _, writer, report = await open_tls(edge.https_port, name, ctx)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == selected, name
        assert report["protocol"] == protocol, name
        writer.close()


async def test_fallback_certificate_without_default(edge: DataPlane, ca: CA) -> None:
    web = certificate(ca.issue("web.example.com"), "web.example.com")
    snap = Snapshot(generation=1, certificates=(web,), tls_hosts=(
        terminate_host("web.example.com", web), terminate_host("nocert.example.com", None))).canonical()
    assert edge.apply(snap) == []
    assert common_name(await server_certificate(edge.https_port, "other.example.com")) == FALLBACK_NAME
    assert common_name(await server_certificate(edge.https_port, "nocert.example.com")) == FALLBACK_NAME
    assert common_name(await server_certificate(edge.https_port, None)) == FALLBACK_NAME
    with pytest.raises(ssl.SSLCertVerificationError):
        await open_tls(edge.https_port, "other.example.com", client_context(ca.cert_pem))


async def test_before_any_snapshot_the_fallback_certificate_answers(edge: DataPlane) -> None:
    assert not edge.ready
    assert common_name(await server_certificate(edge.https_port, "any.example.com")) == FALLBACK_NAME


async def test_tls13_minimum_per_host(edge: DataPlane, ca: CA) -> None:
    modern = certificate(ca.issue("modern.example.com"), "modern.example.com")
    snap = Snapshot(generation=1, certificates=(modern,),
                    tls_hosts=(terminate_host("modern.example.com", modern, min_version="1.3"),)).canonical()
    edge.apply(snap)
    old_client = client_context(ca.cert_pem)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await open_tls(edge.https_port, "modern.example.com", old_client)
    _, writer, _ = await open_tls(edge.https_port, "modern.example.com", client_context(ca.cert_pem))
    assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
    writer.close()
    text = edge.metrics.render().decode()
    assert 'portcullis_tls_handshakes_total{reason="",result="ok"} 1.0' in text
    failed = [line for line in text.splitlines() if line.startswith("portcullis_tls_handshakes_total{")
              and 'result="failed"' in line]
    assert failed, text


async def test_contexts_refuse_old_protocols(edge: DataPlane, ca: CA) -> None:
    snap, _ = snapshot_with_hosts(ca)
    edge.apply(snap)
    ctx = edge.tls_table.context_for(edge.tls_table.lookup("web.example.com"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_TICKET, "tickets off: the session cache resumes"
    assert all(c["protocol"] == "TLSv1.3" or "ECDHE" in c["name"] or "DHE" in c["name"] for c in ctx.get_ciphers())


def mtls_snapshot(ca: CA, client_ca: CA, mode: str = "required", crl: str = "") -> Snapshot:
    web = certificate(ca.issue("secure.example.com"), "secure.example.com")
    bundle = CABundle(content_id(client_ca.cert_pem, crl), client_ca.cert_pem, crl)
    return Snapshot(generation=1, certificates=(web,), ca_bundles=(bundle,), tls_hosts=(
        terminate_host("secure.example.com", web, ClientAuth(bundle.id, mode)),)).canonical()  # type: ignore[arg-type]


async def test_mtls_required_accepts_a_client_certificate(edge: DataPlane, ca: CA) -> None:
    client_ca = CA("Client CA")
    edge.apply(mtls_snapshot(ca, client_ca))
    client = client_ca.issue(client=True, common_name="alice")
    _, writer, report = await open_tls(edge.https_port, "secure.example.com", client_context(ca.cert_pem, cert=client))
    assert report["client"] == "CN=alice"
    assert report["issuer"] == "CN=Client CA"
    writer.close()


async def test_mtls_required_rejects_a_client_without_certificate(edge: DataPlane, ca: CA) -> None:
    edge.apply(mtls_snapshot(ca, CA("Client CA")))
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, json.JSONDecodeError)):
        await open_tls(edge.https_port, "secure.example.com", client_context(ca.cert_pem))


async def test_mtls_rejects_a_certificate_from_another_ca(edge: DataPlane, ca: CA) -> None:
    edge.apply(mtls_snapshot(ca, CA("Client CA")))
    stranger = CA("Stranger CA").issue(client=True, common_name="mallory")
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, json.JSONDecodeError)):
        await open_tls(edge.https_port, "secure.example.com", client_context(ca.cert_pem, cert=stranger))


async def test_mtls_revoked_certificate_rejected(edge: DataPlane, ca: CA) -> None:
    client_ca = CA("Client CA")
    revoked = client_ca.issue(client=True, common_name="revoked")
    edge.apply(mtls_snapshot(ca, client_ca, crl=client_ca.crl([revoked])))
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, json.JSONDecodeError)):
        await open_tls(edge.https_port, "secure.example.com", client_context(ca.cert_pem, cert=revoked))
    good = client_ca.issue(client=True, common_name="good")
    _, writer, report = await open_tls(edge.https_port, "secure.example.com", client_context(ca.cert_pem, cert=good))
    assert report["client"] == "CN=good"
    writer.close()


async def test_mtls_optional_allows_no_certificate(edge: DataPlane, ca: CA) -> None:
    edge.apply(mtls_snapshot(ca, CA("Client CA"), mode="optional"))
    _, writer, report = await open_tls(edge.https_port, "secure.example.com", client_context(ca.cert_pem))
    assert report["client"] is None
    writer.close()


async def _closed_by_edge(port: int, data: bytes) -> bytes:
    sock = await asyncio.to_thread(raw_connect, port)
    try:
        sock.sendall(data)
        chunks = b""
        for _ in range(20):
            try:
                chunk = await asyncio.to_thread(sock.recv, 4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks += chunk
        return chunks
    finally:
        sock.close()


async def test_garbage_and_plain_http_are_closed_harmlessly(edge: DataPlane, ca: CA) -> None:
    snap, _ = snapshot_with_hosts(ca)
    edge.apply(snap)
    answer = await _closed_by_edge(edge.https_port, b"GET / HTTP/1.1\r\nHost: web.example.com\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert await _closed_by_edge(edge.https_port, b"\x00\x01\x02garbage" * 10) == b""
    assert await _closed_by_edge(edge.https_port, b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") == b""
    text = edge.metrics.render().decode()
    assert 'portcullis_client_hello_total{result="not_tls"} 2.0' in text
    assert 'portcullis_client_hello_total{result="malformed"} 1.0' in text
    # the listener still works
    assert common_name(await server_certificate(edge.https_port, "web.example.com")) == "web.example.com"


async def test_too_large_client_hello_is_refused(edge: DataPlane) -> None:
    huge = b"\x16\x03\x01\x40\x00\x01" + (200000).to_bytes(3, "big") + b"\x00" * 100
    assert await _closed_by_edge(edge.https_port, huge) == b""
    assert 'portcullis_client_hello_total{result="too_large"} 1.0' in edge.metrics.render().decode()


async def test_silent_client_times_out(edge: DataPlane) -> None:
    # half a ClientHello, then silence: the edge gives up after clienthello_timeout (1 s here)
    hello = real_client_hello("web.example.com")
    assert await _closed_by_edge(edge.https_port, hello[: len(hello) // 2]) == b""
    assert 'portcullis_client_hello_total{result="timeout"} 1.0' in edge.metrics.render().decode()


async def test_certificate_rotation_new_handshakes_new_cert_old_connection_keeps_working(
    edge: DataPlane, ca: CA
) -> None:
    first = certificate(ca.issue("rotate.example.com", common_name="first"), "rotate.example.com")
    second = certificate(ca.issue("rotate.example.com", common_name="second"), "rotate.example.com")
    edge.apply(Snapshot(generation=1, certificates=(first,),
                        tls_hosts=(terminate_host("rotate.example.com", first),)).canonical())
    reader, writer, _ = await open_tls(edge.https_port, "rotate.example.com", client_context(ca.cert_pem))
    old_context = edge.tls_table.context_for(edge.tls_table.lookup("rotate.example.com"))
    assert edge.apply(Snapshot(generation=2, certificates=(second,),
                               tls_hosts=(terminate_host("rotate.example.com", second),)).canonical()) == []
    assert edge.tls_table.context_for(edge.tls_table.lookup("rotate.example.com")) is not old_context
    assert common_name(await server_certificate(edge.https_port, "rotate.example.com")) == "second"
    writer.write(b"still here")
    assert await asyncio.wait_for(reader.readexactly(10), 10) == b"still here"
    writer.close()


async def test_unchanged_certificate_reuses_its_context(edge: DataPlane, ca: CA) -> None:
    snap, _ = snapshot_with_hosts(ca)
    edge.apply(snap)
    before = edge.tls_table.context_for(edge.tls_table.lookup("web.example.com"))
    extra = certificate(ca.issue("more.example.com"), "more.example.com")
    bigger = Snapshot(generation=2, default_certificate_id=snap.default_certificate_id,
                      certificates=(*snap.certificates, extra),
                      tls_hosts=(*snap.tls_hosts, terminate_host("more.example.com", extra))).canonical()
    assert edge.apply(bigger) == []
    assert edge.tls_table.context_for(edge.tls_table.lookup("web.example.com")) is before


async def test_invalid_snapshot_keeps_the_old_one(edge: DataPlane, ca: CA) -> None:
    snap, _ = snapshot_with_hosts(ca)
    edge.apply(snap)
    issued = ca.issue("bad.example.com")
    from tests.pki import unrelated_key_pem

    broken = certificate(issued, "bad.example.com")
    broken = type(broken)(broken.id, broken.cert_pem, unrelated_key_pem(), broken.names)
    bad = Snapshot(generation=2, certificates=(broken,),
                   tls_hosts=(terminate_host("bad.example.com", broken),)).canonical()
    errors = edge.apply(bad)
    assert errors and "does not match" in errors[0]
    assert edge.generation == 1
    assert common_name(await server_certificate(edge.https_port, "web.example.com")) == "web.example.com"


async def test_plain_listener_hands_connections_to_the_app(edge: DataPlane) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.http_port)
    report = json.loads(await asyncio.wait_for(reader.readline(), 10))
    assert report["scheme"] == "http" and report["server_port"] == edge.http_port
    writer.close()


def _intermediate(parent_key: Any, parent_name: Any, name: str) -> tuple[Any, Any]:
    """A CA certificate signed by ``parent``: (certificate, key)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(parent_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(parent_key, hashes.SHA256())
    )
    return cert, key


def _chain_client(client_ca: CA, intermediates: int) -> tuple[str, str]:
    """Client leaf issued under ``intermediates`` CA levels below the root: (chain PEM, key PEM)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    parent_key, parent_name = client_ca.key, client_ca.cert.subject
    chain: list[Any] = []
    for level in range(intermediates):
        cert, key = _intermediate(parent_key, parent_name, f"Intermediate {level}")
        chain.insert(0, cert)
        parent_key, parent_name = key, cert.subject
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deep")]))
        .issuer_name(parent_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(parent_key, hashes.SHA256())
    )
    pem_chain = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in [leaf, *chain])
    key_pem = leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()
    return pem_chain, key_pem


async def test_mtls_verify_depth_is_enforced(edge: DataPlane, ca: CA) -> None:
    from dataplane import pem

    client_ca = CA("Depth CA")
    web = certificate(ca.issue("secure.example.com"), "secure.example.com")
    bundle = CABundle(content_id(client_ca.cert_pem), client_ca.cert_pem)

    def snap(depth: int, generation: int) -> Snapshot:
        auth = ClientAuth(bundle.id, "required", verify_depth=depth)
        return Snapshot(generation=generation, certificates=(web,), ca_bundles=(bundle,),
                        tls_hosts=(terminate_host("secure.example.com", web, auth),)).canonical()

    chain, key = _chain_client(client_ca, intermediates=2)
    ctx = client_context(ca.cert_pem)
    pem.load_key_pair(ctx, chain, key)
    assert edge.apply(snap(1, 1)) == []
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, json.JSONDecodeError)):
        await open_tls(edge.https_port, "secure.example.com", ctx)
    assert edge.apply(snap(3, 2)) == []
    _, writer, report = await open_tls(edge.https_port, "secure.example.com", ctx)
    assert report["client"] == "CN=deep"
    writer.close()


async def test_pending_client_hellos_are_capped() -> None:
    from dataplane.edge import EdgeSettings, HTTPSListener, Tracker
    from dataplane.metrics import Metrics

    metrics, tracker = Metrics(), Tracker()
    dp = DataPlane(DataPlaneConfig(https_port=0, http_port=0, admin_port=0, admin_token=TOKEN))
    listener = HTTPSListener(dp._edge_state, metrics, EdgeSettings(clienthello_timeout=5, max_pending=3), tracker)
    port = await listener.start("127.0.0.1", 0)
    socks = [await asyncio.to_thread(raw_connect, port) for _ in range(5)]
    try:
        for _ in range(100):
            if 'result="overload"} 2.0' in metrics.render().decode():
                break
            await asyncio.sleep(0.02)
        assert 'portcullis_client_hello_total{result="overload"} 2.0' in metrics.render().decode()
        assert len(tracker.pending) == 3
    finally:
        for sock in socks:
            sock.close()
        listener.stop_accepting()
        tracker.close_pending()
