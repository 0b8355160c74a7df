"""Idle timeout for passthrough tunnels (what HAProxy calls ``timeout tunnel``).

A relay marks itself active whenever it moves bytes (an attribute store, nothing per byte); the
watch wakes once per period and closes the tunnel when a whole period went by without activity.
So a tunnel is closed after between one and two periods of silence: no timer is re-armed per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class IdleWatch:
    def __init__(self, loop: asyncio.AbstractEventLoop, period: float, on_idle: Callable[[], None]) -> None:
        self.loop = loop
        self.period = period
        self.on_idle = on_idle
        self.active = False
        self._handle: asyncio.TimerHandle | None = loop.call_later(period, self._check) if period > 0 else None

    def _check(self) -> None:
        if self.active:
            self.active = False
            self._handle = self.loop.call_later(self.period, self._check)
        else:
            self._handle = None
            self.on_idle()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
