"""Leader election against an in-memory Lease store with resourceVersion checks, on a virtual clock.

The store behaves like the apiserver for the three calls the elector makes (read, create, replace with
optimistic concurrency); each candidate reaches it through its own connection, which a test can cut
("refused") or freeze (the call hangs until its request timeout, which advances the virtual clock)."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import NewConnectionError, ReadTimeoutError

from controller.leader import LeaderElector, LeaseConfig, Outcome, may_take, retry_delay, still_leading


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Store:
    lease: client.V1Lease | None = None
    version: int = 0

    def write(self, lease: client.V1Lease) -> client.V1Lease:
        self.version += 1
        lease = copy.deepcopy(lease)
        assert lease.metadata is not None
        lease.metadata.resource_version = str(self.version)
        self.lease = lease
        return copy.deepcopy(lease)


@dataclass
class Connection:
    """One candidate's view of the apiserver: ``state`` is "up", "refused" or "frozen"."""

    store: Store
    clock: Clock
    state: str = "up"
    timeouts: list[float] = field(default_factory=list)

    def _call(self, kwargs: dict[str, Any]) -> None:
        timeout = kwargs.get("_request_timeout")
        assert isinstance(timeout, float), "every apiserver call carries a request timeout"
        self.timeouts.append(timeout)
        if self.state == "refused":
            raise NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
        if self.state == "frozen":
            self.clock.now += timeout  # the call hangs until its timeout
            raise ReadTimeoutError(None, "/lease", "read timed out")  # type: ignore[arg-type]

    def read_namespaced_lease(self, name: str, namespace: str, **kwargs: Any) -> client.V1Lease:
        self._call(kwargs)
        if self.store.lease is None:
            raise ApiException(status=404)
        return copy.deepcopy(self.store.lease)

    def create_namespaced_lease(self, namespace: str, body: client.V1Lease, **kwargs: Any) -> client.V1Lease:
        self._call(kwargs)
        if self.store.lease is not None:
            raise ApiException(status=409)
        return self.store.write(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: client.V1Lease,
                                 **kwargs: Any) -> client.V1Lease:
        self._call(kwargs)
        assert self.store.lease is not None and self.store.lease.metadata is not None and body.metadata is not None
        if body.metadata.resource_version != self.store.lease.metadata.resource_version:
            raise ApiException(status=409)
        return self.store.write(body)


CONFIG = LeaseConfig("ns", "lease", "a", duration=10.0, renew_deadline=7.0, retry=2.0)


def candidate(store: Store, clock: Clock, identity: str) -> tuple[LeaderElector, Connection]:
    connection = Connection(store, clock)
    config = LeaseConfig(CONFIG.namespace, CONFIG.name, identity, CONFIG.duration, CONFIG.renew_deadline,
                         CONFIG.retry)
    return LeaderElector(connection, config, clock=clock), connection  # type: ignore[arg-type]


async def test_one_failed_renewal_is_not_a_loss_only_the_deadline_is() -> None:
    clock, store = Clock(), Store()
    elector, connection = candidate(store, clock, "a")
    await elector.step()
    assert elector.is_leader and elector.leading.is_set()
    renewed = clock.now

    connection.state = "refused"
    # CONFIG's window: the next round starts retry (2 s) after the renewal and has the deadline (7 s) from there
    assert CONFIG.leading_window == 9.0
    for at in (2.0, 2.5, 4.0, 8.9):
        clock.now = renewed + at
        await elector.step()
        assert elector.is_leader, f"leadership lost {at}s after the last renewal, before the deadline"
    clock.now = renewed + 9.0
    assert not elector.is_leader  # no call needed: the deadline is a matter of time
    await elector.step()
    assert not elector.leading.is_set()

    connection.state = "up"  # the Lease still names us and nobody took it: renewing is allowed
    await elector.step()
    assert elector.is_leader


async def test_an_outage_shorter_than_the_deadline_costs_no_leadership() -> None:
    for state in ("refused", "frozen"):
        clock, store = Clock(), Store()
        elector, connection = candidate(store, clock, "a")
        await elector.step()
        start = clock.now
        connection.state = state
        while clock.now < start + 5.0:  # the run loop, on the virtual clock
            clock.now += await elector.step()
            assert elector.is_leader, f"{state}: lost leadership {clock.now - start:.1f}s into a 5s outage"
        connection.state = "up"
        clock.now += await elector.step()
        assert elector.is_leader and elector.leading.is_set()


async def test_a_cut_off_leader_stops_before_a_standby_takes_over() -> None:
    for state in ("refused", "frozen"):
        clock, store = Clock(), Store()
        leader, cut = candidate(store, clock, "a")
        standby, _ = candidate(store, clock, "b")
        await leader.step()
        await standby.step()
        assert leader.is_leader and not standby.is_leader
        last_renewal = clock.now
        cut.state = state
        stopped_at = took_over_at = None
        for _ in range(200):
            clock.now += 0.25
            await leader.step()
            await standby.step()
            assert not (leader.is_leader and standby.is_leader), f"{state}: two leaders at {clock.now}"
            if stopped_at is None and not leader.is_leader:
                stopped_at = clock.now
            if standby.is_leader:
                took_over_at = clock.now
                break
        assert stopped_at is not None and took_over_at is not None
        assert stopped_at - last_renewal <= CONFIG.leading_window + 0.25
        assert took_over_at - stopped_at >= CONFIG.duration - CONFIG.leading_window - 0.5
        assert store.lease is not None and store.lease.spec.holder_identity == "b"


