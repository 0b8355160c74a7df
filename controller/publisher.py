"""Pushes the current snapshot to every data plane, and keeps them there.

One worker per data-plane address. Workers hold only "the latest snapshot" (no queue, so a burst of
changes costs one push, not many), retry with capped backoff, and every ``resync`` seconds ask the
data plane what it serves: a restarted pod reports no checksum and is re-pushed at once, and a
controller that restarts pushes nothing when every data plane already has the same checksum.

The channel is TLS, verified against the push CA with a fixed server name (data-plane pods are
addressed by IP), plus a bearer token; plain HTTP is allowed only to loopback (local tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from dataplane import push_body
from dataplane.snapshot import Snapshot

log = logging.getLogger("portcullis.publisher")


@dataclass(frozen=True)
class PushConfig:
    port: int = 9901
    token: str = ""
    ca_file: str | None = None  # None: plain HTTP, loopback only
    server_name: str = "portcullis-dataplane"
    resync: float = 1.0
    timeout: float = 10.0
    max_backoff: float = 5.0
    compress: bool = True  # gzip push bodies (Content-Encoding); the data plane inflates them bounded
    deltas: bool = True  # PATCH only what changed when the data plane serves the snapshot we pushed last


def next_generation(previous: int, now_ms: int) -> int:
    """Generations must only grow, across controller restarts and leader changes: wall-clock
    milliseconds do, and ``previous + 1`` covers clocks that step back."""
    return max(previous + 1, now_ms)


class PushBodies:
    """The push bodies of the current snapshot, built once and shared by every worker.

    A fleet's data planes mostly hold the same base and are sent the same snapshot with the same generation (the
    one stamped when it was wanted), so their bodies are identical: built per data plane, one change at 2,000
    Ingresses cost 10 x 57 ms of controller CPU for 10 data planes instead of 57 ms. Bodies of older snapshots are
    dropped when a newer one is asked for, so at most one snapshot's bodies are kept."""

    def __init__(self, encode: Callable[[str], bytes]) -> None:
        self._encode = encode
        self._built: dict[tuple[str | None, str, int], asyncio.Task[bytes]] = {}

    async def get(self, base: Snapshot | None, snapshot: Snapshot) -> bytes:
        """The encoded delta from ``base`` (None: the full snapshot) to ``snapshot``."""
        key = (base.checksum if base is not None else None, snapshot.checksum, snapshot.generation)
        task = self._built.get(key)
        if task is None:
            self._built = {k: t for k, t in self._built.items() if k[1] == snapshot.checksum}
            task = asyncio.ensure_future(asyncio.to_thread(self._build, base, snapshot))
            self._built[key] = task
        try:
            return await asyncio.shield(task)  # a cancelled worker must not cancel the others' body
        except Exception:
            if self._built.get(key) is task:  # a failed build is not kept: the worker's retry builds again
                del self._built[key]
            raise

    def _build(self, base: Snapshot | None, snapshot: Snapshot) -> bytes:
        if base is None:
            return self._encode(snapshot.to_json())
        return self._encode(json.dumps(push_body.make_delta(base, snapshot), separators=(",", ":")))


def encoder(config: PushConfig) -> Callable[[str], bytes]:
    def encode(text: str) -> bytes:
        raw = text.encode()
        return push_body.compress(raw, level=1) if config.compress else raw
    return encode


