"""``portcullis dataplane --workers N``: a supervisor with the admin API and N serving processes.

Why a supervising parent holds the admin endpoint (rather than worker 0): the push must answer 200
only when *every* worker serves the snapshot, ``/readyz`` only when every worker is up, and a crashed
worker must come back with the current snapshot. All three need a process that outlives any worker
and knows them all; a worker that also answered the admin API would take it down with every crash.
The parent serves no client traffic, so its event loop is free for pushes and probes.

* Each worker (``dataplane/worker.py``) is a fresh interpreter with its own event loop and its own
  ``SO_REUSEPORT`` HTTPS and HTTP listeners: the kernel spreads new connections across them. The
  parent reserves both ports first (bound, never listening, so it gets no connections), which also
  fixes port 0 to one port for all.
* The channel to each worker is a private ``socketpair`` (it carries private keys).
* A push is two-phase: every worker builds the snapshot (``prepare``); only when all succeeded does
  any of them swap (``commit``); otherwise all ``abort`` and the push is refused with the first
  worker's reasons. Pushes and worker (re)starts are serialised by one lock, so a restarting worker
  gets exactly what the others serve, applied before it binds its listeners.
* Metrics: prometheus-client multiprocess mode in a per-pod directory (0700) that the parent sums;
  the ``snapshot_*`` and certificate series are the parent's (one push is one apply). A worker cannot delete
  a series from its file, so the series of hosts and pools the applied snapshot no longer has are left out
  by the parent when it sums (``drop_removed``); the files keep one small entry per series a worker ever wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Collection, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from dataplane import worker_channel
from dataplane.admin import ApplyUnavailable
from dataplane.http.table import host_labels
from dataplane.metrics import Metrics
from dataplane.runtime import DataPlaneConfig
from dataplane.snapshot import Snapshot

log = logging.getLogger("portcullis.dataplane.workers")

START_TIMEOUT = 60.0  # a worker applying a 10k-host snapshot takes seconds before it listens
REPLY_TIMEOUT = 300.0
_PARENT_SERIES = ("snapshot_generation", "snapshot_applies", "snapshot_apply_seconds", "certificate_not_after_seconds")


class PoolMetrics(Metrics):
    """The parent's own series plus the workers' series from the multiprocess directory, summed."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory
        self._live: tuple[frozenset[str], frozenset[str]] | None = None  # hosts, pools; None: nothing applied

    def retain_series(self, hosts: Collection[str], pools: Collection[str]) -> int:
        self._live = (frozenset(hosts), frozenset(pools))
        return super().retain_series(hosts, pools)

    def render(self) -> bytes:
        workers = self._workers()
        if self._live is not None:
            workers = drop_removed(workers, *self._live)
        return generate_latest(_Families(merge_families(self.registry.collect(), workers)))

    def _workers(self) -> list[Metric]:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        return list(registry.collect())


def merge_families(own: Iterable[Metric], workers: Iterable[Metric]) -> list[Metric]:
    """The parent's families for the series it owns, the workers' (already summed) for all others."""
    owned = {"portcullis_" + name for name in _PARENT_SERIES}
    merged = [f for f in own if f.name in owned]
    merged.extend(f for f in workers if f.name not in owned)
    return sorted(merged, key=lambda f: f.name)


def drop_removed(families: list[Metric], hosts: Collection[str], pools: Collection[str]) -> list[Metric]:
    """The workers' families without the samples of hosts and pools the applied snapshot does not have: what
    ``Metrics.retain_series`` removes in one process (only those series carry a ``host`` or ``pool`` label)."""
    for family in families:
        family.samples = [s for s in family.samples if _kept(s.labels.get("host"), hosts)
                          and _kept(s.labels.get("pool"), pools)]
    return families


