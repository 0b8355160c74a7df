"""Pausing the cyclic garbage collector around large builds (snapshot parsing and applying)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from dataplane.snapshot import Snapshot


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold the cyclic GC off while building a large structure, then freeze what exists.

    Snapshot parsing and building allocate hundreds of thousands of objects; left alone, they
    trigger full collections that hold the GIL for hundreds of milliseconds even from a worker
    thread. Frozen objects are still freed by reference counting when a later snapshot replaces
    them; the collector just stops re-scanning them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def parse_snapshot(body: bytes) -> Snapshot:
    with gc_paused():
        return Snapshot.from_json(body)
