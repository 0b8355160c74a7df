"""Push bodies are built once per distinct (base, snapshot, generation) and shared by every data-plane worker:
a fleet of data planes holding the same base gets one encoding per change, not one per pod."""

from __future__ import annotations

import asyncio
import json

import pytest

from controller.manifests import load_paths
from controller.model import Inputs
from controller.publisher import PushBodies, PushConfig, encoder
from controller.render import RenderConfig, render
from dataplane.push_body import apply_delta, decode_body, make_delta
from dataplane.snapshot import Snapshot


def rendered() -> Snapshot:
    inputs, _ = Inputs.from_objects(load_paths(["deploy/examples"]))
    snapshot, _ = render(inputs, RenderConfig())
    return snapshot


class CountingEncoder:
    def __init__(self) -> None:
        self.calls = 0
        self.encode = encoder(PushConfig())

    def __call__(self, text: str) -> bytes:
        self.calls += 1
        return self.encode(text)


def decoded(body: bytes) -> object:
    return json.loads(decode_body(body, "gzip", 50_000_000))


async def test_workers_asking_at_once_share_one_build_of_each_body() -> None:
    counting = CountingEncoder()
    bodies = PushBodies(counting)
    base = Snapshot(generation=1).canonical()  # an empty data plane's snapshot
    snapshot = rendered().with_generation(7)
    deltas = await asyncio.gather(*(bodies.get(base, snapshot) for _ in range(10)))
    fulls = await asyncio.gather(*(bodies.get(None, snapshot) for _ in range(10)))
    assert counting.calls == 2  # one delta, one full snapshot, for ten workers each
    assert len(set(deltas)) == 1 and len(set(fulls)) == 1
    assert decoded(deltas[0]) == json.loads(json.dumps(make_delta(base, snapshot)))
    assert apply_delta(base, base.checksum, decoded(deltas[0])).canonical().checksum == snapshot.checksum
    assert decoded(fulls[0]) == json.loads(snapshot.to_json())


async def test_another_generation_or_base_is_its_own_body() -> None:
    counting = CountingEncoder()
    bodies = PushBodies(counting)
    snapshot = rendered()
    one = await bodies.get(None, snapshot.with_generation(7))
    other = await bodies.get(None, snapshot.with_generation(8))
    assert one != other and counting.calls == 2  # a data plane ahead of the stamp gets its own generation
    await bodies.get(Snapshot(generation=1).canonical(), snapshot.with_generation(7))
    assert counting.calls == 3


async def test_a_newer_snapshot_drops_the_older_bodies() -> None:
    counting = CountingEncoder()
    bodies = PushBodies(counting)
    old, new = Snapshot(generation=1).canonical(), rendered().with_generation(2)
    await bodies.get(None, old)
    await bodies.get(None, new)
    await bodies.get(None, old)  # no longer kept: built again
    assert counting.calls == 3


async def test_a_cancelled_worker_does_not_cancel_the_shared_build() -> None:
    bodies = PushBodies(encoder(PushConfig()))
    snapshot = rendered().with_generation(3)
    first = asyncio.ensure_future(bodies.get(None, snapshot))
    await asyncio.sleep(0)  # the build has started in its thread
    first.cancel()
    assert decoded(await bodies.get(None, snapshot)) == json.loads(snapshot.to_json())


async def test_a_failed_build_is_not_kept() -> None:
    calls = 0

    def flaky(text: str) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first build fails")
        return text.encode()

    bodies = PushBodies(flaky)
    snapshot = rendered().with_generation(4)
    with pytest.raises(ValueError, match="first build fails"):
        await bodies.get(None, snapshot)
    assert json.loads(await bodies.get(None, snapshot)) == json.loads(snapshot.to_json())
    assert calls == 2
