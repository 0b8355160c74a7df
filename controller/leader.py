"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

Only the leader publishes snapshots and writes status and Events; standbys keep their indexes warm.

- The leader renews every ``retry`` seconds. One failed renewal is not a loss: as in client-go, the
  ``renew_deadline`` runs from the renewal round that follows a success (``retry`` after the start of
  the last successful renewal, on the monotonic clock), so any outage up to deadline - 0.5 s (one
  quick retry) costs nothing whenever it begins: 9.5 s with the defaults, a control-plane upgrade's
  ~8 s included. The window never exceeds ``duration``. ``is_leader`` is computed from that clock, so
  it turns false at the deadline even while an apiserver call hangs.
- A candidate takes an unreleased Lease over only when it has seen the Lease record unchanged for
  ``duration`` seconds of its own monotonic clock (client-go's "observed time"), never by comparing
  the holder's wall-clock ``renewTime`` with its own: clock skew cannot make two leaders.
- A standby waits ``duration`` from when it *saw* a renewal, which is after the leader started it, and
  the leading window is at most ``duration``: a leader cut off from the apiserver stops acting before
  any standby can take over. Every apiserver call carries a request timeout shorter than the deadline.
- Writes use the Lease's resourceVersion, so two candidates racing for an expired lease cannot
  both win.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("portcullis.leader")


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    # client-go's and kube-controller-manager's defaults: an apiserver outage of a control-plane upgrade (~8 s)
    # costs no leadership whenever it begins (up to deadline - 0.5 s: see the module docstring)
    duration: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0

    @property
    def leading_window(self) -> float:
        """How long after the start of its last successful renewal a leader keeps leading: the renewal round
        starts ``retry`` later and has ``renew_deadline`` (client-go); never past ``duration``, when a standby
        that saw the same renewal may take the Lease."""
        return min(self.retry + self.renew_deadline, self.duration)

    @property
    def request_timeout(self) -> float:
        """Bound of one apiserver call: half the renew deadline, so a renewal (read + write) that
        hangs still fails in time for a retry before the deadline."""
        return self.renew_deadline / 2

    def problems(self) -> list[str]:
        """client-go's rule: retry period < renew deadline < lease duration, all positive."""
        if not 0 < self.retry < self.renew_deadline < self.duration:
            return [f"need 0 < --retry-period ({self.retry:g}) < --renew-deadline ({self.renew_deadline:g}) "
                    f"< --lease-duration ({self.duration:g})"]
        return []


class Outcome(enum.Enum):
    RENEWED = "renewed"      # we hold the Lease, written just now
    HELD = "held"            # someone else holds it and it has not expired
    CONFLICT = "conflict"    # someone else wrote it between our read and our write


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def still_leading(renewed_at: float | None, window: float, now: float) -> bool:
    """Leading until ``window`` after the start of the last successful renewal."""
    return renewed_at is not None and now - renewed_at < window


def may_take(holder: str | None, identity: str, observed_at: float, duration: float, now: float) -> bool:
    """A released Lease, our own, or one whose record has not changed for ``duration`` seconds."""
    return not holder or holder == identity or now - observed_at > duration


def retry_delay(config: LeaseConfig, was_leading: bool, outcome: Outcome | None) -> float:
    """A leader whose renewal failed retries soon (an outage shorter than the deadline must not
    cost leadership); otherwise every retry period."""
    if was_leading and outcome is not Outcome.RENEWED and outcome is not Outcome.HELD:
        return min(config.retry, 0.5)
    return config.retry


class LeaderElector:
    def __init__(self, api: client.CoordinationV1Api, config: LeaseConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        self.leading = asyncio.Event()  # follows ``is_leader``; set and cleared by ``run``
        self._renewed_at: float | None = None
        self._observed: tuple[str | None, float] | None = None  # (resourceVersion, when we first saw it)

    @property
    def is_leader(self) -> bool:
        return still_leading(self._renewed_at, self.config.leading_window, self.clock())

    async def run(self) -> None:
        while True:
            attempt = asyncio.ensure_future(self.step())
            while not attempt.done():  # an attempt in flight at the deadline: stop leading now, not when it ends
                left = self._deadline_left()
                await asyncio.wait({attempt}, timeout=left if left is not None and left > 0 else None)
                self._follow()
            delay = attempt.result()
            left = self._deadline_left()
            if left is not None and left > 0:  # wake at the deadline too, so ``leading`` is cleared on time
                delay = min(delay, left)
            await asyncio.sleep(delay)

    def _deadline_left(self) -> float | None:
        if self._renewed_at is None:
            return None
        return self._renewed_at + self.config.leading_window - self.clock()

    async def step(self) -> float:
        """One acquire-or-renew attempt; returns how long to wait before the next one."""
        was_leading = self.is_leader
        started = self.clock()
        outcome: Outcome | None = None
        try:
            outcome = await asyncio.to_thread(self._try_acquire_or_renew, started)
        except ApiException as exc:
            log.warning("lease update failed", extra={"status": exc.status, "reason": exc.reason})
        except Exception as exc:  # timeouts, refused connections: one failure is not a loss
            log.warning("lease update failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        if outcome is Outcome.RENEWED:
            self._renewed_at = started
        elif outcome is Outcome.HELD:
            self._renewed_at = None  # the Lease names another live holder: we are not leading, whatever we thought
        self._follow()
        return retry_delay(self.config, was_leading, outcome)

    def _follow(self) -> None:
        leading = self.is_leader
        if leading and not self.leading.is_set():
            log.warning("became leader", extra={"identity": self.config.identity})
            self.leading.set()
        elif not leading and self.leading.is_set():
            log.warning("lost leadership", extra={"identity": self.config.identity})
            self.leading.clear()

    def _timeout(self, started: float) -> float:
        """The request timeout for one call of an attempt; a leader never waits past its deadline."""
        timeout = self.config.request_timeout
        if self._renewed_at is not None:
            timeout = min(timeout, self._renewed_at + self.config.leading_window - self.clock())
        return max(0.1, timeout)

    def _observe(self, lease: Any) -> float:
        version = lease.metadata.resource_version if lease.metadata else None
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, self.clock())
        return self._observed[1]

    def _try_acquire_or_renew(self, started: float) -> Outcome:
        cfg = self.config
        now = _now()
        try:
            lease: Any = self.api.read_namespaced_lease(cfg.name, cfg.namespace,
                                                        _request_timeout=self._timeout(started))
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=cfg.name, namespace=cfg.namespace),
                spec=client.V1LeaseSpec(holder_identity=cfg.identity, lease_duration_seconds=round(cfg.duration),
                                        acquire_time=now, renew_time=now, lease_transitions=0),
            )
            try:
                self.api.create_namespaced_lease(cfg.namespace, body, _request_timeout=self._timeout(started))
            except ApiException as create_exc:
                if create_exc.status == 409:
                    return Outcome.CONFLICT
                raise
            return Outcome.RENEWED
        observed_at = self._observe(lease)
        spec = lease.spec or client.V1LeaseSpec()
        mine = spec.holder_identity == cfg.identity
        duration = float(spec.lease_duration_seconds or cfg.duration)
        if not may_take(spec.holder_identity, cfg.identity, observed_at, duration, self.clock()):
            return Outcome.HELD
        if not mine:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = cfg.identity
        spec.renew_time = now
        spec.lease_duration_seconds = round(cfg.duration)
        lease.spec = spec
        try:
            self.api.replace_namespaced_lease(cfg.name, cfg.namespace, lease,
                                              _request_timeout=self._timeout(started))
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote first
                return Outcome.CONFLICT
            raise
        return Outcome.RENEWED

    def release(self) -> None:
        """Give the lease up on a clean stop, so the standby takes over at once."""
        if not self.is_leader:
            return
        timeout = self.config.request_timeout
        try:
            lease: Any = self.api.read_namespaced_lease(self.config.name, self.config.namespace,
                                                        _request_timeout=timeout)
            if lease.spec and lease.spec.holder_identity == self.config.identity:
                lease.spec.holder_identity = None
                self.api.replace_namespaced_lease(self.config.name, self.config.namespace, lease,
                                                  _request_timeout=timeout)
        except ApiException as exc:
            log.warning("lease release failed", extra={"status": exc.status})
        except Exception as exc:  # unreachable apiserver on the way out: the lease simply expires
            log.warning("lease release failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        self._renewed_at = None
        self.leading.clear()