async def test_every_call_is_bounded_and_a_leader_never_waits_past_its_deadline() -> None:
    clock, store = Clock(), Store()
    elector, connection = candidate(store, clock, "a")
    await elector.step()
    renewed = clock.now
    connection.state = "frozen"
    clock.now += 2.0
    await elector.step()  # hangs for the request timeout
    clock.now += 0.5
    await elector.step()  # hangs only until the deadline
    assert connection.timeouts and max(connection.timeouts) <= CONFIG.request_timeout < CONFIG.renew_deadline
    assert clock.now <= renewed + CONFIG.leading_window + 0.1
    assert not elector.is_leader


async def test_another_live_holder_means_not_leading_at_once() -> None:
    clock, store = Clock(), Store()
    elector, _ = candidate(store, clock, "a")
    await elector.step()
    assert store.lease is not None
    lease = copy.deepcopy(store.lease)
    assert lease.spec is not None
    lease.spec.holder_identity = "intruder"
    store.write(lease)
    clock.now += 2.0
    assert await elector.step() == CONFIG.retry
    assert not elector.is_leader and not elector.leading.is_set()


async def test_expiry_is_judged_by_observed_time_not_by_the_holders_clock() -> None:
    """A renewTime an hour old (a holder whose clock lags) is not an expired Lease: only a record that has not
    changed for the lease duration, on our own clock, is."""
    clock, store = Clock(), Store()
    store.write(client.V1Lease(metadata=client.V1ObjectMeta(name="lease", namespace="ns"), spec=client.V1LeaseSpec(
        holder_identity="other", lease_duration_seconds=10,
        renew_time=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))))
    elector, _ = candidate(store, clock, "a")
    await elector.step()
    assert not elector.is_leader
    clock.now += 9.0
    await elector.step()
    assert not elector.is_leader
    clock.now += 1.5
    await elector.step()
    assert elector.is_leader
    assert store.lease is not None and store.lease.spec.lease_transitions == 1


async def test_two_candidates_racing_for_a_free_lease_cannot_both_win() -> None:
    clock, store = Clock(), Store()
    first, _ = candidate(store, clock, "a")
    second, _ = candidate(store, clock, "b")
    outcomes = [first._try_acquire_or_renew(clock.now), second._try_acquire_or_renew(clock.now)]
    assert outcomes.count(Outcome.RENEWED) == 1


def test_decisions() -> None:
    assert still_leading(10.0, 7.0, 16.9) and not still_leading(10.0, 7.0, 17.0)
    assert not still_leading(None, 7.0, 0.0)
    assert may_take(None, "a", 100.0, 10.0, 100.0) and may_take("a", "a", 100.0, 10.0, 100.0)
    assert not may_take("b", "a", 100.0, 10.0, 110.0) and may_take("b", "a", 100.0, 10.0, 110.1)
    assert retry_delay(CONFIG, True, None) < CONFIG.retry
    assert retry_delay(CONFIG, True, Outcome.RENEWED) == CONFIG.retry
    assert retry_delay(CONFIG, False, None) == CONFIG.retry


@pytest.mark.parametrize(("duration", "deadline", "retry", "ok"), [
    (10, 7, 2, True), (10, 10, 2, False), (10, 7, 7, False), (10, 12, 2, False), (10, 7, 0, False)])
def test_config_needs_retry_below_deadline_below_duration(duration: float, deadline: float, retry: float,
                                                           ok: bool) -> None:
    assert (LeaseConfig("ns", "n", "i", duration, deadline, retry).problems() == []) is ok


async def test_run_stops_leading_at_the_deadline_even_while_a_call_hangs() -> None:
    """The request timeout is the first line; the second is that leadership is a matter of the clock: a call
    that overstays its timeout does not extend it."""
    import asyncio
    import threading
    import time

    release = threading.Event()
    store = Store()

    class Hanging(Connection):
        def _call(self, kwargs: dict[str, Any]) -> None:
            if self.state == "hang":
                release.wait(5.0)  # ignores its timeout, as a wedged socket might
                raise ReadTimeoutError(None, "/lease", "read timed out")  # type: ignore[arg-type]

    connection = Hanging(store, Clock())
    config = LeaseConfig("ns", "lease", "a", duration=1.0, renew_deadline=0.6, retry=0.2)
    elector = LeaderElector(connection, config)  # type: ignore[arg-type]
    task = asyncio.create_task(elector.run())
    try:
        await asyncio.wait_for(elector.leading.wait(), 2.0)
        connection.state = "hang"
        cut = time.monotonic()
        while elector.leading.is_set():
            assert time.monotonic() - cut < config.renew_deadline + 0.3, "still leading past the deadline"
            await asyncio.sleep(0.01)
        assert not release.is_set()  # the call is still hanging: leadership ended by the clock
    finally:
        release.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
