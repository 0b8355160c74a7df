"""Ingress status writes, off the render path: batched, a bounded number at a time, only when different.

Written one by one inside the reconcile loop, 2,000 status patches held the next render back for
seconds (and each patch's watch event asked for another render). Here the reconciler only says
which Ingresses should carry which addresses; a background task writes them, at most
``concurrency`` at once (each write is a blocking client call in a worker thread, and the thread
pool is shared with the publisher's encoding), and the reconciler goes straight back to rendering.

Serving comes first: with a ``ready`` gate (the publisher's "every data plane serves the latest
snapshot", bounded in time), a write waits while a newer snapshot is on its way, so the status storm
after a bulk create does not compete for the interpreter with the render and push that serve it (and
an Ingress's status announces an address once that address serves it).

Between a successful write and the watch event that brings it into the index, the index still shows
the old status; ``due`` skips such an Ingress for ``settle`` seconds instead of writing it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from controller.problems import ObjectRef

log = logging.getLogger("portcullis.status")

Addresses = tuple[str, ...]


@dataclass(frozen=True)
class Written:
    addresses: Addresses
    at: float  # monotonic seconds


def due(wanted: Mapping[ObjectRef, Addresses], written: Mapping[ObjectRef, Written], in_flight: set[ObjectRef],
        now: float, settle: float) -> list[ObjectRef]:
    """Which of the wanted writes to start now (sorted, so the order is stable)."""
    out = []
    for ref, addresses in wanted.items():
        if ref in in_flight:
            continue
        done = written.get(ref)
        if done is not None and done.addresses == addresses and now - done.at < settle:
            continue
        out.append(ref)
    return sorted(out)


class StatusWriter:
    def __init__(self, write: Callable[[ObjectRef, Addresses], Awaitable[bool]], concurrency: int = 4,
                 settle: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 ready: Callable[[], Awaitable[object]] | None = None) -> None:
        self.write = write
        self.ready = ready
        self.settle = settle
        self.clock = clock
        self.wanted: dict[ObjectRef, Addresses] = {}
        self.written: dict[ObjectRef, Written] = {}
        self.in_flight: set[ObjectRef] = set()
        self.writes = 0  # attempts, for tests and benchmarks
        self._limit = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    def submit(self, updates: Mapping[ObjectRef, Addresses]) -> None:
        """The complete set of Ingresses whose indexed status differs from what they should carry.

        Replaces the previous set: an Ingress left out now agrees (or is gone), so it is dropped from
        the queue and the ledger alike. Never blocks.
        """
        self.wanted = dict(updates)
        self.written = {ref: w for ref, w in self.written.items() if ref in self.wanted}
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="status writer")
        self._wake.set()

    async def idle(self) -> None:
        """Until nothing is in flight or about to start (tests and benchmarks); a failed write waits for the
        next ``submit``."""
        for _ in range(10_000):
            await asyncio.sleep(0.01)
            if not self.in_flight and not self._wake.is_set():
                return

    async def close(self) -> None:
        for task in [self._runner, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for ref in due(self.wanted, self.written, self.in_flight, self.clock(), self.settle):
                self.in_flight.add(ref)
                task = asyncio.create_task(self._one(ref, self.wanted[ref]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _one(self, ref: ObjectRef, addresses: Addresses) -> None:
        try:
            async with self._limit:
                if self.ready is not None:
                    await self.ready()
                if self.wanted.get(ref) != addresses:  # superseded or no longer needed while queued
                    return
                self.writes += 1
                ok = await self.write(ref, addresses)
            if ok:
                self.written[ref] = Written(addresses, self.clock())
        except Exception:  # a failed write is retried on the next reconcile, never fatal to the writer
            log.exception("status write failed", extra={"object": str(ref)})
        finally:
            self.in_flight.discard(ref)
            if self.wanted.get(ref) != addresses:
                self._wake.set()  # the wanted value changed meanwhile: write the new one