class DataPlaneWorker:
    def __init__(self, address: str, config: PushConfig, session: aiohttp.ClientSession,
                 ssl_context: ssl.SSLContext | None, bodies: PushBodies | None = None) -> None:
        self.address = address
        self.config = config
        self.session = session
        self.ssl_context = ssl_context
        self.desired: Snapshot | None = None
        self.wanted_at_ms = 0  # when ``desired`` was wanted: its generation, unless the data plane holds a later one
        self.bodies = bodies or PushBodies(encoder(config))
        self.confirmed: str | None = None  # checksum the data plane reported last
        self.acked: Snapshot | None = None  # the full snapshot this data plane accepted last (delta base)
        self.pushed_bytes: list[int] = []  # body bytes of each push, for benchmarks (last 100)
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.leading: Callable[[], bool] = lambda: True  # the Publisher's: is this replica the leader now?
        self.on_confirmed: Callable[[], None] = lambda: None  # the Publisher's: re-check "all in sync"
        host = f"[{address}]" if ":" in address else address
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://{host}:{config.port}/snapshot"

    def want(self, snapshot: Snapshot, at_ms: int | None = None) -> None:
        self.desired = snapshot
        self.wanted_at_ms = int(time.time() * 1000) if at_ms is None else at_ms
        self.wake.set()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"push {self.address}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            # Cleared before the sync, not after: a snapshot wanted while a push is in flight (a burst of
            # creates renders again during every push) starts the next push at once instead of after resync.
            self.wake.clear()
            try:
                await (self._sync() if self.leading() else self._fill())
                backoff = 0.2
                delay = self.config.resync
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.warning("push failed", extra={"dataplane": self.address, "error": str(exc)})
                self.confirmed = None
                delay = backoff
                backoff = min(backoff * 2, self.config.max_backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)

    async def _fill(self) -> None:
        """Not leading: push only to a data plane that holds no snapshot at all (one restarted while no
        controller leads, say with the apiserver unreachable): an empty data plane is never better than a
        slightly stale one. ``If-None-Match: *`` makes the data plane refuse (412) if anyone filled it first,
        so a standby never overwrites what the leader pushed."""
        desired = self.desired
        if desired is None:
            return
        generation, checksum = await self._get()
        self.confirmed = checksum
        if checksum is not None:
            return
        snapshot = desired.with_generation(next_generation(generation, int(time.time() * 1000)))
        body = await asyncio.to_thread(snapshot.to_json)
        async with self.session.put(self.url, data=body, headers={
                **self._headers(), "Content-Type": "application/json", "If-None-Match": "*"},
                ssl=self._ssl(), server_hostname=self._server_name()) as response:
            text = await response.text()
            if response.status == 412:  # filled meanwhile, by the leader or another replica
                return
            if response.status != 200:
                raise ValueError(f"PUT /snapshot (If-None-Match: *) answered {response.status}: {text[:500]}")
        self.confirmed = desired.checksum
        log.warning("filled an empty data plane while not leading", extra={
            "dataplane": self.address, "generation": snapshot.generation, "checksum": desired.checksum})

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.token}"}

    async def _get(self) -> tuple[int, str | None]:
        async with self.session.get(self.url, headers=self._headers(), ssl=self._ssl(),
                                    server_hostname=self._server_name()) as response:
            if response.status != 200:
                raise ValueError(f"GET /snapshot answered {response.status}")
            body = await response.json()
            return int(body.get("generation") or 0), body.get("checksum")

    async def _sync(self) -> None:
        desired = self.desired
        if desired is None:
            return
        generation, checksum = await self._get()
        self.confirmed = checksum
        if checksum == desired.checksum:
            self.acked = desired  # same checksum, same content: a valid base for the next delta
            return
        snapshot = desired.with_generation(next_generation(generation, self.wanted_at_ms))
        base = self.acked if self.config.deltas and self.acked is not None and self.acked.checksum == checksum \
            else None
        kind, size = "full", 0
        if base is not None:
            kind = "delta"
            body = await self.bodies.get(base, snapshot)
            size = len(body)
            status, text = await self._send("PATCH", body)
            if status == 412:  # it no longer serves the base (restarted, or another push won): send it all
                log.debug("delta refused, pushing the full snapshot", extra={"dataplane": self.address})
                base = None
            elif status != 200:
                raise ValueError(f"PATCH /snapshot answered {status}: {text[:500]}")
        if base is None:
            kind = "full"
            body = await self.bodies.get(None, snapshot)
            size += len(body)
            status, text = await self._send("PUT", body)
            if status != 200:
                raise ValueError(f"PUT /snapshot answered {status}: {text[:500]}")
        self.confirmed = desired.checksum
        self.acked = desired
        self.on_confirmed()
        self.pushed_bytes = [*self.pushed_bytes[-99:], size]
        log.info("pushed %s (%d bytes) to %s: generation %d, checksum %s", kind, size, self.address,
                 snapshot.generation, desired.checksum,
                 extra={"dataplane": self.address, "generation": snapshot.generation, "checksum": desired.checksum,
                        "push": kind, "bytes": size})

    async def _send(self, method: str, body: bytes) -> tuple[int, str]:
        headers = {**self._headers(), "Content-Type": "application/json"}
        if self.config.compress:
            headers["Content-Encoding"] = "gzip"
        async with self.session.request(method, self.url, data=body, headers=headers, ssl=self._ssl(),
                                        server_hostname=self._server_name()) as response:
            return response.status, await response.text()

    def _ssl(self) -> ssl.SSLContext | bool:
        return self.ssl_context if self.ssl_context is not None else False

    def _server_name(self) -> str | None:
        return self.config.server_name if self.ssl_context is not None else None


