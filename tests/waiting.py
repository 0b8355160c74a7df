"""Waiting on evidence: ``eventually`` polls a condition until it holds, within a bound.

A test waits for what the system under test shows (a metric, a log line, a refused connect), never for
a fixed time: a fixed sleep is too short on a loaded machine (a flaky test) and longer than needed on
an idle one (a slow test). The bound only turns a hang into a failure with a message, so it is generous:
it costs nothing while things work.

Both forms bound themselves by ``time.monotonic``, not by the event loop's clock, so a test that moves
the loop's clock (``tests/virtual_clock.py``) cannot shorten or stretch them.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast, overload

T = TypeVar("T")

TIMEOUT = 10.0  # seconds; a bound on a hang, never a speed target
INTERVAL = 0.01


@overload
async def eventually(check: Callable[[], Awaitable[T]], timeout: float = ..., interval: float = ...,
                     what: str = ...) -> T: ...


@overload
async def eventually(check: Callable[[], T], timeout: float = ..., interval: float = ..., what: str = ...) -> T: ...


async def eventually(check: Callable[[], T | Awaitable[T]], timeout: float = TIMEOUT, interval: float = INTERVAL,
                     what: str = "condition") -> T:
    """Poll ``check`` (a function, or an async one) on the running loop until it gives something truthy,
    and return that."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        result = cast(T, await answer) if inspect.isawaitable(answer) else answer
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {result!r})")
        await asyncio.sleep(interval)


def eventually_sync(check: Callable[[], T], timeout: float = TIMEOUT, interval: float = INTERVAL,
                    what: str = "condition") -> T:
    """``eventually`` for code without an event loop (a subprocess, a thread): the thread sleeps between polls."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {result!r})")
        time.sleep(interval)
