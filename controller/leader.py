"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go does it.

Only the leader publishes snapshots and writes status and Events; standbys keep their indexes warm
so a takeover costs one lease period (10 s) plus one retry (2 s), well inside 15 s. Writes use the
Lease's resourceVersion, so two candidates racing for an expired lease cannot both win.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
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
    duration: float = 10.0
    retry: float = 2.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def holder_expired(holder: str | None, renewed: dt.datetime | None, duration: float, now: dt.datetime) -> bool:
    return not holder or renewed is None or (now - renewed).total_seconds() > duration


class LeaderElector:
    def __init__(self, api: client.CoordinationV1Api, config: LeaseConfig) -> None:
        self.api = api
        self.config = config
        self.leading = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    async def run(self) -> None:
        while True:
            try:
                won = await asyncio.to_thread(self._try_acquire_or_renew)
            except ApiException as exc:
                log.warning("lease update failed", extra={"status": exc.status, "reason": exc.reason})
                won = False
            except Exception as exc:
                log.warning("lease update failed", extra={"error": str(exc)})
                won = False
            if won and not self.is_leader:
                log.warning("became leader", extra={"identity": self.config.identity})
                self.leading.set()
            elif not won and self.is_leader:
                log.warning("lost leadership", extra={"identity": self.config.identity})
                self.leading.clear()
            await asyncio.sleep(self.config.retry)

    def _try_acquire_or_renew(self) -> bool:
        cfg = self.config
        now = _now()
        try:
            lease: Any = self.api.read_namespaced_lease(cfg.name, cfg.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=cfg.name, namespace=cfg.namespace),
                spec=client.V1LeaseSpec(holder_identity=cfg.identity, lease_duration_seconds=int(cfg.duration),
                                        acquire_time=now, renew_time=now, lease_transitions=0),
            )
            try:
                self.api.create_namespaced_lease(cfg.namespace, body)
            except ApiException as create_exc:
                if create_exc.status == 409:
                    return False
                raise
            return True
        spec = lease.spec or client.V1LeaseSpec()
        mine = spec.holder_identity == cfg.identity
        duration = float(spec.lease_duration_seconds or cfg.duration)
        if not mine and not holder_expired(spec.holder_identity, spec.renew_time, duration, now):
            return False
        if not mine:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = cfg.identity
        spec.renew_time = now
        spec.lease_duration_seconds = int(cfg.duration)
        lease.spec = spec
        try:
            self.api.replace_namespaced_lease(cfg.name, cfg.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote first
                return False
            raise
        return True

    def release(self) -> None:
        """Give the lease up on a clean stop, so the standby takes over at once."""
        if not self.is_leader:
            return
        try:
            lease: Any = self.api.read_namespaced_lease(self.config.name, self.config.namespace)
            if lease.spec and lease.spec.holder_identity == self.config.identity:
                lease.spec.holder_identity = None
                self.api.replace_namespaced_lease(self.config.name, self.config.namespace, lease)
        except ApiException as exc:
            log.warning("lease release failed", extra={"status": exc.status})
        self.leading.clear()