def push_ssl_context(config: PushConfig) -> ssl.SSLContext | None:
    if config.ca_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Publisher:
    """The set of workers follows the data-plane addresses; all of them want the latest snapshot."""

    def __init__(self, config: PushConfig, is_leader: Callable[[], bool] = lambda: True) -> None:
        """``is_leader`` is asked before every push: the leader pushes whatever differs, any other
        replica only fills data planes that report no snapshot."""
        self.config = config
        self.is_leader = is_leader
        self.ssl_context = push_ssl_context(config)
        self.workers: dict[str, DataPlaneWorker] = {}
        self.bodies = PushBodies(encoder(config))
        self.snapshot: Snapshot | None = None
        self.snapshot_at_ms = 0  # when the latest snapshot arrived: every worker's generation for it
        self._session: aiohttp.ClientSession | None = None
        self._synced = asyncio.Event()  # every data plane confirmed the latest snapshot

    async def __aenter__(self) -> Publisher:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for worker in list(self.workers.values()):
            await worker.stop()
        self.workers.clear()
        if self._session is not None:
            await self._session.close()

    def update(self, addresses: Sequence[str], snapshot: Snapshot | None) -> None:
        assert self._session is not None, "use Publisher as an async context manager"
        for address in addresses:
            if address not in self.workers:
                if self.ssl_context is None and not ipaddress.ip_address(address).is_loopback:
                    log.error("refusing to push key material over plain HTTP to a non-loopback address; "
                              "set --push-ca-file", extra={"dataplane": address})
                    continue
                worker = DataPlaneWorker(address, self.config, self._session, self.ssl_context, self.bodies)
                worker.leading = self.is_leader
                worker.on_confirmed = self._note_sync
                self.workers[address] = worker
                worker.start()
        for address in list(self.workers):
            if address not in addresses:
                worker = self.workers.pop(address)
                if worker.task is not None:
                    worker.task.cancel()  # a gone pod: nothing to finish
        if snapshot is not None and snapshot is not self.snapshot:
            self.snapshot, self.snapshot_at_ms = snapshot, int(time.time() * 1000)
        if self.snapshot is not None:
            for worker in self.workers.values():
                if worker.desired is not self.snapshot:
                    worker.want(self.snapshot, self.snapshot_at_ms)
        self._note_sync()

    def in_sync(self) -> dict[str, bool]:
        wanted = self.snapshot.checksum if self.snapshot else None
        return {a: w.confirmed == wanted for a, w in self.workers.items()}

    def _note_sync(self) -> None:
        if all(self.in_sync().values()):
            self._synced.set()
        else:
            self._synced.clear()

    async def wait_synced(self, timeout: float) -> None:
        """Until every data plane serves the latest snapshot, at most ``timeout`` seconds (a data plane
        that is down must not hold back what waits on this for ever)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), timeout)