def _kept(value: str | None, live: Collection[str]) -> bool:
    return value is None or value in live


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def reserve_port(bind: str, port: int) -> socket.socket:
    """A bound, non-listening ``SO_REUSEPORT`` socket: holds the port (and resolves 0) for the workers."""
    family, _, _, _, address = socket.getaddrinfo(bind or None, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_ports(bind: str, ports: list[int]) -> list[socket.socket]:
    """One reservation per listener, in the order given; refuses two listeners on one port.

    Two ``SO_REUSEPORT`` reservations of the same port (same user) do not conflict: the HTTPS and the
    HTTP workers' listeners would join one group and each get the other's connections (plain HTTP
    answered by the TLS listener). So explicit ports are reserved first, an automatic (0) one that lands
    on a port reserved here is drawn again, and equal explicit ports are refused.
    """
    taken: dict[int, socket.socket] = {}
    try:
        for index in sorted(range(len(ports)), key=lambda i: ports[i] == 0):
            sock = reserve_port(bind, ports[index])
            held: list[socket.socket] = []  # automatic ports that landed on one reserved here: kept until done
            while ports[index] == 0 and len(held) < 8 and \
                    sock.getsockname()[1] in {s.getsockname()[1] for s in taken.values()}:
                held.append(sock)
                sock = reserve_port(bind, 0)
            for extra in held:
                extra.close()
            taken[index] = sock
        got = [taken[i].getsockname()[1] for i in range(len(ports))]
        if len(set(got)) != len(got):
            raise OSError(errno.EADDRINUSE, f"the HTTPS and HTTP listeners need different ports (got {got})")
    except BaseException:
        for sock in taken.values():
            sock.close()
        raise
    return [taken[i] for i in range(len(ports))]


@dataclasses.dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pid: int
    exited: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def request(self, header: dict[str, Any], body: bytes = b"") -> dict[str, Any]:
        """One exchange, bounded as a whole: a worker that stops reading (a snapshot is megabytes) or
        answering fails the push instead of hanging the admin API."""
        return await asyncio.wait_for(self._exchange(header, body), REPLY_TIMEOUT)

    async def _exchange(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        self.writer.write(worker_channel.encode(header, body))
        await self.writer.drain()
        reply, _ = await worker_channel.read(self.reader, worker_channel.MAX_HEADER)
        return reply


class WorkerPool:
    """What the admin API drives under ``--workers N`` (the ``SnapshotTarget`` a ``DataPlane`` is in one process)."""

    def __init__(self, config: DataPlaneConfig, count: int, log_level: str = "info", log_format: str = "json") -> None:
        self.config = config
        self.count = count
        self._log_env = {"PORTCULLIS_LOG_LEVEL": log_level, "PORTCULLIS_LOG_FORMAT": log_format}
        self._own_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="portcullis-metrics-")
        os.chmod(self.metrics_dir, 0o700)
        for stale in os.listdir(self.metrics_dir):  # a per-pod directory: a previous run's files are not ours
            if stale.endswith(".db"):
                os.unlink(os.path.join(self.metrics_dir, stale))
        self.metrics = PoolMetrics(self.metrics_dir)
        self._snapshot = Snapshot()
        self._checksum: str | None = None
        self._applied = False
        self._workers: dict[int, _Worker] = {}
        self._lock = asyncio.Lock()
        self._stopping = False
        self._supervisors: list[asyncio.Task[None]] = []
        self._reserved: list[socket.socket] = []
        self.https_port = 0
        self.http_port = 0

    # --- what the admin API reads -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._applied

    @property
    def serving(self) -> bool:
        """Every worker is up (and so serves the applied snapshot) and the pod is not draining."""
        return not self._stopping and len(self._workers) == self.count

    @property
    def generation(self) -> int:
        return self._snapshot.generation

    @property
    def checksum(self) -> str | None:
        return self._checksum

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    # --- apply --------------------------------------------------------------------------------

    async def apply_async(self, snapshot: Snapshot) -> list[str]:
        """Two-phase apply on every worker; [] only once all of them serve ``snapshot``."""
        async with self._lock:
            started = time.perf_counter()
            workers = list(self._workers.values())
            if len(workers) < self.count:
                raise ApplyUnavailable(f"{self.count - len(workers)} worker(s) restarting; push again")
            body = await asyncio.to_thread(lambda: snapshot.to_json().encode())
            replies = await asyncio.gather(*(w.request({"op": "prepare"}, body) for w in workers),
                                           return_exceptions=True)
            errors: list[str] = []
            for worker, reply in zip(workers, replies, strict=True):
                if isinstance(reply, BaseException):
                    await self._abort(workers)
                    raise ApplyUnavailable(f"worker {worker.index} exited while applying; push again")
                if reply.get("errors") and not errors:
                    errors = [str(e) for e in reply["errors"]]
            if errors:
                await self._abort(workers)
                self.metrics.snapshot_applies.labels("invalid").inc()
                log.warning("snapshot refused", extra={"generation": snapshot.generation, "errors": errors[:20]})
                return errors
            # From here the snapshot is the pod's: a worker that dies now is restarted with it.
            self._snapshot, self._applied = snapshot, True
            self._checksum = snapshot.checksum or await asyncio.to_thread(lambda: snapshot.canonical().checksum)
            await asyncio.gather(*(w.request({"op": "commit"}) for w in workers), return_exceptions=True)
            self.metrics.retain_series(host_labels(snapshot), {p.id for p in snapshot.pools})
            self.metrics.snapshot_generation.set(snapshot.generation)
            self.metrics.snapshot_applies.labels("applied").inc()
            self.metrics.snapshot_apply_seconds.observe(time.perf_counter() - started)
            await asyncio.to_thread(self.metrics.report_certificates, snapshot)
            log.info("snapshot applied", extra={"generation": snapshot.generation, "checksum": self._checksum,
                                                "workers": len(workers)})
            return []

    async def _abort(self, workers: list[_Worker]) -> None:
        await asyncio.gather(*(w.request({"op": "abort"}) for w in workers if not w.exited.is_set()),
                             return_exceptions=True)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Reserve the ports, start every worker and wait until all listen (raises OSError if one cannot)."""
        cfg = self.config
        self._reserved = reserve_ports(cfg.bind, [cfg.https_port, cfg.http_port])
        self.https_port = self._reserved[0].getsockname()[1]
        self.http_port = self._reserved[1].getsockname()[1]
        try:
            for index in range(self.count):
                async with self._lock:
                    self._workers[index] = await self._spawn(index)
        except BaseException:
            await self.stop(drain_timeout=0)
            raise
        self._supervisors = [asyncio.create_task(self._supervise(i)) for i in range(self.count)]

    def _worker_config(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self.config)
        fields.update(https_port=self.https_port, http_port=self.http_port, reuse_port=True, admin_enabled=False,
                      admin_token=None, state_file=None)
        return fields

    async def _spawn(self, index: int) -> _Worker:
        """Start worker ``index`` with the current snapshot; return once it listens. Call with the lock held."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {**os.environ, **self._log_env, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
               "PORTCULLIS_WORKER_INDEX": str(index)}
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dataplane.worker", str(child_end.fileno()),
                pass_fds=(child_end.fileno(),), env=env, stdin=asyncio.subprocess.DEVNULL)
        finally:
            child_end.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent_end)
        body = self._snapshot.to_json().encode() if self._applied else b""
        writer.write(worker_channel.encode({"op": "start", "config": self._worker_config()}, body))
        try:
            await writer.drain()
            hello, _ = await asyncio.wait_for(worker_channel.read(reader, worker_channel.MAX_HEADER), START_TIMEOUT)
        except (TimeoutError, worker_channel.ChannelClosed, ConnectionError, ValueError) as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            writer.close()
            raise OSError(f"worker {index} did not start: {exc}") from exc
        if hello.get("op") != "listening":
            await process.wait()
            writer.close()
            raise OSError(f"worker {index}: {hello.get('error', hello)}")
        log.info("worker listening", extra={"worker": index, "pid": process.pid})
        return _Worker(index, process, reader, writer, process.pid)

    async def _supervise(self, index: int) -> None:
        """Wait for worker ``index`` to exit; unless the pod is stopping, start it again with the current snapshot."""
        backoff = 0.1
        while not self._stopping:
            worker = self._workers.get(index)
            if worker is not None:
                code = await worker.process.wait()
                worker.exited.set()
                worker.writer.close()
                mark_process_dead(worker.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
                if self._workers.get(index) is worker:
                    del self._workers[index]
                if self._stopping:
                    return
                log.error("worker exited; restarting it", extra={"worker": index, "pid": worker.pid, "code": code})
            async with self._lock:
                if self._stopping:
                    return
                try:
                    self._workers[index] = await self._spawn(index)
                    backoff = 0.1
                    continue
                except OSError as exc:
                    log.error("worker restart failed", extra={"worker": index, "error": str(exc)})
            await asyncio.sleep(backoff)  # a crash loop must not spin the parent
            backoff = min(backoff * 2, 5.0)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """SIGTERM every worker (each drains its connections for ``drain_timeout``) and wait for all of them."""
        self._stopping = True
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        workers = list(self._workers.values())
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.terminate() if timeout > 0 else worker.process.kill()
        for worker in workers:
            try:
                await asyncio.wait_for(worker.process.wait(), timeout + 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            worker.writer.close()
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._workers.clear()
        self._close_reserved()
        if self._own_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _close_reserved(self) -> None:
        for sock in self._reserved:
            sock.close()
        self._reserved = []
