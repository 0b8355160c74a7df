"""Status writes off the render path: bounded concurrency, only when different, no rewrite before the index
catches up, superseded writes dropped; and the reconciler's loop around them (status-only events render nothing,
debounce stretches to the render's own duration in a stream of changes)."""

from __future__ import annotations

import asyncio

from controller.problems import ObjectRef
from controller.status import StatusWriter, Written, due

A = ("10.0.0.1",)
B = ("10.0.0.2",)


def ref(i: int) -> ObjectRef:
    return ObjectRef("Ingress", "shop", f"i{i}")


def test_due_skips_in_flight_and_recently_written() -> None:
    wanted = {ref(1): A, ref(2): A, ref(3): A, ref(4): B}
    written = {ref(2): Written(A, 100.0), ref(3): Written(A, 50.0), ref(4): Written(A, 100.0)}
    # 1: never written; 2: written 5 s ago, the index has not caught up yet; 3: written long ago and the index
    # still differs (someone overwrote it): write again; 4: written with other addresses: write the new ones.
    assert due(wanted, written, {ref(1)}, now=105.0, settle=30.0) == [ref(3), ref(4)]
    assert due(wanted, written, set(), now=105.0, settle=30.0) == [ref(1), ref(3), ref(4)]


class FakeApi:
    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.calls: list[tuple[ObjectRef, tuple[str, ...]]] = []
        self.gate = asyncio.Event()

    async def write(self, r: ObjectRef, addresses: tuple[str, ...]) -> bool:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.gate.wait()
            self.calls.append((r, addresses))
            return True
        finally:
            self.active -= 1


async def test_writes_are_concurrent_bounded_and_do_not_block_the_caller() -> None:
    api = FakeApi()
    writer = StatusWriter(api.write, concurrency=3)
    writer.submit({ref(i): A for i in range(50)})  # returns at once: the writes wait on the gate
    for _ in range(100):
        if api.active == 3:
            break
        await asyncio.sleep(0)
    assert api.active == 3 and api.calls == []
    api.gate.set()
    await writer.idle()
    assert sorted(r for r, _ in api.calls) == sorted(ref(i) for i in range(50))
    assert api.peak == 3 and writer.writes == 50
    # The next reconcile still sees the old status in the index (watch events in flight): nothing rewritten.
    writer.submit({ref(i): A for i in range(50)})
    await writer.idle()
    assert writer.writes == 50
    # The index caught up for all but one, whose addresses change: exactly one write.
    writer.submit({ref(7): B})
    await writer.idle()
    assert writer.writes == 51 and api.calls[-1] == (ref(7), B)
    await writer.close()


async def test_superseded_writes_are_dropped() -> None:
    api = FakeApi()
    writer = StatusWriter(api.write, concurrency=1)
    writer.submit({ref(1): A, ref(2): A})
    await asyncio.sleep(0)
    writer.submit({ref(1): A})  # ref(2) now agrees in the index before its turn came: never written
    api.gate.set()
    await writer.idle()
    assert api.calls == [(ref(1), A)]
    await writer.close()


async def test_a_failed_write_is_retried_on_the_next_submit() -> None:
    api = FakeApi()
    api.gate.set()
    results = iter([False, True])

    async def flaky(r: ObjectRef, addresses: tuple[str, ...]) -> bool:
        await api.write(r, addresses)
        return next(results)

    writer = StatusWriter(flaky)
    writer.submit({ref(1): A})
    await writer.idle()
    assert api.calls == [(ref(1), A)] and ref(1) not in writer.written
    writer.submit({ref(1): A})
    await writer.idle()
    assert api.calls == [(ref(1), A)] * 2 and writer.written[ref(1)].addresses == A
    await writer.close()


async def test_status_only_ingress_events_do_not_render_again() -> None:
    from dataclasses import replace

    from controller.model import Ingress, project
    from controller.reconciler import LoopConfig, Reconciler
    from controller.render import RenderConfig
    from tests.unit import objects as k

    reconciler = Reconciler(LoopConfig(RenderConfig(), ("portcullis", "dp")), lambda: None,  # type: ignore[arg-type,return-value]
                            None, None, lambda: True)  # type: ignore[arg-type]
    view = project(k.ingress("web", "a.example.com"))
    assert isinstance(view, Ingress)
    key = ("shop", "web")

    def event(v: Ingress | None) -> bool:
        reconciler._render_wanted = False
        reconciler.dirty.clear()
        reconciler.ingress_event(key, v)
        assert reconciler.dirty.is_set()  # every event is looked at
        return reconciler._render_wanted

    assert event(view)  # first sight: render
    assert not event(replace(view, status_addresses=A))  # our own status write coming back: status pass only
    assert not event(replace(view, status_addresses=B))  # someone overwrote it: still a status pass, which rewrites
    assert event(replace(view, annotations={"portcullis.io/hsts": "off"}))  # what the renderer reads: render
    assert event(None)  # deleted: render
    assert event(view)  # back again: render


async def test_writes_wait_for_the_ready_gate() -> None:
    api = FakeApi()
    api.gate.set()
    serving = asyncio.Event()
    writer = StatusWriter(api.write, ready=serving.wait)
    writer.submit({ref(1): A, ref(2): A})
    for _ in range(20):
        await asyncio.sleep(0)
    assert api.calls == []  # a newer snapshot is still on its way to the data planes
    serving.set()
    await writer.idle()
    assert sorted(api.calls) == [(ref(1), A), (ref(2), A)]
    await writer.close()


async def test_debounce_in_a_stream_waits_as_long_as_the_last_render_took() -> None:
    from controller.reconciler import LoopConfig, Reconciler
    from controller.render import RenderConfig

    reconciler = Reconciler(LoopConfig(RenderConfig(), ("portcullis", "dp"), quiet=0.05, max_delay=0.1),
                            lambda: None, None, None, lambda: True)  # type: ignore[arg-type,return-value]
    loop = asyncio.get_running_loop()

    async def stream() -> None:
        for _ in range(200):  # a change every 10 ms, never 50 ms of quiet
            reconciler.mark_dirty()
            await asyncio.sleep(0.01)

    async def debounce_seconds() -> float:
        feeder = asyncio.create_task(stream())
        started = loop.time()
        await reconciler._debounce()
        feeder.cancel()
        return loop.time() - started

    assert 0.09 <= await debounce_seconds() < 0.3  # renders are quick: max_delay caps the wait
    reconciler.last_render_seconds = 0.6
    assert 0.59 <= await debounce_seconds() < 1.0  # renders take 0.6 s: at most one in 0.6 s of stream
    started = loop.time()
    reconciler.mark_dirty()
    await reconciler._debounce()  # no stream: quiet ends it, however long renders take
    assert loop.time() - started < 0.3
