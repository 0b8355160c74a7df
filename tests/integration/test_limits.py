"""Limits at the edge (issue 14), over real sockets: each triggers at its configured value while other clients
(a second source address, 127.0.0.2: loopback is a /8) keep being served; whitelists exempt; /readyz answers
while max connections is hit."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.snapshot import Endpoint, Route, Snapshot, TLSHost, VirtualHost, validate
from examples.backends import TLSEcho, server_context
from tests.integration.conftest import TOKEN, certificate, client_context
from tests.integration.http_fixtures import EchoBackend, read_response
from tests.pki import CA

LOOPS = ("asyncio", "uvloop")
OTHER = "127.0.0.2"


@contextlib.asynccontextmanager
async def plane(**config: Any) -> AsyncIterator[DataPlane]:
    dp = DataPlane(DataPlaneConfig(bind="127.0.0.1", https_port=0, http_port=0, admin_port=0, admin_token=TOKEN,
                                   drain_timeout=0.5, clienthello_timeout=3.0, **config))
    await dp.start()
    try:
        yield dp
    finally:
        await dp.stop(drain_timeout=0)


def app_snapshot(ca: CA, backend_port: int, route: Route | None = None, generation: int = 1,
                 **host_limits: Any) -> Snapshot:
    cert = certificate(ca.issue("app.test", "other.test", "pass.test"), "app.test", "other.test")
    pool = ("demo/app:80", (Endpoint("127.0.0.1", backend_port),))
    route = route or Route("/", "Prefix", pool[0], source="Ingress demo/app")
    hosts = (TLSHost("app.test", "terminate", cert.id, source="Ingress demo/app", **host_limits),
             TLSHost("other.test", "terminate", cert.id, source="Ingress demo/other"))
    from dataplane.snapshot import Pool

    snap = Snapshot(generation=generation, certificates=(cert,), pools=(Pool(*pool),), tls_hosts=hosts,
                    virtual_hosts=(VirtualHost("app.test", (route,), tls=True),
                                   VirtualHost("other.test", (replace(route, source="Ingress demo/other"),),
                                               tls=True))).canonical()
    assert not validate(snap), validate(snap)
    return snap


async def http_get(port: int, host: str = "app.test", source: str = "127.0.0.1",
                   ssl_ctx: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], asyncio.StreamWriter]:
    """One request on a new connection, left open: (status, headers, writer)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0), ssl=ssl_ctx, server_hostname=host if ssl_ctx else None), 5)
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    resp = await read_response(reader)
    writer._portcullis_reader = reader  # type: ignore[attr-defined]
    return resp.status, {k.lower(): v for k, v in resp.headers}, writer


