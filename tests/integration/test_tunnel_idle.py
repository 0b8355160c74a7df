"""Passthrough tunnels that go silent are closed; busy ones are not (both relays)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dataplane.runtime import DataPlane, DataPlaneConfig
from examples.backends import TLSEcho
from tests.integration.conftest import client_context, passthrough_snapshot
from tests.pki import CA, Issued

HOST = "direct.example.com"  # the name the tls_backend fixture serves
IDLE = 0.3


@pytest.fixture(params=[True, False], ids=["splice", "protocols"])
async def short_idle(request: pytest.FixtureRequest) -> AsyncIterator[DataPlane]:
    dp = DataPlane(DataPlaneConfig(bind="127.0.0.1", https_port=0, http_port=0, admin_port=0, admin_token="t",
                                   zero_copy=request.param, tunnel_idle_timeout=IDLE))
    await dp.start()
    try:
        yield dp
    finally:
        await dp.stop(drain_timeout=0)


async def _open(dp: DataPlane, echo: TLSEcho, backend_ca: CA) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert dp.apply(passthrough_snapshot(HOST, echo.port)) == []
    reader, writer = await asyncio.open_connection("127.0.0.1", dp.https_port,
                                                   ssl=client_context(backend_ca.cert_pem), server_hostname=HOST)
    writer.write(b"a")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"a"
    return reader, writer


async def test_silent_tunnel_is_closed(short_idle: DataPlane, tls_backend: tuple[TLSEcho, Issued],
                                       backend_ca: CA) -> None:
    reader, writer = await _open(short_idle, tls_backend[0], backend_ca)
    try:
        await asyncio.wait_for(reader.readexactly(1), 4 * IDLE + 5)
    except TimeoutError:  # (an OSError subclass: checked first)
        pytest.fail("the silent tunnel was not closed")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # closed by the proxy, as it should be
    else:
        pytest.fail("the tunnel delivered data nobody sent")
    writer.close()


async def test_busy_tunnel_stays_open(short_idle: DataPlane, tls_backend: tuple[TLSEcho, Issued],
                                      backend_ca: CA) -> None:
    reader, writer = await _open(short_idle, tls_backend[0], backend_ca)
    for _ in range(12):  # 12 x 0.1 s: four idle periods, never a silent one
        await asyncio.sleep(IDLE / 3)
        writer.write(b"b")
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"b"
    writer.close()
