"""Endpoint choice for one upstream pool: load-balancing policy plus passive health.

There are no active health checks: a failed connect takes the endpoint out for a while (exponential
backoff), and the first successful connect brings it back. The object is shared by every
connection that uses the pool, and carried into the next routing table when the pool is unchanged,
so a snapshot push does not forget that an endpoint is down. The clock is passed in so tests need
no sleeping.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection

from dataplane.snapshot import Endpoint, Pool

BASE_BACKOFF = 1.0
MAX_BACKOFF = 30.0


class _Health:
    __slots__ = ("active", "down_until", "failures")

    def __init__(self) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.active = 0


class UpstreamPool:
    def __init__(
        self,
        spec: Pool,
        previous: UpstreamPool | None = None,
        clock: Callable[[], float] = time.monotonic,
        base_backoff: float = BASE_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.spec = spec
        self._clock = clock
        self._base = base_backoff
        self._max = max_backoff
        self._endpoints = spec.endpoints
        self._health: dict[Endpoint, _Health] = {ep: _Health() for ep in spec.endpoints}
        self._next = 0
        if previous is not None:  # endpoints that stay keep their down marks and counters
            for ep, health in previous._health.items():
                if ep in self._health:
                    self._health[ep] = health
            self._next = previous._next

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    @property
    def unavailable(self) -> str:
        """What a request gets told (503) when ``pick`` finds nothing: the renderer's reason when the
        pool has no endpoints (Service missing, none ready), else that every endpoint is down."""
        if self._endpoints:
            return "no endpoint up for " + self.spec.id.partition("~")[0]
        return self.spec.unavailable or "no ready endpoint"

    def is_up(self, ep: Endpoint) -> bool:
        health = self._health.get(ep)
        return health is not None and health.down_until <= self._clock()

    def active(self, ep: Endpoint) -> int:
        health = self._health.get(ep)
        return health.active if health else 0

    def pick(self, client_ip: str, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        """The endpoint for the next connection, or None when every endpoint is down or excluded."""
        eps = self._endpoints
        if not eps:
            return None
        now = self._clock()
        policy = self.spec.load_balance
        if policy == "client-ip-hash":
            return self._pick_hash(client_ip, exclude, now)
        n = len(eps)
        start = self._next % n
        if policy == "least-conn":
            best: Endpoint | None = None
            best_active = 0
            for i in range(n):
                ep = eps[(start + i) % n]
                health = self._health[ep]
                if health.down_until > now or ep in exclude:
                    continue
                if best is None or health.active < best_active:
                    best, best_active = ep, health.active
            self._next = start + 1
            return best
        for i in range(n):
            ep = eps[(start + i) % n]
            if self._health[ep].down_until <= now and ep not in exclude:
                self._next = start + i + 1
                return ep
        return None

    def _pick_hash(self, client_ip: str, exclude: Collection[Endpoint], now: float) -> Endpoint | None:
        """Rendezvous hashing: the same client IP gets the same endpoint, and an endpoint going away
        only moves the clients that were on it. A stable hash (not ``hash()``, which is salted per
        process) so every worker and replica agrees."""
        best: Endpoint | None = None
        best_score = -1
        key = client_ip.encode()
        for ep in self._endpoints:
            if self._health[ep].down_until > now or ep in exclude:
                continue
            digest = hashlib.blake2b(key + b"|" + f"{ep.address}:{ep.port}".encode(), digest_size=8).digest()
            score = int.from_bytes(digest, "big")
            if score > best_score:
                best, best_score = ep, score
        return best

    def started(self, ep: Endpoint) -> None:
        health = self._health.get(ep)
        if health is not None:
            health.active += 1

    def finished(self, ep: Endpoint) -> None:
        health = self._health.get(ep)
        if health is not None and health.active > 0:
            health.active -= 1

    def failed(self, ep: Endpoint) -> None:
        health = self._health.get(ep)
        if health is None:
            return
        delay = min(self._max, self._base * (2 ** min(health.failures, 16)))
        health.failures += 1
        health.down_until = self._clock() + delay

    def succeeded(self, ep: Endpoint) -> None:
        health = self._health.get(ep)
        if health is not None:
            health.failures = 0
            health.down_until = 0.0
