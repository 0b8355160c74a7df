"""``portcullis local -f PATH...``: the whole product on one machine, no cluster.

The same renderer the controller runs turns the manifests into a snapshot, and one in-process data
plane serves it. The files are watched (polled: no extra dependency, and edits from any editor or
``git checkout`` are seen alike); a change re-renders and applies, a broken edit is reported and
the last good snapshot keeps serving, exactly as a bad push is refused in a cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from controller.manifests import ManifestError, expand_paths, load_paths
from controller.model import Inputs
from controller.problems import Problem
from controller.render import RenderConfig, render
from controller.render_cli import add_render_config_arguments, print_problems, render_config
from dataplane.access_log import FORMATS as ACCESS_LOG_FORMATS
from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.snapshot import Snapshot

log = logging.getLogger("portcullis.local")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_render_config_arguments(parser)
    env = os.environ.get
    parser.add_argument("--bind", default=env("PORTCULLIS_BIND", "127.0.0.1"), help="address to listen on")
    parser.add_argument("--https-port", type=int, default=int(env("PORTCULLIS_HTTPS_PORT", "8443")))
    parser.add_argument("--http-port", type=int, default=int(env("PORTCULLIS_HTTP_PORT", "8080")))
    parser.add_argument("--admin-port", type=int, default=int(env("PORTCULLIS_ADMIN_PORT", "9901")),
                        help="/metrics, /readyz and the snapshot API (plain HTTP: loopback only)")
    parser.add_argument("--https-redirect-port", type=int, default=None,
                        help="port in redirects to https (default: --https-port)")
    parser.add_argument("--watch-interval", type=float, default=0.5, help="seconds between file checks (0: off)")
    parser.add_argument("--access-log", default=env("PORTCULLIS_ACCESS_LOG") or "json",
                        choices=list(ACCESS_LOG_FORMATS),
                        help="one line per request / passthrough connection to stdout (as portcullis dataplane)")


@dataclass(frozen=True)
class Rendered:
    snapshot: Snapshot | None  # None: the input could not be read at all
    problems: tuple[Problem, ...]
    error: str = ""


def render_paths(paths: Sequence[str], config: RenderConfig) -> Rendered:
    try:
        objects = load_paths(paths)
    except ManifestError as exc:
        return Rendered(None, (), str(exc))
    inputs, problems = Inputs.from_objects(objects)
    snapshot, render_problems = render(inputs, config)
    return Rendered(snapshot, tuple(sorted(set(problems) | set(render_problems))))


def fingerprint(paths: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    """What changes when any watched file is edited, added or removed."""
    try:
        files = expand_paths(paths)
    except ManifestError:
        return ()
    marks: list[tuple[str, int, int]] = []
    for path in files:
        with contextlib.suppress(OSError):
            stat = os.stat(path)
            marks.append((path, stat.st_mtime_ns, stat.st_size))
    return tuple(marks)


class LocalServer:
    """Render → apply loop around one data plane; reusable from tests and the benchmark."""

    def __init__(self, paths: Sequence[str], render_config: RenderConfig, dataplane_config: DataPlaneConfig,
                 out: TextIO | None = None) -> None:
        self.paths = list(paths)
        self.render_config = render_config
        self.dataplane = DataPlane(dataplane_config)
        self.out: TextIO = out if out is not None else sys.stderr
        self._generation = 0
        self._fingerprint: tuple[tuple[str, int, int], ...] = ()

    async def reload(self) -> list[str]:
        """Render and apply; returns why nothing changed (empty: applied or already current)."""
        self._fingerprint = fingerprint(self.paths)
        rendered = await asyncio.to_thread(render_paths, self.paths, self.render_config)  # off the serving loop
        if rendered.snapshot is None:
            self._say(f"cannot read manifests: {rendered.error}; still serving generation {self._generation}")
            return [rendered.error]
        print_problems(list(rendered.problems), self.out)
        if rendered.snapshot.checksum == self.dataplane.checksum:
            return []
        self._generation += 1
        errors = await self.dataplane.apply_async(rendered.snapshot.with_generation(self._generation))
        if errors:
            self._generation -= 1
            for error in errors:
                self._say(f"snapshot refused: {error}")
            return errors
        self._say(f"applied generation {self._generation} ({len(rendered.snapshot.tls_hosts)} TLS hosts, "
                  f"{len(rendered.snapshot.virtual_hosts)} HTTP hosts)")
        return []

    def changed(self) -> bool:
        return fingerprint(self.paths) != self._fingerprint

    async def watch(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if not stop.is_set() and self.changed():
                self._say("manifests changed; re-rendering")
                await self.reload()

    def _say(self, text: str) -> None:
        print(f"portcullis local: {text}", file=self.out, flush=True)


def _summary(server: LocalServer) -> str:
    dp, snap = server.dataplane, server.dataplane.snapshot
    bind = server.dataplane.config.bind
    lines = [f"serving HTTPS on {bind}:{dp.https_port}, HTTP on {bind}:{dp.http_port}, "
             f"admin on {bind}:{dp.admin_port} (/metrics, /readyz)"]
    for row in snap.tls_hosts:
        lines.append(f"  https {row.host:<32} {row.mode}")
    for vhost in snap.virtual_hosts:
        if not vhost.tls:
            lines.append(f"  http  {vhost.host or '*':<32} plain HTTP")
    example = next((r.host for r in snap.tls_hosts if "*" not in r.host), None)
    if example:
        lines.append(f"try: curl --cacert deploy/examples/ca.crt --resolve {example}:{dp.https_port}:{bind} "
                     f"https://{example}:{dp.https_port}/")
    return "\n".join(lines)


async def serve(args: argparse.Namespace) -> int:
    config = DataPlaneConfig(
        bind=args.bind, https_port=args.https_port, http_port=args.http_port, admin_port=args.admin_port,
        https_redirect_port=args.https_redirect_port or args.https_port, access_log=args.access_log,
    )
    server = LocalServer(args.paths, render_config(args), config)
    if await server.reload() and server.dataplane.checksum is None:
        return 2
    try:
        await server.dataplane.start()
    except OSError as exc:
        print(f"portcullis local: cannot listen: {exc}", file=sys.stderr)
        return 2
    print(_summary(server), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.watch_interval > 0:
        await server.watch(args.watch_interval, stop)
    else:
        await stop.wait()
    await server.dataplane.stop(drain_timeout=2.0)
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.paths:
        print("portcullis local: give at least one -f PATH (try: -f deploy/examples)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps odd platforms working
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))
