"""Passthrough cannot tell a TLS client why it got nothing; the data plane's log and metrics do."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.snapshot import Pool, Snapshot, TLSHost
from tests.integration.conftest import TOKEN, raw_connect
from tests.unit.test_clienthello import real_client_hello

HOST = "direct.example.com"
LOOPS = ("asyncio", "uvloop")


@pytest.fixture(params=["splice", "protocols"])
async def dataplane(request: pytest.FixtureRequest) -> AsyncIterator[DataPlane]:
    dp = DataPlane(DataPlaneConfig(bind="127.0.0.1", https_port=0, http_port=0, admin_port=0, admin_token=TOKEN,
                                   drain_timeout=0.5, clienthello_timeout=3.0, zero_copy=request.param == "splice"))
    await dp.start()
    try:
        yield dp
    finally:
        await dp.stop(drain_timeout=0)


async def test_passthrough_to_a_missing_service_closes_and_logs_why(
        dataplane: DataPlane, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dataplane.passthrough")
    pool = Pool("shop/tls-app:443", unavailable="Service shop/tls-app not found")
    snapshot = Snapshot(pools=(pool,), tls_hosts=(TLSHost(HOST, "passthrough", pool_id=pool.id),)).canonical()
    assert dataplane.apply(snapshot) == []
    sock = await asyncio.to_thread(raw_connect, dataplane.https_port)
    try:
        sock.sendall(real_client_hello(HOST))
        assert await asyncio.to_thread(sock.recv, 100) == b""
    finally:
        sock.close()
    assert 'portcullis_passthrough_connections_total{result="no_endpoint"} 1.0' in dataplane.metrics.render().decode()
    assert any(r.getMessage() == "passthrough connection closed: Service shop/tls-app not found"
               for r in caplog.records), [r.getMessage() for r in caplog.records]
