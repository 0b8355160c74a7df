"""Limits that absorb abuse at the edge: pure decision code, the clock passed in, O(1) per decision.

* ``TokenBucket``: one bucket (the full-handshake rate of a listener).
* ``RateLimit``: a token bucket per client IP for one Ingress (``limit-rps``; burst is ingress-nginx's
  default of five times the rate), its CIDR whitelist, bounded in memory (idle buckets are dropped).
* ``ConnectionCounter``: concurrent connections per client IP (global ``--max-connections-per-ip`` or one
  Ingress's ``limit-connections``). It counts handles that say ``is_closing()``, so a connection that ends
  by any path stops counting without a release hook; lists are pruned only when a key is at its limit.
* ``LimitRegistry``: the state above keyed by Ingress, kept by the data plane across snapshot applies
  (a client's bucket survives a push; a changed rate keeps the buckets).
"""

from __future__ import annotations

import ipaddress
import resource
from collections.abc import Iterable
from typing import Protocol

BURST_MULTIPLIER = 5  # ingress-nginx's limit-burst-multiplier default
FD_RESERVE = 256  # descriptors kept for the admin API, the state file, logs, DNS and new upstream connections
MAX_KEYS = 100_000  # client IPs one limit remembers; beyond, the least recently seen is forgotten
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def default_max_connections(nofile: int | None = None) -> int:
    """The ``--max-connections`` default: what the descriptor limit allows, two per proxied connection (client and
    upstream) after a reserve, so a flood is refused at accept before accept itself starts failing for everyone."""
    if nofile is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return max(64, (nofile - FD_RESERVE) // 2)


class Handle(Protocol):
    def is_closing(self) -> bool: ...


def parse_whitelist(cidrs: Iterable[str]) -> tuple[tuple[Network, ...], list[str]]:
    """CIDRs (or bare addresses) -> networks, and a problem per entry that is neither."""
    networks: list[Network] = []
    problems: list[str] = []
    for raw in cidrs:
        text = raw.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            problems.append(f"{raw!r} is not an IP address or CIDR")
    return tuple(networks), problems


class Whitelist:
    """Client addresses exempt from a limit. Asked only when a limit would refuse, so it costs nothing on the
    common path; answers are cached (bounded) because a refused client asks again at once."""

    __slots__ = ("_cache", "networks")

    def __init__(self, networks: tuple[Network, ...] = ()) -> None:
        self.networks = networks
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def exempt(self, ip: str) -> bool:
        if not self.networks:
            return False
        hit = self._cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                return False
            mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:10.0.0.1 on a dual-stack socket
            hit = any(addr in net or (mapped is not None and mapped in net) for net in self.networks)
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[ip] = hit
        return hit


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; ``take`` spends one if there is one."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


class RateLimit:
    """Requests a second per client IP (one Ingress). ``retry_after`` is 0.0 when the request may pass (a token
    was spent), else the seconds until the next token (the ``Retry-After`` of the 429)."""

    __slots__ = ("_buckets", "burst", "evicted", "max_keys", "rate", "whitelist")

    def __init__(self, rate: float, whitelist: Whitelist | None = None, burst: float | None = None,
                 max_keys: int = MAX_KEYS) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate * BURST_MULTIPLIER)
        self.whitelist = whitelist if whitelist is not None else Whitelist()
        self.max_keys = max_keys
        self._buckets: dict[str, list[float]] = {}  # ip -> [tokens, last]; insertion order = last seen
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def adopt(self, other: RateLimit) -> None:
        """Keep ``other``'s buckets (the same Ingress before a snapshot apply)."""
        self._buckets = other._buckets
        self.evicted = other.evicted

    def retry_after(self, ip: str, now: float) -> float:
        buckets = self._buckets
        bucket = buckets.pop(ip, None)
        if bucket is None:
            tokens = self.burst
            self._evict(now)
        else:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        if tokens >= 1.0:
            buckets[ip] = [tokens - 1.0, now]
            return 0.0
        buckets[ip] = [tokens, now]
        if self.whitelist and self.whitelist.exempt(ip):
            return 0.0
        return (1.0 - tokens) / self.rate

    def _evict(self, now: float) -> None:
        """Drop the least recently seen buckets that have refilled (forgetting them loses nothing), and the oldest
        one whatever its state when the table is full: at most three looks per new client."""
        buckets = self._buckets
        full_after = self.burst / self.rate
        for _ in range(2):
            if not buckets:
                return
            ip = next(iter(buckets))
            if now - buckets[ip][1] < full_after:
                break
            del buckets[ip]
        if len(buckets) >= self.max_keys:
            del buckets[next(iter(buckets))]
            self.evicted += 1


class ConnectionCounter:
    """Concurrent connections per key (a client IP). ``admit`` records ``handle`` and answers True, or answers
    False when the key already holds ``limit`` handles that are not closing."""

    __slots__ = ("_by_key", "_sweep_in")

    def __init__(self) -> None:
        self._by_key: dict[str, list[Handle]] = {}
        self._sweep_in = 1024

    def __len__(self) -> int:
        return len(self._by_key)

    def count(self, key: str) -> int:
        return sum(1 for h in self._by_key.get(key, ()) if not h.is_closing())

    def admit(self, key: str, handle: Handle, limit: int) -> bool:
        held = self._by_key.get(key)
        if held is None:
            self._by_key[key] = [handle]
            self._tick()
            return True
        if len(held) >= limit:
            held[:] = [h for h in held if not h.is_closing()]
            if len(held) >= limit:
                return False
        held.append(handle)
        self._tick()
        return True

    def _tick(self) -> None:
        """Every so many admits, drop closed handles everywhere (amortised O(1): the sweep interval grows with
        the number of keys), so a key whose connections all ended is forgotten."""
        self._sweep_in -= 1
        if self._sweep_in > 0:
            return
        by_key = self._by_key
        for key in list(by_key):
            live = [h for h in by_key[key] if not h.is_closing()]
            if live:
                by_key[key] = live
            else:
                del by_key[key]
        self._sweep_in = max(1024, 2 * len(by_key))


def limit_key(source: str, host: str) -> str:
    """The registry key of one Ingress's limits: its snapshot ``source``, the host when it has none."""
    return source or host


class LimitRegistry:
    """Per-Ingress limit state, owned by the data plane and handed to every table build: state survives applies.

    The data plane calls ``retain`` after every swap with the keys the applied snapshot uses, so the state of an
    Ingress that is gone (its buckets, its counter's handles of closed connections) goes with it."""

    def __init__(self) -> None:
        self._rates: dict[str, RateLimit] = {}
        self._counters: dict[str, ConnectionCounter] = {}

    def rate_limit(self, key: str, rate: float, whitelist: Whitelist) -> RateLimit:
        old = self._rates.get(key)
        if old is not None and old.rate == rate and old.whitelist.networks == whitelist.networks:
            return old
        fresh = RateLimit(rate, whitelist)
        if old is not None:
            fresh.adopt(old)
        self._rates[key] = fresh
        return fresh

    def counter(self, key: str) -> ConnectionCounter:
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = ConnectionCounter()
        return counter

    def __len__(self) -> int:
        """Ingresses whose state is kept (a rate limit, a connection counter or both count once each)."""
        return len(self._rates) + len(self._counters)

    def retain(self, rate_keys: Iterable[str], counter_keys: Iterable[str]) -> None:
        """Forget the state of Ingresses that no longer set a limit."""
        keep_r, keep_c = set(rate_keys), set(counter_keys)
        self._rates = {k: v for k, v in self._rates.items() if k in keep_r}
        self._counters = {k: v for k, v in self._counters.items() if k in keep_c}
