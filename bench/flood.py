"""Connection flood (issue 14): a well-behaved client's p99 and success rate while a flood of TCP connections hits
the HTTPS port, Portcullis (``--max-connections``, optionally ``--max-connections-per-ip``) and HAProxy
(``maxconn``) side by side.

The flood opens up to ``--flood`` connections from 127.0.0.1 as fast as the client can (``--parallel`` connects
in flight), holds each idle (no ClientHello: the cheapest attack, it costs the proxy a descriptor and a slot) and
keeps at most ``--hold`` open, closing the oldest beyond that; it stops after ``--seconds``. Meanwhile the
well-behaved client, from 127.0.0.2, makes one HTTPS request (new TLS connection, offload host, 1 KiB body) every
``--interval`` seconds with a 3 s budget each. Before the flood the same client runs alone for a baseline.

    .venv/bin/python -m bench.flood [--flood 20000] [--cap 2000] [--seconds 10] [--json bench/results/flood.json]

Everything is bounded: connection count, time, and every connect/request has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import ssl
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.peers import (
    BIND,
    HOSTS,
    ROOT,
    Ports,
    World,
    make_world,
    raise_own_nofile,
    spawn,
    start_backend,
    start_haproxy,
    wait_port,
    wait_ready,
    write_configs,
)

PORTS = Ports(backend_http=28080, backend_https=28443, haproxy_passthrough=30443, haproxy_terminate=30444,
              nginx_passthrough=31443, nginx_terminate=31444, portcullis_https=32443, portcullis_http=32080,
              portcullis_admin=32901)  # apart from bench.py's, so both can run
GOOD_SOURCE = "127.0.0.2"


@dataclass
class Result:
    proxy: str
    cap: str
    baseline_p50_ms: float
    baseline_p99_ms: float
    flood_p50_ms: float
    flood_p99_ms: float
    flood_success: float  # fraction of the well-behaved client's requests answered 200 within 3 s
    flood_requests: int
    flood_opened: int  # flood TCP connects that completed (the kernel accepted them; the proxy may close at once)
    flood_failed: int  # flood connects refused, reset or timed out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_request(port: int, ctx: ssl.SSLContext, host: str) -> float | None:
    """Seconds for one HTTPS GET on a new connection, or None (refused, reset, not 200, over 3 s)."""
    started = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(3):
            reader, writer = await asyncio.open_connection(BIND, port, ssl=ctx, server_hostname=host,
                                                           local_addr=(GOOD_SOURCE, 0))
            writer.write(f"GET /1k HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = await reader.read()
        ok = data.startswith(b"HTTP/1.1 200")
    except (OSError, TimeoutError, ssl.SSLError):
        ok = False
    finally:
        if writer is not None:
            writer.close()
    return time.perf_counter() - started if ok else None


async def good_client(port: int, ctx: ssl.SSLContext, host: str, seconds: float, interval: float,
                      ) -> tuple[list[float], int]:
    """Requests every ``interval`` for ``seconds`` (each its own task, so a stalled one does not delay the next)."""
    tasks = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tasks.append(asyncio.create_task(one_request(port, ctx, host)))
        await asyncio.sleep(interval)
    results = await asyncio.gather(*tasks)
    return [r for r in results if r is not None], len(results)


async def flood(port: int, total: int, parallel: int, hold: int, stop: asyncio.Event) -> tuple[int, int]:
    opened: collections.deque[asyncio.StreamWriter] = collections.deque()
    counts = [0, 0]
    gate = asyncio.Semaphore(parallel)

    async def connect() -> None:
        try:
            async with asyncio.timeout(3):
                _, writer = await asyncio.open_connection(BIND, port)
        except (OSError, TimeoutError):
            counts[1] += 1
            return
        finally:
            gate.release()
        counts[0] += 1
        opened.append(writer)
        while len(opened) > hold:
            opened.popleft().close()

    tasks = []
    for _ in range(total):
        if stop.is_set():
            break
        await gate.acquire()
        tasks.append(asyncio.create_task(connect()))
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    while opened:
        opened.popleft().close()
    return counts[0], counts[1]


async def measure(proxy: str, cap: str, port: int, world: World, args: argparse.Namespace) -> Result:
    ctx = ssl.create_default_context(cadata=world.ca_pem)
    host = HOSTS["offload"]
    base, _ = await good_client(port, ctx, host, args.baseline, args.interval)
    # The flood runs in a process of its own, so its connects do not slow the well-behaved client's loop.
    flooder = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.flood", "flood", str(port), str(args.flood), str(args.parallel), str(args.hold),
        str(args.seconds + 0.5), stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    await asyncio.sleep(0.5)  # let the flood reach the cap first
    latencies, sent = await good_client(port, ctx, host, args.seconds, args.interval)
    out, _ = await asyncio.wait_for(flooder.communicate(), args.seconds + 30)
    opened, failed = json.loads(out)
    return Result(proxy, cap, round(percentile(base, 0.5) * 1000, 2), round(percentile(base, 0.99) * 1000, 2),
                  round(percentile(latencies, 0.5) * 1000, 2), round(percentile(latencies, 0.99) * 1000, 2),
                  round(len(latencies) / max(1, sent), 4), sent, opened, failed)


def flood_process(argv: list[str]) -> int:
    """``flood PORT TOTAL PARALLEL HOLD SECONDS``: prints [connects done, connects failed]."""
    port, total, parallel, hold = (int(a) for a in argv[:4])
    seconds = float(argv[4])
    raise_own_nofile(20000)

    async def main() -> tuple[int, int]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        return await flood(port, total, parallel, hold, stop)

    print(json.dumps(asyncio.run(main())), flush=True)
    return 0


def serve_portcullis(argv: list[str]) -> int:
    """The data plane under test, in its own process: ``portcullis local``'s rendering, plus the limit flags."""
    from controller.local import render_paths
    from controller.render import RenderConfig
    from dataplane.runtime import DataPlane, DataPlaneConfig
    from dataplane.server import _runner

    work, cap, per_ip = Path(argv[0]), int(argv[1]), int(argv[2])
    rendered = render_paths([str(work / "manifests")], RenderConfig())
    assert rendered.snapshot is not None, rendered.error

    async def main() -> int:
        dp = DataPlane(DataPlaneConfig(bind=BIND, https_port=PORTS.portcullis_https, http_port=PORTS.portcullis_http,
                                       admin_port=PORTS.portcullis_admin, max_connections=cap,
                                       max_connections_per_ip=per_ip))
        await dp.start()
        assert rendered.snapshot is not None
        errors = dp.apply(rendered.snapshot)
        assert not errors, errors
        await asyncio.Event().wait()  # until SIGTERM ends the process
        return 0

    return _runner(main())


