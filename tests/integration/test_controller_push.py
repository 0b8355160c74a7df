"""The controller's push channel against a real data plane's admin API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging

import pytest

from controller.manifests import load_paths
from controller.model import Inputs
from controller.publisher import Publisher, PushConfig, next_generation
from controller.reconciler import LoopConfig, Reconciler
from controller.render import RenderConfig, render
from dataplane.runtime import DataPlane
from dataplane.snapshot import Snapshot
from tests.integration.conftest import TOKEN
from tests.waiting import eventually


def examples() -> tuple[Inputs, Snapshot]:
    inputs, _ = Inputs.from_objects(load_paths(["deploy/examples"]))
    snapshot, _ = render(inputs, RenderConfig())
    return inputs, snapshot


async def test_publisher_pushes_and_repairs_drift(dataplane: DataPlane) -> None:
    _, snapshot = examples()
    config = PushConfig(port=dataplane.admin_port, token=TOKEN, resync=0.2)
    async with Publisher(config) as publisher:
        publisher.update(["127.0.0.1"], snapshot)
        await eventually(lambda: dataplane.checksum == snapshot.checksum)
        assert dataplane.ready and dataplane.generation > 1_000_000_000_000  # wall-clock milliseconds
        await eventually(lambda: publisher.in_sync() == {"127.0.0.1": True})

        # someone else pushes a different snapshot (or the pod restarted empty): resync repairs it
        assert dataplane.apply(Snapshot(generation=dataplane.generation + 1).canonical()) == []
        assert dataplane.checksum != snapshot.checksum
        await eventually(lambda: dataplane.checksum == snapshot.checksum)


async def test_publisher_with_wrong_token_never_changes_the_data_plane(
        dataplane: DataPlane, caplog: pytest.LogCaptureFixture) -> None:
    _, snapshot = examples()

    def refusals() -> int:  # evidence the push reached the admin API and was answered, not just time passing
        return sum(1 for r in caplog.records
                   if r.getMessage() == "push failed" and "401" in str(getattr(r, "error", "")))

    caplog.set_level(logging.WARNING, logger="controller.publisher")
    async with Publisher(PushConfig(port=dataplane.admin_port, token="wrong", resync=0.1)) as publisher:
        publisher.update(["127.0.0.1"], snapshot)
        await eventually(lambda: refusals() >= 1)
        assert dataplane.checksum is None and not dataplane.ready
        assert publisher.in_sync() == {"127.0.0.1": False}


async def test_publisher_refuses_plain_http_to_non_loopback() -> None:
    _, snapshot = examples()
    async with Publisher(PushConfig(port=1, token=TOKEN)) as publisher:
        publisher.update(["10.1.2.3"], snapshot)
        assert publisher.workers == {}


async def test_reconciler_debounces_a_burst_into_one_render_and_publishes(dataplane: DataPlane) -> None:
    _, snapshot = examples()
    with_dataplane = Inputs.from_objects([*load_paths(["deploy/examples"]), {
        "kind": "EndpointSlice", "metadata": {"name": "dp", "namespace": "portcullis",
                                              "labels": {"kubernetes.io/service-name": "dp-admin"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"]}], "ports": [{"name": "admin",
                                                                                         "port": 9901}]}])[0]
    config = LoopConfig(render=RenderConfig(), dataplane_service=("portcullis", "dp-admin"), startup_grace=0.1)
    async with Publisher(PushConfig(port=dataplane.admin_port, token=TOKEN, resync=0.2)) as publisher:
        reconciler = Reconciler(config, lambda: with_dataplane, publisher, None, lambda: True)
        task = asyncio.create_task(reconciler.run())
        try:
            reconciler.mark_indexed()
            for _ in range(20):
                reconciler.mark_dirty()
                await asyncio.sleep(0.01)
            await eventually(lambda: dataplane.checksum == snapshot.checksum)
            assert reconciler.renders == 1
            assert reconciler.last_problems == ()
        finally:
            task.cancel()


async def test_a_replica_that_is_not_leading_fills_only_empty_data_planes(dataplane: DataPlane) -> None:
    """Issue 11 item 3: with no leader (the apiserver unreachable), a restarted, empty data plane still gets the
    snapshot a replica holds; a data plane that serves anything is never overwritten by a non-leader."""
    _, snapshot = examples()
    leading = False
    config = PushConfig(port=dataplane.admin_port, token=TOKEN, resync=0.1)
    async with Publisher(config, lambda: leading) as publisher:
        publisher.update(["127.0.0.1"], snapshot)
        await eventually(lambda: dataplane.checksum == snapshot.checksum)  # empty: filled

        other = Snapshot(generation=dataplane.generation + 1).canonical()
        assert dataplane.apply(other) == []
        worker = publisher.workers["127.0.0.1"]
        await eventually(lambda: worker.confirmed == other.checksum)  # a resync saw the drift...
        for _ in range(3):  # ...and that one and the next ones ended (each clears ``wake`` as it starts the next)
            worker.wake.set()
            await eventually(lambda: not worker.wake.is_set())
        assert dataplane.checksum == other.checksum  # a non-leader leaves a data plane with a snapshot alone

        leading = True  # leadership regained: the leader repairs drift as usual
        await eventually(lambda: dataplane.checksum == snapshot.checksum)


async def test_losing_leadership_keeps_the_push_workers_and_the_snapshot(dataplane: DataPlane) -> None:
    inputs = Inputs.from_objects([*load_paths(["deploy/examples"]), {
        "kind": "EndpointSlice", "metadata": {"name": "dp", "namespace": "portcullis",
                                              "labels": {"kubernetes.io/service-name": "dp-admin"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"]}], "ports": [{"name": "admin",
                                                                                         "port": 9901}]}])[0]
    leading = True
    config = LoopConfig(render=RenderConfig(), dataplane_service=("portcullis", "dp-admin"), startup_grace=0.1)
    async with Publisher(PushConfig(port=dataplane.admin_port, token=TOKEN, resync=0.1),
                         lambda: leading) as publisher:
        reconciler = Reconciler(config, lambda: inputs, publisher, None, lambda: leading)
        await reconciler.reconcile()
        held = publisher.snapshot
        assert held is not None
        await eventually(lambda: dataplane.checksum == held.checksum)
        leading = False
        await reconciler.reconcile()
        assert list(publisher.workers) == ["127.0.0.1"] and publisher.snapshot is held


def test_generations_only_grow() -> None:
    assert next_generation(5, 3) == 6
    assert next_generation(5, 10) == 10
