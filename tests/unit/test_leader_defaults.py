"""Leader election's defaults are client-go's and kube-controller-manager's (lease 15 s, renew deadline 10 s, retry
2 s), so an apiserver outage of a control-plane upgrade (the issue's 8 s) costs no leadership (issue 20 item 7).

Outages play on the virtual clock and in-memory Lease store of ``test_leader``, with one difference that matters
here: the apiserver comes back at a given moment of the virtual clock, so a call frozen across that moment is
answered then (as a relay thawed mid-request answers), instead of hanging for its whole request timeout.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import pytest
from urllib3.exceptions import NewConnectionError, ReadTimeoutError

from controller.leader import LeaderElector, LeaseConfig
from controller.operator import ControllerConfig, add_arguments
from tests.unit import test_leader as harness

DEFAULTS = LeaseConfig("ns", "lease", "a")
OLD_DEFAULTS = LeaseConfig("ns", "lease", "a", duration=10.0, renew_deadline=7.0, retry=2.0)


def test_flags_and_lease_config_default_to_client_go(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD"):
        monkeypatch.delenv(f"PORTCULLIS_{name}", raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = ControllerConfig.from_args(parser.parse_args([]))
    assert config.lease is not None
    lease = config.lease
    assert (lease.duration, lease.renew_deadline, lease.retry) == (15.0, 10.0, 2.0)
    assert (DEFAULTS.duration, DEFAULTS.renew_deadline, DEFAULTS.retry) == (15.0, 10.0, 2.0)
    assert config.api_timeout == lease.request_timeout == 5.0


@dataclass
class Outage(harness.Connection):
    """The apiserver unreachable (``kind``: refused or frozen) from ``start`` until ``end`` on the virtual clock."""

    kind: str = "refused"
    start: float = 0.0
    end: float = 0.0

    def _call(self, kwargs: dict[str, Any]) -> None:
        timeout = kwargs.get("_request_timeout")
        assert isinstance(timeout, float), "every apiserver call carries a request timeout"
        self.timeouts.append(timeout)
        if not self.start <= self.clock.now < self.end:
            return
        if self.kind == "refused":
            raise NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
        if self.clock.now + timeout < self.end:
            self.clock.now += timeout  # hangs until its timeout
            raise ReadTimeoutError(None, "/lease", "read timed out")  # type: ignore[arg-type]
        self.clock.now = self.end  # answered once the apiserver is back


async def survives(config: LeaseConfig, kind: str, after_renewal: float, length: float) -> bool:
    """Whether a leader keeps leading through an outage beginning ``after_renewal`` s after its last renewal."""
    clock, store = harness.Clock(), harness.Store()
    connection = Outage(store, clock, kind=kind)
    elector = LeaderElector(connection, config, clock=clock)  # type: ignore[arg-type]
    renewed = clock.now
    clock.now += await elector.step()
    assert elector.is_leader
    connection.start, connection.end = renewed + after_renewal, renewed + after_renewal + length
    while clock.now < connection.end + config.renew_deadline:  # the run loop, on the virtual clock
        clock.now += await elector.step()
        if not elector.is_leader:
            return False
    spec = store.lease.spec if store.lease is not None else None
    return spec is not None and spec.holder_identity == "a"  # nobody else took the Lease meanwhile


@pytest.mark.parametrize("kind", ["refused", "frozen"])
async def test_an_8s_outage_costs_nothing_with_the_defaults_whenever_it_begins(kind: str) -> None:
    """The issue's control-plane upgrade, at every moment between two renewals."""
    for tenths in range(20):
        begins = tenths / 10
        assert await survives(DEFAULTS, kind, begins, length=8.0), f"outage beginning {begins}s after a renewal"


@pytest.mark.parametrize("kind", ["refused", "frozen"])
async def test_outages_up_to_the_deadline_less_half_a_second_cost_nothing_and_longer_ones_may(kind: str) -> None:
    """As in client-go, the deadline runs from the renewal round after a success, so the worst moment (just before
    a renewal) still leaves the whole deadline; a failed renewal is retried every 0.5 s, so the first answer after
    the outage may come that late."""
    for tenths in range(20):
        begins = tenths / 10
        assert await survives(DEFAULTS, kind, begins, length=9.4), f"outage beginning {begins}s after a renewal"
    assert not await survives(DEFAULTS, kind, after_renewal=1.99, length=10.1)
    assert not await survives(OLD_DEFAULTS, kind, after_renewal=1.99, length=8.1)  # 10/7/2 still lose an upgrade
