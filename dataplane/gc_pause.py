"""Pausing the cyclic garbage collector around large builds (snapshot parsing and applying)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from dataplane.snapshot import Snapshot


class FrozenBudget:
    """When a build should also collect what earlier builds froze.

    Frozen objects are freed by reference counting, but a frozen reference cycle never is: a connection open
    across an apply that closes later (its protocol, transport and a stored exception's traceback form cycles,
    and it pins the table it last read) stays in memory for good. So when the frozen count has grown by a
    quarter since the last full collection (CPython's own rule for its oldest generation), the next build
    unfreezes and collects everything first: that garbage is bounded by a quarter of the heap, at the collector's
    usual amortised cost, and never during a build. One per data plane; builds are serialised by the caller.
    """

    def __init__(self) -> None:
        self.baseline = 0  # frozen objects right after the last full collection (and the freeze that followed)
        self.full_collections = 0

    def full_due(self, frozen: int) -> bool:
        return frozen > self.baseline + self.baseline // 4


@contextlib.contextmanager
def gc_paused(budget: FrozenBudget | None = None) -> Iterator[None]:
    """Hold the cyclic GC off while building a large structure, then freeze what exists.

    Snapshot parsing and building allocate hundreds of thousands of objects; left alone, they
    trigger full collections that hold the GIL for hundreds of milliseconds even from a worker
    thread. Frozen objects are still freed by reference counting when a later snapshot replaces
    them; the collector just stops re-scanning them. A frozen cycle is never collected, so the cyclic
    garbage waiting for the collector goes first (cheap: only objects allocated since the previous
    freeze are scanned), and with a ``budget`` the frozen objects too when it says so.
    """
    full = budget is not None and budget.full_due(gc.get_freeze_count())
    if full:
        gc.unfreeze()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if budget is not None and full:
            budget.baseline = gc.get_freeze_count()
            budget.full_collections += 1
        if was_enabled:
            gc.enable()


def parse_snapshot(body: bytes) -> Snapshot:
    with gc_paused():
        return Snapshot.from_json(body)
