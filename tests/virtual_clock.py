"""A virtual clock for timer tests: the running asyncio loop's ``time()``, moved forward by the test.

The HTTP engine's timers (``HTTPProtocol``, the HTTP/1.1 and HTTP/2 upstream connections) read only
``loop.time()`` and schedule with ``loop.call_at``/``call_later``, so a test that moves the loop's clock
sees a 30 s timeout fire in no real time, and can show that it had not fired a moment before, without
the engine taking a clock parameter.

The clock is real time plus an offset the test adds to, not a frozen one: sockets, callbacks and every
other timer keep running, and a test's bounds on its waits still expire if something hangs. A timeout
therefore must be long against the test's real duration (tens of seconds) so that only ``advance``
brings it due. Only asyncio's own loop can be moved: uvloop keeps its clock and timers inside libuv.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class VirtualClock:
    """The clock of one asyncio loop while installed (``virtual_clock()``): real time plus ``offset``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        if not isinstance(loop, asyncio.BaseEventLoop):
            raise TypeError(f"a virtual clock needs asyncio's own event loop, not {type(loop).__name__}")
        self._loop = loop
        self._real = loop.time
        self.offset = 0.0

    def time(self) -> float:
        return self._real() + self.offset

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward; returns once every timer due by the new time has run.

        What those timers started (a close, a write, a task) may need more loop turns: wait for its evidence.
        """
        self.offset += seconds
        probe = self._loop.create_future()
        # The loop runs every timer due by now in one turn, the probe among them; the task waiting on the
        # probe resumes only in the turn after, so the whole batch has run by then.
        self._loop.call_at(self.time(), probe.set_result, None)
        await probe


@contextmanager
def virtual_clock() -> Iterator[VirtualClock]:
    """Make the running loop's clock virtual for the block (called inside an async test)."""
    loop = asyncio.get_running_loop()
    clock = VirtualClock(loop)
    loop.time = clock.time  # type: ignore[method-assign]  # the loop and its timers read the clock from here
    try:
        yield clock
    finally:
        del loop.time  # the class's own clock again
