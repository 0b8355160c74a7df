"""A connection's lifetime in the HTTP engine: per-request routing across applies, TLS-row changes,
body limits, HTTP/1.0 without Host, client-certificate policy. Real sockets, real clients.
(Its timeouts, on a virtual clock: ``test_http_timeouts.py``.)"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from dataplane.http.connection import ConnectionInfo, HTTPProtocol
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import TableRef, build_http_table
from dataplane.metrics import Metrics
from dataplane.runtime import DataPlane
from dataplane.snapshot import (
    CABundle,
    ClientAuth,
    Endpoint,
    Pool,
    Route,
    Snapshot,
    TLSHost,
    VirtualHost,
    content_id,
)
from examples.backends import HTTPEcho
from tests.integration.conftest import certificate, client_context
from tests.integration.http_fixtures import (
    LOCAL,
    Client,
    eof_or_reset,
    pool,
    proxy,
    snapshot,
    start_echo,
)
from tests.pki import CA

LOOPS = ("asyncio", "uvloop")


def app_snapshot(*endpoints: Endpoint, generation: int = 1, hosts: tuple[str, ...] = ("app.test",)) -> Snapshot:
    return Snapshot(
        generation=generation, pools=(Pool("p", tuple(endpoints)),),
        virtual_hosts=tuple(VirtualHost(h, (Route("/", "Prefix", "p"),)) for h in hosts),
    ).canonical()


# --- per-request routing through the real data plane ----------------------------------------


async def test_held_connection_follows_endpoint_change_and_route_delete(dataplane: DataPlane) -> None:
    first, second = await start_echo(), await start_echo()
    try:
        assert dataplane.apply(app_snapshot(first.endpoint)) == []
        client = await Client.open(dataplane.http_port)
        r = await client.get("/one")
        assert r.status == 200 and r.json()["backend_port"] == first.port
        # rolling update: the old pod goes away, a new one takes over; the held connection follows
        assert dataplane.apply(app_snapshot(second.endpoint, generation=2)) == []
        first.close()
        for i in range(20):
            r = await client.get(f"/n/{i}")
            assert r.status == 200 and r.json()["backend_port"] == second.port, (i, r.status)
        # the Ingress is deleted: the same connection gets what a new one gets
        assert dataplane.apply(app_snapshot(second.endpoint, generation=3, hosts=("other.test",))) == []
        r = await client.get("/gone")
        assert r.status == 404
        fresh = await Client.open(dataplane.http_port)
        assert (await fresh.get("/gone")).status == 404
        await client.close()
        await fresh.close()
    finally:
        first.close()
        second.close()


# --- TLS-row changes on a live connection ----------------------------------------------------


@pytest.fixture
async def tls_rig(ca: CA) -> AsyncIterator[tuple[int, TableRef, Callable[..., Snapshot], HTTPEcho, ssl.SSLContext]]:
    """An HTTPS listener whose protocol reads a ``TableRef`` the test repoints (no apply-time sweep),
    so the request-boundary rules are what is under test."""
    backend = HTTPEcho("web")
    await backend.start()
    leaf = ca.issue("app.example.com")
    cert = certificate(leaf, "app.example.com")
    client_ca = CABundle(content_id(ca.cert_pem), ca.cert_pem)

    def snap(row: TLSHost | None = None, vhosts: bool = True, second_cert: bool = False) -> Snapshot:
        certs = (cert, certificate(ca.issue("app.example.com", common_name="second"), "app.example.com")) \
            if second_cert else (cert,)
        pools = (Pool("p", (Endpoint(LOCAL, backend.port),)),)
        return Snapshot(
            certificates=certs, ca_bundles=(client_ca,), pools=pools,
            tls_hosts=(row,) if row is not None else (),
            virtual_hosts=(VirtualHost("app.example.com", (Route("/", "Prefix", "p"),), tls=True),) if vhosts else (),
        ).canonical()

    row = TLSHost("app.example.com", "terminate", cert.id)
    metrics = Metrics()
    ref = TableRef(build_http_table(snap(row), None, metrics, HTTPSettings()))
    info = ConnectionInfo("https", sni="app.example.com", tls_host=row)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as pem_dir:  # the files are read here, once: nothing left behind
        cert_file, key_file = Path(pem_dir) / "cert.pem", Path(pem_dir) / "key.pem"
        cert_file.write_text(leaf.cert_pem)
        key_file.write_text(leaf.key_pem)
        server_ctx.load_cert_chain(cert_file, key_file)
    server = await asyncio.get_running_loop().create_server(
        lambda: HTTPProtocol(ref, info, metrics), LOCAL, 0, ssl=server_ctx)
    try:
        yield server.sockets[0].getsockname()[1], ref, snap, backend, client_context(ca.cert_pem)
    finally:
        server.close()
        await backend.close()


@pytest.mark.parametrize(
    ("change", "status", "served"),
    [
        ("client_auth", 421, False),
        ("passthrough", 421, False),
        ("row_gone", 421, False),  # the vhost still exists: misdirected
        ("host_gone", 404, False),  # row and vhost deleted
        ("certificate", 200, True),  # served, then closed
        ("min_version", 200, True),
        ("ciphers", 200, True),
        ("source_only", 200, None),  # nothing the session depends on: keep-alive goes on
    ],
)
async def test_tls_row_change_rules(
    tls_rig: tuple[int, TableRef, Callable[..., Snapshot], HTTPEcho, ssl.SSLContext],
    change: str, status: int, served: bool | None,
) -> None:
    port, ref, snap, backend, ctx = tls_rig
    client = await Client.open(port, ctx, "app.example.com")
    r = await client.get("/before", host="app.example.com")
    assert r.status == 200 and r.header("connection") is None
    old = ref.table.tls_row("app.example.com")
    assert old is not None
    rows = {
        "client_auth": TLSHost(old.host, "terminate", old.certificate_id,
                               client_auth=ClientAuth(content_id(_ca_pem(snap)), "required")),
        "passthrough": TLSHost(old.host, "passthrough", pool_id="p"),
        "row_gone": None,
        "host_gone": None,
        "min_version": TLSHost(old.host, "terminate", old.certificate_id, min_version="1.3"),
        "ciphers": TLSHost(old.host, "terminate", old.certificate_id, ciphers="ECDHE-RSA-AES128-GCM-SHA256"),
        "source_only": TLSHost(old.host, "terminate", old.certificate_id, source="demo/other"),
    }
    if change == "certificate":
        second = snap(old, second_cert=True)
        new_id = next(c.id for c in second.certificates if c.id != old.certificate_id)
        new_snap = snap(TLSHost(old.host, "terminate", new_id), second_cert=True)
    else:
        new_snap = snap(rows[change], vhosts=change != "host_gone")
    ref.table = build_http_table(new_snap, ref.table, ref.table.metrics, HTTPSettings())
    before = backend.requests
    r = await client.get("/after", host="app.example.com")
    assert r.status == status
    if served is None:
        assert r.header("connection") is None
        assert (await client.get("/again", host="app.example.com")).status == 200
    else:
        assert r.header("connection") == "close"
        assert await eof_or_reset(client.reader)
        assert backend.requests == before + (1 if served else 0)  # refused requests never reach it
    await client.close()


def _ca_pem(snap: Callable[..., Snapshot]) -> str:
    return snap().ca_bundles[0].pem


async def test_idle_connection_closed_at_apply_when_client_auth_added(
    dataplane: DataPlane, ca: CA
) -> None:
    backend = HTTPEcho("web")
    await backend.start()
    try:
        cert = certificate(ca.issue("app.example.com"), "app.example.com")
        bundle = CABundle(content_id(ca.cert_pem), ca.cert_pem)

        def snap(gen: int, auth: ClientAuth | None) -> Snapshot:
            return Snapshot(
                generation=gen, certificates=(cert,), ca_bundles=(bundle,),
                pools=(Pool("p", (Endpoint(LOCAL, backend.port),)),),
                tls_hosts=(TLSHost("app.example.com", "terminate", cert.id, client_auth=auth),),
                virtual_hosts=(VirtualHost("app.example.com", (Route("/", "Prefix", "p"),), tls=True),),
            ).canonical()

        assert dataplane.apply(snap(1, None)) == []
        client = await Client.open(dataplane.https_port, client_context(ca.cert_pem), "app.example.com")
        assert (await client.get("/", host="app.example.com")).status == 200
        assert dataplane.apply(snap(2, ClientAuth(bundle.id, "required"))) == []
        # it would be refused at its next request anyway: closed now, before the client sends one
        assert await eof_or_reset(client.reader, timeout=5)
        await client.close()
    finally:
        await backend.close()


# --- body limits ---------------------------------------------------------------------------------


def limited_snapshot(backend_endpoint: Endpoint, limit: int) -> Snapshot:
    return snapshot([VirtualHost("app.test", (Route("/", "Prefix", "p", max_body_size=limit),))],
                    [pool("p", backend_endpoint)])


async def test_body_limit_content_length_never_reaches_backend() -> None:
    backend = await start_echo()
    async with proxy(limited_snapshot(backend.endpoint, 100)) as px:
        client = await Client.open(px.port)
        await client.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 101\r\n\r\n")
        r = await client.response()
        assert r.status == 413 and r.header("connection") == "close"
        assert backend.connections == 0 and backend.requests == []
        ok = await Client.open(px.port)
        await ok.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n" + b"y" * 100)
        assert (await ok.response()).json()["body_len"] == 100
        await ok.close()
        await client.close()
    # -1: the data plane's default
    async with proxy(limited_snapshot(backend.endpoint, -1), settings=HTTPSettings(max_body_size=10)) as px:
        client = await Client.open(px.port)
        await client.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 11\r\n\r\n")
        assert (await client.response()).status == 413
        await client.close()
    backend.close()


async def test_body_limit_chunked_counted_as_it_streams() -> None:
    backend = await start_echo()
    async with proxy(limited_snapshot(backend.endpoint, 100)) as px:
        client = await Client.open(px.port)
        await client.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        await client.send(b"40\r\n" + b"a" * 64 + b"\r\n")
        await client.send(b"40\r\n" + b"b" * 64 + b"\r\n0\r\n\r\n")
        r = await client.response()
        assert r.status == 413 and r.header("connection") == "close"
        assert all(rec["body_len"] <= 100 for rec in backend.requests)
        ok = await Client.open(px.port)
        await ok.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"64\r\n" + b"c" * 100 + b"\r\n0\r\n\r\n")
        assert (await ok.response()).json()["body_len"] == 100
        await ok.close()
        await client.close()
    backend.close()


# --- through the edge: HTTP/1.0 without Host, client-certificate policy -------------------------


@pytest.fixture
async def edge_app(dataplane: DataPlane) -> AsyncIterator[tuple[DataPlane, HTTPEcho]]:
    backend = HTTPEcho("web")
    await backend.start()
    try:
        yield dataplane, backend
    finally:
        await backend.close()


def edge_snapshot(ca: CA, port: int, auth: ClientAuth | None = None) -> Snapshot:
    cert = certificate(ca.issue("app.example.com", "other.example.com"), "app.example.com", "other.example.com")
    bundle = CABundle(content_id(ca.cert_pem), ca.cert_pem)
    return Snapshot(
        generation=1, certificates=(cert,), ca_bundles=(bundle,), pools=(Pool("p", (Endpoint(LOCAL, port),)),),
        tls_hosts=(TLSHost("app.example.com", "terminate", cert.id, client_auth=auth),
                   TLSHost("other.example.com", "terminate", cert.id)),
        virtual_hosts=tuple(VirtualHost(h, (Route("/", "Prefix", "p"),), tls=True)
                            for h in ("app.example.com", "other.example.com")),
    ).canonical()


async def raw_https(port: int, ctx: ssl.SSLContext, request: bytes, sni: str = "app.example.com") -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(LOCAL, port, ssl=ctx, server_hostname=sni), 10)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_http10_without_host_routes_to_sni_host(edge_app: tuple[DataPlane, HTTPEcho], ca: CA) -> None:
    dp, backend = edge_app
    assert dp.apply(edge_snapshot(ca, backend.port)) == []
    ctx = client_context(ca.cert_pem)
    out = await raw_https(dp.https_port, ctx, b"GET /ten HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    assert backend_host(out) == "app.example.com"
    out = await raw_https(dp.https_port, ctx, b"GET /ten HTTP/1.0\r\nHost: other.example.com\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 421 ")


def backend_host(raw: bytes) -> str:
    import json

    echo = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    return str({k.lower(): v for k, v in echo["headers"]}["host"])


CertCase = Callable[[str], Awaitable[bytes]]


@pytest.mark.parametrize(
    ("auth", "client_cn", "expected"),
    [
        (ClientAuth("", "required", match_cn="CN=alice"), "alice", b"200"),
        (ClientAuth("", "required", match_cn="CN=alice"), "bob", b"403"),
        (ClientAuth("", "optional", match_cn="CN=alice"), None, b"403"),
        (ClientAuth("", "optional", match_cn="CN=alice", error_page="https://login.example/cert"), "bob", b"302"),
        (ClientAuth("", "required", error_page="https://login.example/cert"), None, b"302"),
        (ClientAuth("", "optional", error_page="https://login.example/cert"), None, b"200"),
    ],
)
async def test_client_certificate_policy(
    edge_app: tuple[DataPlane, HTTPEcho], ca: CA, auth: ClientAuth, client_cn: str | None, expected: bytes
) -> None:
    dp, backend = edge_app
    from dataclasses import replace

    auth = replace(auth, ca_id=content_id(ca.cert_pem))
    assert dp.apply(edge_snapshot(ca, backend.port, auth)) == []
    cert = ca.issue(common_name=client_cn, client=True) if client_cn else None
    out = await raw_https(dp.https_port, client_context(ca.cert_pem, cert=cert),
                          b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n")
    assert out.split(b" ", 2)[1] == expected, out[:200]
    if expected == b"302":
        assert b"\r\nLocation: https://login.example/cert\r\n" in out
    if expected != b"200":
        assert backend.requests == 0  # refused before routing


@pytest.mark.parametrize(("signer", "verify"), [("edge", b"SUCCESS"), ("stranger", b"FAILED:"), (None, b"NONE")])
async def test_optional_no_ca_verify_header(
    edge_app: tuple[DataPlane, HTTPEcho], ca: CA, signer: str | None, verify: bytes
) -> None:
    dp, backend = edge_app
    auth = ClientAuth(content_id(ca.cert_pem), "optional_no_ca", forward_headers=True)
    assert dp.apply(edge_snapshot(ca, backend.port, auth)) == []
    issuer = ca if signer == "edge" else CA("Stranger CA")
    cert = issuer.issue(common_name="carol", client=True) if signer else None
    out = await raw_https(dp.https_port, client_context(ca.cert_pem, cert=cert),
                          b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n"
                          b"ssl-client-verify: SUCCESS\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    import json

    echo = json.loads(out.split(b"\r\n\r\n", 1)[1])
    values = [v for k, v in echo["headers"] if k.lower() == "ssl-client-verify"]
    assert len(values) == 1 and values[0].encode().startswith(verify), values
