"""One serving process of ``portcullis dataplane --workers N`` (started by ``dataplane/workers.py``).

``python -m dataplane.worker FD``: FD is this worker's end of the channel to the supervisor. The
supervisor sends the configuration and the snapshot currently served; the worker applies it
*before* binding its ``SO_REUSEPORT`` listeners, so a restarted worker never answers from an empty
table. Afterwards it answers ``prepare``/``commit``/``abort`` (a two-phase apply: the supervisor
commits only when every worker built the snapshot). It has no admin listener. SIGTERM drains it;
so does the supervisor's end closing (the supervisor died: no orphan keeps serving a stale snapshot).

Its metrics go to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by the supervisor before this
interpreter imported prometheus_client), which the supervisor sums.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from typing import Any

from prometheus_client import Counter

from dataplane import worker_channel
from dataplane.edge import Closable, Tracker
from dataplane.gc_pause import parse_snapshot
from dataplane.runtime import DataPlane, DataPlaneConfig, Prepared
from dataplane.snapshot import Snapshot, SnapshotFormatError

log = logging.getLogger("portcullis.dataplane.worker")


class CountingTracker(Tracker):
    """A tracker that also counts the connections this worker serves (the spread across workers)."""

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self._counter = counter.labels(os.environ.get("PORTCULLIS_WORKER_INDEX", "0"))

    def add(self, transport: Closable) -> None:
        super().add(transport)
        self._counter.inc()


def config_from_header(fields: dict[str, Any]) -> DataPlaneConfig:
    known = {f.name for f in dataclasses.fields(DataPlaneConfig)}
    values = {k: v for k, v in fields.items() if k in known}
    return DataPlaneConfig(**values)


async def _apply_initial(dataplane: DataPlane, body: bytes) -> list[str]:
    if not body:
        return []
    try:
        snapshot = await asyncio.to_thread(parse_snapshot, body)
    except SnapshotFormatError as exc:
        return [str(exc)]
    return await dataplane.apply_async(snapshot)


async def serve(channel: socket.socket) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    header, body = await worker_channel.read(reader, 1 << 31)
    config = config_from_header(header["config"])
    from dataplane.metrics import Metrics

    metrics = Metrics()
    dataplane = DataPlane(config, metrics, tracker=CountingTracker(metrics.worker_connections))
    errors = await _apply_initial(dataplane, body)
    if errors:  # the supervisor applied it before: only a bug gets here; start empty rather than not at all
        log.error("current snapshot refused at start", extra={"errors": errors[:5]})
    try:
        await dataplane.start()
    except OSError as exc:
        writer.write(worker_channel.encode({"op": "failed", "error": f"cannot bind a listener: {exc}"}))
        await writer.drain()
        return 1
    writer.write(worker_channel.encode({"op": "listening", "pid": os.getpid(), "https_port": dataplane.https_port,
                                        "http_port": dataplane.http_port, "generation": dataplane.generation}))
    await writer.drain()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # a terminal's ^C reaches the group: the supervisor decides
    commands = asyncio.create_task(_commands(dataplane, reader, writer, config.admin_max_body))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({commands, stopping}, return_when=asyncio.FIRST_COMPLETED)
    commands.cancel()
    stopping.cancel()
    await dataplane.stop()
    writer.close()
    return 0


async def _commands(dataplane: DataPlane, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    max_body: int) -> None:
    """Answer the supervisor until it closes its end."""
    pending: tuple[Snapshot, Prepared] | None = None
    while True:
        try:
            header, body = await worker_channel.read(reader, max_body)
        except worker_channel.ChannelClosed:
            log.warning("supervisor gone: draining")
            return
        op = header.get("op")
        reply: dict[str, Any] = {"op": op, "id": header.get("id")}
        if op == "prepare":
            pending = None
            try:
                snapshot = await asyncio.to_thread(parse_snapshot, body)
                result = await dataplane.prepare(snapshot)
            except SnapshotFormatError as exc:
                result = [str(exc)]
            if isinstance(result, list):
                reply["errors"] = result
            else:
                pending = (snapshot, result)
                reply["errors"] = []
        elif op == "commit" and pending is not None:
            dataplane.commit(*pending)
            pending = None
            reply["generation"] = dataplane.generation
        elif op == "abort":
            pending = None
        else:
            reply["errors"] = [f"unexpected command {op!r}"]
        writer.write(worker_channel.encode(reply))
        await writer.drain()


def main(argv: list[str]) -> int:
    from dataplane.server import _runner, configure_logging

    configure_logging(os.environ.get("PORTCULLIS_LOG_LEVEL", "info"), os.environ.get("PORTCULLIS_LOG_FORMAT", "json"))
    channel = socket.socket(fileno=int(argv[0]))
    with contextlib.suppress(KeyboardInterrupt):
        return _runner(serve(channel))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
