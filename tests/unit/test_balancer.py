"""Load-balancing policies and passive health, with a fake clock (no sleeping)."""

from __future__ import annotations

from collections import Counter

from dataplane.balancer import UpstreamPool
from dataplane.snapshot import Endpoint, Pool

A, B, C = Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80), Endpoint("10.0.0.3", 80)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(policy: str = "round-robin", eps: tuple[Endpoint, ...] = (A, B, C), clock: Clock | None = None,
         previous: UpstreamPool | None = None) -> UpstreamPool:
    return UpstreamPool(Pool("p", eps, load_balance=policy), previous=previous,  # type: ignore[arg-type]
                        clock=clock or Clock())


def test_round_robin_cycles() -> None:
    pool = make()
    assert [pool.pick("1.1.1.1") for _ in range(6)] == [A, B, C, A, B, C]


def test_no_endpoints_and_exclusion() -> None:
    assert make(eps=()).pick("1.1.1.1") is None
    pool = make()
    assert pool.pick("x", exclude=(A, B)) == C
    assert pool.pick("x", exclude=(A, B, C)) is None


def test_failed_endpoint_is_down_with_backoff() -> None:
    clock = Clock()
    pool = make(clock=clock)
    pool.failed(A)
    assert not pool.is_up(A)
    assert A not in {pool.pick("x") for _ in range(10)}
    clock.now += 1.01
    assert pool.is_up(A)
    pool.failed(A)  # second failure in a row: 2 s
    clock.now += 1.5
    assert not pool.is_up(A)
    clock.now += 0.6
    assert pool.is_up(A)
    for _ in range(20):
        pool.failed(A)
    clock.now += 29
    assert not pool.is_up(A)  # capped at 30 s
    clock.now += 1.1
    assert pool.is_up(A)


def test_succeeded_brings_back_and_resets() -> None:
    clock = Clock()
    pool = make(clock=clock)
    pool.failed(A)
    pool.failed(A)
    pool.succeeded(A)
    assert pool.is_up(A)
    pool.failed(A)
    clock.now += 1.01  # backoff restarted at 1 s
    assert pool.is_up(A)


def test_all_down_is_none() -> None:
    pool = make()
    for ep in (A, B, C):
        pool.failed(ep)
    assert pool.pick("x") is None


def test_least_conn() -> None:
    pool = make("least-conn")
    pool.started(A)
    pool.started(A)
    pool.started(B)
    assert pool.pick("x") == C
    pool.started(C)
    pool.started(C)
    assert pool.pick("x") == B
    pool.finished(A)
    pool.finished(A)
    assert pool.pick("x") == A
    pool.finished(A)  # never below zero
    assert pool.active(A) == 0


def test_least_conn_ties_rotate() -> None:
    pool = make("least-conn")
    assert len({pool.pick("x") for _ in range(3)}) == 3


def test_client_ip_hash_is_consistent_and_spreads() -> None:
    pool = make("client-ip-hash")
    ips = [f"192.0.2.{i}" for i in range(200)]
    first = {ip: pool.pick(ip) for ip in ips}
    assert all(make("client-ip-hash").pick(ip) == ep for ip, ep in first.items())  # stable across objects
    spread = Counter(first.values())
    assert set(spread) == {A, B, C} and min(spread.values()) > 20
    pool.failed(A)  # only clients of A move
    moved = {ip: pool.pick(ip) for ip in ips}
    assert all(moved[ip] == ep for ip, ep in first.items() if ep != A)
    assert all(moved[ip] != A for ip in ips)


def test_state_carries_over_for_remaining_endpoints() -> None:
    clock = Clock()
    old = make(clock=clock)
    old.failed(A)
    old.started(B)
    new = UpstreamPool(Pool("p", (A, B)), previous=old, clock=clock)
    assert not new.is_up(A) and new.active(B) == 1
    assert new.pick("x", ()) == B