async def refused(port: int, source: str = "127.0.0.1") -> bool:
    """True when the data plane closes a new connection without answering a byte."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)),
                                                5)
    except ConnectionError:
        return True
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(100), 5)
        except ConnectionError:
            return True
        return data == b""
    finally:
        writer.close()


def metric(dp: DataPlane, name: str, **labels: str) -> float:
    return float(dp.metrics.registry.get_sample_value(name, labels) or 0.0)


async def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()


async def test_max_connections_refuses_at_accept_and_readyz_still_answers(ca: CA, backend: EchoBackend) -> None:
    async with plane(max_connections=3) as dp:
        assert not dp.apply(app_snapshot(ca, backend.port))
        held = [(await http_get(dp.http_port))[2] for _ in range(3)]
        try:
            assert await refused(dp.http_port)  # plain HTTP: closed at once
            assert await refused(dp.https_port)  # HTTPS: before any TLS work (not one byte answered)
            assert metric(dp, "portcullis_connections_refused_total", reason="max_connections") == 2
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://127.0.0.1:{dp.admin_port}/readyz") as r:
                assert r.status == 200  # the admin port is not a client listener
        finally:
            await close_all(held[:1])
        for _ in range(100):  # a freed slot is taken again (the tracker notices the close within PRUNE_EVERY)
            if not await refused(dp.http_port):
                break
            await asyncio.sleep(0.03)
        else:
            pytest.fail("a freed connection slot was never reused")
        await close_all(held[1:])


async def test_per_ip_connections_refuse_only_that_client(ca: CA, backend: EchoBackend) -> None:
    async with plane(max_connections_per_ip=2) as dp:
        assert not dp.apply(app_snapshot(ca, backend.port))
        held = [(await http_get(dp.http_port))[2] for _ in range(2)]
        ctx = client_context(ca.cert_pem)
        try:
            assert await refused(dp.http_port)
            with pytest.raises((ConnectionError, ssl.SSLError, OSError)):  # HTTPS too, before the handshake
                await http_get(dp.https_port, ssl_ctx=ctx)
            status, _, w = await http_get(dp.http_port, source=OTHER)  # another client is served
            held.append(w)
            assert status == 200
            status, _, w = await http_get(dp.https_port, source=OTHER, ssl_ctx=ctx)
            held.append(w)
            assert status == 200
            assert metric(dp, "portcullis_connections_refused_total", reason="per_ip") == 2
        finally:
            await close_all(held)


async def test_limit_rps_answers_429_with_retry_after_after_the_burst(ca: CA, backend: EchoBackend) -> None:
    route = Route("/", "Prefix", "demo/app:80", source="Ingress demo/app", limit_rps=1)
    async with plane() as dp:
        assert not dp.apply(app_snapshot(ca, backend.port, route=route))
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.http_port)
        statuses = []
        retry = None
        for _ in range(6):  # burst = 5 x 1 rps
            writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            resp = await read_response(reader)
            statuses.append(resp.status)
            retry = resp.header("retry-after")
        writer.close()
        assert statuses == [200] * 5 + [429]
        assert retry == "1"
        status, _, w = await http_get(dp.http_port, source=OTHER)  # another client keeps its own bucket
        await close_all([w])
        assert status == 200
        # the bucket survives a snapshot apply
        assert not dp.apply(app_snapshot(ca, backend.port, route=route, generation=2))
        status, headers, w = await http_get(dp.http_port)
        await close_all([w])
        assert status == 429 and headers["retry-after"] == "1"
        assert metric(dp, "portcullis_http_requests_limited_total", host="app.test") == 2


async def test_limit_whitelist_exempts(ca: CA, backend: EchoBackend) -> None:
    route = Route("/", "Prefix", "demo/app:80", source="Ingress demo/app", limit_rps=1,
                  limit_whitelist=(OTHER + "/32",))
    async with plane() as dp:
        assert not dp.apply(app_snapshot(ca, backend.port, route=route))
        for source, expect in ((OTHER, [200] * 8), ("127.0.0.1", [200] * 5 + [429] * 3)):
            reader, writer = await asyncio.open_connection("127.0.0.1", dp.http_port, local_addr=(source, 0))
            got = []
            for _ in range(8):
                writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
                got.append((await read_response(reader)).status)
            writer.close()
            assert got == expect, source


async def test_limit_connections_after_sni_counts_per_ingress(ca: CA, backend: EchoBackend) -> None:
    async with plane() as dp:
        assert not dp.apply(app_snapshot(ca, backend.port, limit_connections=1, limit_whitelist=("127.0.0.3",)))
        ctx = client_context(ca.cert_pem)
        held = []
        try:
            status, _, w = await http_get(dp.https_port, ssl_ctx=ctx)
            held.append(w)
            assert status == 200
            with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
                await http_get(dp.https_port, ssl_ctx=ctx)
            for source, name in ((OTHER, "app.test"), ("127.0.0.1", "other.test"), ("127.0.0.3", "app.test")):
                status, _, w = await http_get(dp.https_port, host=name, source=source, ssl_ctx=ctx)
                held.append(w)
                assert status == 200, (source, name)
            assert metric(dp, "portcullis_connections_refused_total", reason="ingress_connections") == 1
        finally:
            await close_all(held)


async def test_handshake_rate_refuses_terminated_not_passthrough(ca: CA, backend: EchoBackend) -> None:
    issued = ca.issue("pass.test")
    echo = TLSEcho(server_context(issued.cert_pem, issued.key_pem))
    await echo.start()
    async with plane(max_handshakes_per_second=0.2) as dp:  # burst 1, then one every 5 s
        snap = app_snapshot(ca, backend.port)
        from dataplane.snapshot import Pool

        pt = Pool("demo/pass:443", (Endpoint("127.0.0.1", echo.port),))
        snap = replace(snap, pools=(*snap.pools, pt),
                       tls_hosts=(*snap.tls_hosts, TLSHost("pass.test", "passthrough", pool_id=pt.id))).canonical()
        assert not dp.apply(snap)
        ctx = client_context(ca.cert_pem)
        status, _, w = await http_get(dp.https_port, ssl_ctx=ctx)
        await close_all([w])
        assert status == 200
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            await http_get(dp.https_port, host="other.test", ssl_ctx=ctx, source=OTHER)
        for _ in range(3):  # passthrough costs the data plane no handshake: not limited
            reader, writer = await asyncio.open_connection("127.0.0.1", dp.https_port, ssl=ctx,
                                                           server_hostname="pass.test")
            writer.write(b"ping\n")
            assert await asyncio.wait_for(reader.readexactly(5), 5) == b"ping\n"
            await close_all([writer])
        assert metric(dp, "portcullis_connections_refused_total", reason="handshake_rate") == 1
    await echo.close()