def run(args: argparse.Namespace) -> list[Result]:
    raise_own_nofile(20000)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="portcullis-flood-") as tmp:
        world = make_world(Path(tmp), PORTS)
        configs = write_configs(world)
        haproxy_conf = configs["haproxy"]
        haproxy_conf.write_text(haproxy_conf.read_text().replace("maxconn 9900", f"maxconn {args.cap}"))
        backend = start_backend(world, configs["backend"], None)
        try:
            runs: list[tuple[str, str, list[str] | None]] = [
                ("haproxy", f"maxconn {args.cap}", None),
                ("portcullis", f"--max-connections {args.cap}", [str(args.cap), "0"]),
                ("portcullis", f"--max-connections {args.cap} --max-connections-per-ip {args.per_ip}",
                 [str(args.cap), str(args.per_ip)]),
            ]
            for proxy, cap, extra in runs:
                if proxy == "haproxy":
                    proc = start_haproxy(world, haproxy_conf, None)
                    port = PORTS.haproxy_terminate
                else:
                    assert extra is not None
                    proc = spawn("portcullis", [sys.executable, "-m", "bench.flood", "serve", str(world.dir), *extra],
                                 None, world.dir, env={**os.environ, "PYTHONPATH": str(ROOT)})
                    wait_port(PORTS.portcullis_https, proc)
                    wait_ready(world, proc, 30)
                    port = PORTS.portcullis_https
                try:
                    results.append(asyncio.run(measure(proxy, cap, port, world, args)))
                    print(json.dumps(asdict(results[-1])), flush=True)
                finally:
                    proc.stop()
        finally:
            backend.stop()
    return results


def table(results: list[Result]) -> str:
    lines = ["| proxy | cap | alone p50 / p99 ms | during flood p50 / p99 ms | success | flood connects done / "
             "failed |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.proxy} | {r.cap} | {r.baseline_p50_ms} / {r.baseline_p99_ms} | {r.flood_p50_ms} / "
                     f"{r.flood_p99_ms} | {r.flood_success:.1%} of {r.flood_requests} | {r.flood_opened} / "
                     f"{r.flood_failed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve_portcullis(argv[1:])
    if argv[:1] == ["flood"]:
        return flood_process(argv[1:])
    parser = argparse.ArgumentParser(prog="bench.flood", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flood", type=int, default=20000, help="flood connections opened at most")
    parser.add_argument("--parallel", type=int, default=256, help="flood connects in flight")
    parser.add_argument("--hold", type=int, default=15000, help="flood connections held open at most")
    parser.add_argument("--cap", type=int, default=2000, help="max connections of both proxies")
    parser.add_argument("--per-ip", type=int, default=500, help="Portcullis --max-connections-per-ip (third run)")
    parser.add_argument("--seconds", type=float, default=10.0, help="flood duration")
    parser.add_argument("--baseline", type=float, default=3.0, help="seconds of the well-behaved client alone")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between well-behaved requests")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = run(args)
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
