"""The controller's loop: watch events mark the state dirty; this debounces, renders, publishes.

Watch events never do work themselves. A burst of changes (``kubectl apply -f dir``, a namespace
deletion) collapses into one render after 100 ms of quiet, and a steady stream still renders every
500 ms. Only the leader publishes and writes status and Events; a standby renders nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from controller import classes, reporting
from controller.certificates import ParseCache, utc_now
from controller.kube import KubeWriter
from controller.model import Ingress, Inputs
from controller.problems import ObjectRef, Problem
from controller.publisher import Publisher
from controller.render import RenderConfig, render
from controller.status import StatusWriter

log = logging.getLogger("portcullis.reconciler")


@dataclass(frozen=True)
class LoopConfig:
    render: RenderConfig
    dataplane_service: tuple[str, str]
    publish_service: tuple[str, str] | None = None
    publish_address: str | None = None
    quiet: float = 0.1
    max_delay: float = 0.5
    startup_grace: float = 10.0


class Reconciler:
    def __init__(self, config: LoopConfig, inputs: Callable[[], Inputs], publisher: Publisher,
                 writer: KubeWriter | None, is_leader: Callable[[], bool]) -> None:
        self.config = config
        self.inputs = inputs
        self.publisher = publisher
        self.writer = writer
        self.is_leader = is_leader
        self.dirty = asyncio.Event()
        self.indexed = asyncio.Event()  # set once kopf's indexes hold the whole initial listing
        self.renders = 0
        self.last_render_seconds = 0.0
        self.last_checksum: str | None = None
        self.last_problems: tuple[Problem, ...] = ()
        self._posted: frozenset[Problem] = frozenset()
        self.parsed = ParseCache()  # parsed certificates by content: a render re-parses only changed Secrets
        self.status = StatusWriter(writer.write_status, ready=lambda: publisher.wait_synced(5.0)) \
            if writer is not None else None
        self._render_wanted = False  # False while dirty: only Ingress statuses changed, re-check those
        self._ingresses: dict[tuple[str, str], Ingress] = {}  # what the renderer reads of each, status aside

    def mark_dirty(self) -> None:
        self._render_wanted = True
        self.dirty.set()

    def ingress_event(self, key: tuple[str, str], view: Ingress | None) -> None:
        """An Ingress watch event. Our own status writes come back as thousands of events that change
        nothing the renderer reads: those only re-check statuses (cheap) instead of rendering again."""
        relevant = replace(view, status_addresses=()) if view is not None else None
        if relevant is not None and self._ingresses.get(key) == relevant:
            self.dirty.set()  # status only: someone else's overwrite must still be corrected
            return
        if relevant is None:
            self._ingresses.pop(key, None)
        else:
            self._ingresses[key] = relevant
        self.mark_dirty()

    def mark_indexed(self) -> None:
        """kopf calls event handlers only after every index is pre-populated: the first call proves it."""
        if not self.indexed.is_set():
            self.indexed.set()
            self.mark_dirty()

    async def run(self) -> None:
        try:
            await asyncio.wait_for(self.indexed.wait(), self.config.startup_grace)
        except TimeoutError:
            log.warning("no watch event within the startup grace period; assuming an empty cluster")
            self.indexed.set()
        while True:
            await self.dirty.wait()
            await self._debounce()
            self.dirty.clear()
            full, self._render_wanted = self._render_wanted, False
            try:
                await (self.reconcile() if full else self.reconcile_status())
            except Exception:
                log.exception("reconcile failed; retrying on the next change")
                await asyncio.sleep(1.0)
                self.mark_dirty()

    async def _debounce(self) -> None:
        """Until ``quiet`` seconds without a change, or at most ``max_delay`` in a steady stream of them.

        In a stream, the cap grows to the last render's duration: at thousands of Ingresses a render
        takes seconds, and rendering back to back during a bulk create would take the interpreter from
        the watch streams it must drain before the last render can see everything.
        """
        start = time.monotonic()
        cap = max(self.config.max_delay, self.last_render_seconds)
        while time.monotonic() - start < cap:
            self.dirty.clear()
            try:
                await asyncio.wait_for(self.dirty.wait(), self.config.quiet)
            except TimeoutError:
                return

    async def reconcile(self) -> None:
        if not self.is_leader():
            # A standby keeps its last rendered snapshot (if it ever led) for data planes that come up
            # empty: the publisher asks is_leader before each push and, not leading, only fills those.
            addresses = reporting.dataplane_addresses(self.inputs().endpoint_slices, self.config.dataplane_service)
            self.publisher.update(addresses, None)
            return
        inputs = self.inputs()
        started = time.perf_counter()
        # In a worker thread: a render of thousands of Ingresses takes a second of CPU, and the loop
        # must keep reading watch streams and pushing meanwhile. Renders are serialised (one loop), so
        # the parse cache is never used by two at once.
        snapshot, problems = await asyncio.to_thread(render, inputs, replace(self.config.render, now=utc_now()),
                                                     self.parsed)
        self.renders += 1
        self.last_render_seconds = time.perf_counter() - started
        if snapshot.checksum != self.last_checksum:
            log.info("rendered %d TLS hosts, %d virtual hosts, %d problems in %.2f s: checksum %s",
                     len(snapshot.tls_hosts), len(snapshot.virtual_hosts), len(problems),
                     time.perf_counter() - started, snapshot.checksum,
                     extra={"checksum": snapshot.checksum, "tls_hosts": len(snapshot.tls_hosts),
                            "virtual_hosts": len(snapshot.virtual_hosts), "problems": len(problems)})
            self.last_checksum = snapshot.checksum
        else:
            log.debug("rendered, unchanged", extra={"checksum": snapshot.checksum})
        self.last_problems = tuple(problems)
        addresses = reporting.dataplane_addresses(inputs.endpoint_slices, self.config.dataplane_service)
        self.publisher.update(addresses, snapshot)
        if self.writer is not None:
            await self._report(inputs, problems)

    async def reconcile_status(self) -> None:
        """Only Ingress statuses changed since the last render: compare them again, render nothing."""
        if self.writer is not None and self.is_leader():
            self._report_status(self.inputs())

    async def _report(self, inputs: Inputs, problems: list[Problem]) -> None:
        assert self.writer is not None
        uids: Mapping[ObjectRef, str] = {i.ref: i.uid for i in inputs.ingresses}
        existing = set(uids) | {s.ref for s in inputs.secrets} | {s.ref for s in inputs.services}
        to_post, self._posted = reporting.new_events(self._posted, (p for p in problems if p.obj in existing))
        await self.writer.post_events(to_post, dict(uids))
        self._report_status(inputs)

    def _report_status(self, inputs: Inputs) -> None:
        addresses = reporting.published_addresses(inputs.services, self.config.publish_service,
                                                  self.config.publish_address)
        if not addresses:
            return
        cfg = self.config.render
        ours = classes.select(inputs.ingresses, inputs.ingress_classes, cfg.ingress_class, cfg.controller_name,
                              cfg.watch_namespaces)
        assert self.status is not None
        updates = reporting.status_updates(ours, addresses)
        if updates:
            log.debug("status differs", extra={"ingresses": len(updates)})
        self.status.submit({ref: addresses for ref in updates})  # written in the background, bounded
