"""Applying in a worker thread: same outcome as ``apply``, and the loop keeps serving meanwhile."""

from __future__ import annotations

import asyncio

from dataplane.runtime import DataPlane
from dataplane.snapshot import Snapshot
from tests.integration.conftest import certificate, terminate_host
from tests.pki import CA


def many_hosts(ca: CA, n: int, generation: int) -> Snapshot:
    certs = [certificate(ca.issue(f"h{i}.example.com"), f"h{i}.example.com") for i in range(n)]
    return Snapshot(generation=generation, certificates=tuple(certs),
                    tls_hosts=tuple(terminate_host(f"h{i}.example.com", c) for i, c in enumerate(certs))).canonical()


async def test_apply_async_applies_while_the_loop_keeps_running(dataplane: DataPlane, ca: CA) -> None:
    snapshot = many_hosts(ca, 300, 1)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        assert await dataplane.apply_async(snapshot) == []
    finally:
        task.cancel()
    assert dataplane.checksum == snapshot.checksum and dataplane.ready
    assert ticks > 1, "the loop ran other tasks while the snapshot was being built"


async def test_apply_async_refuses_invalid_and_keeps_the_old_snapshot(dataplane: DataPlane, ca: CA) -> None:
    good = many_hosts(ca, 2, 1)
    assert await dataplane.apply_async(good) == []
    bad = Snapshot(generation=2, tls_hosts=(terminate_host("x.example.com", certificate(
        ca.issue("x.example.com"), "x.example.com")),)).canonical()
    errors = await dataplane.apply_async(bad)
    assert errors and "not in the snapshot" in errors[0]
    assert dataplane.checksum == good.checksum


async def test_concurrent_applies_are_serialised(dataplane: DataPlane, ca: CA) -> None:
    first, second = many_hosts(ca, 50, 1), many_hosts(ca, 3, 2)
    results = await asyncio.gather(dataplane.apply_async(first), dataplane.apply_async(second))
    assert results == [[], []]
    assert dataplane.checksum == second.checksum and dataplane.generation == 2
