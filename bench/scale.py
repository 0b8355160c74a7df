"""Scale: render and apply time for many Ingresses, event-loop stalls while applying, latency of an
unrelated request during an apply, and resident memory with many idle TLS connections held open.

Render and apply use the Python API (``controller.render.render``, ``dataplane.runtime.DataPlane``);
the snapshot is pushed through the data plane's own admin API (``PUT /snapshot``), in this process,
on uvloop, so a ticker task sees every stall the push causes. The unrelated request is made by a
separate process (``python bench/scale.py probe``) so it sees the stall as a client does. The idle
connections are held by another process (``python bench/scale.py hold``).

Subcommands of this file (used by bench.py; run them by hand only to debug):
  probe HOST PORT SECONDS    keep-alive GETs /1k every 2 ms, prints JSON [[unix_start, seconds], ...]
  hold HOST PORT N SECONDS   opens N TLS connections, prints "HELD k", holds until stdin closes or SECONDS
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from bench import peers
from bench.peers import BIND, HOSTS, World

NS = "scale"
TOKEN = "bench-token"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def make_objects(world: World, n: int) -> list[dict[str, Any]]:
    """``n`` Ingresses (alternately offload and reencrypt), each with its own certificate, plus the
    bench's ``offload.bench.test`` Ingress as the unrelated host the probe asks for."""
    from tests.pki import CA

    ca = CA("Portcullis Scale CA")
    p = world.ports
    objs: list[dict[str, Any]] = [
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "portcullis"},
         "spec": {"controller": "portcullis.io/ingress-controller"}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "bench-ca", "namespace": NS},
         "data": {"ca.crt": _b64(world.ca_pem)}},
    ]
    for svc, port_name, port, target in (("web", "http", 80, p.backend_http),
                                         ("secure-web", "https", 443, p.backend_https)):
        objs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "namespace": NS},
                     "spec": {"ports": [{"name": port_name, "port": port, "targetPort": target}]}})
        objs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{svc}-1", "namespace": NS, "labels": {"kubernetes.io/service-name": svc}},
                     "addressType": "IPv4", "endpoints": [{"addresses": [BIND], "conditions": {"ready": True}}],
                     "ports": [{"name": port_name, "port": target}]})

    def ingress(name: str, host: str, secret: str, reencrypt: bool, stamp: int) -> dict[str, Any]:
        ann = {"portcullis.io/hsts": "off"}
        svc, port = ("web", 80)
        if reencrypt:
            ann.update({"portcullis.io/tls-mode": "reencrypt", "portcullis.io/backend-ca-secret": "bench-ca",
                        "portcullis.io/backend-server-name": peers.BACKEND_NAME})
            svc, port = ("secure-web", 443)
        return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": name, "namespace": NS, "annotations": ann,
                             "creationTimestamp": f"2026-01-01T00:{stamp // 60 % 60:02d}:{stamp % 60:02d}Z"},
                "spec": {"ingressClassName": "portcullis", "tls": [{"hosts": [host], "secretName": secret}],
                         "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
                             "service": {"name": svc, "port": {"number": port}}}}]}}]}}

    unrelated = (world.dir / "offload.crt").read_text(), (world.dir / "offload.key").read_text()
    objs.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                 "metadata": {"name": "unrelated-tls", "namespace": NS},
                 "data": {"tls.crt": _b64(unrelated[0]), "tls.key": _b64(unrelated[1])}})
    objs.append(ingress("unrelated", HOSTS["offload"], "unrelated-tls", False, 0))
    for i in range(n):
        host = f"h{i}.scale.bench.test"
        leaf = ca.issue(host)
        objs.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                     "metadata": {"name": f"h{i}-tls", "namespace": NS},
                     "data": {"tls.crt": _b64(leaf.cert_pem), "tls.key": _b64(leaf.key_pem)}})
        objs.append(ingress(f"h{i}", host, f"h{i}-tls", i % 2 == 1, i + 1))
    return objs


# --- render + apply ---------------------------------------------------------------------------------


class GCWatch:
    """Longest garbage-collector pause (any thread: a full collection holds the GIL, so it stalls the loop)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._start = 0.0

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((int(info.get("generation", -1)), time.perf_counter() - self._start))

    def __enter__(self) -> GCWatch:
        import gc

        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        import gc

        gc.callbacks.remove(self._cb)

    def summary(self) -> dict[str, Any]:
        longest = max(self.pauses, key=lambda p: p[1], default=(-1, 0.0))
        return {"collections": len(self.pauses), "full_collections": sum(1 for g, _ in self.pauses if g == 2),
                "longest_ms": longest[1] * 1000, "longest_generation": longest[0]}


class Ticker:
    """Measures the longest gap between 2 ms sleeps on this event loop, i.e. how long it was blocked."""

    def __init__(self) -> None:
        self.max_stall = 0.0
        self.max_busy_stall = 0.0
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    interval = 0.002

    async def _run(self) -> None:
        self._last = time.perf_counter()
        last_cpu = time.process_time()
        while True:
            await asyncio.sleep(self.interval)
            now, cpu = time.perf_counter(), time.process_time()
            gap = now - self._last - self.interval
            self.max_stall = max(self.max_stall, gap)
            # the part of the gap this process was on a CPU (the loop was blocked by our own work, not by the
            # scheduler giving the core to someone else: on a shared 2-core machine that happens too)
            self.max_busy_stall = max(self.max_busy_stall, min(gap, cpu - last_cpu))
            self._last, last_cpu = now, cpu

    def start(self) -> None:
        self.max_stall = 0.0
        self.max_busy_stall = 0.0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> float:
        await asyncio.sleep(0.02)  # let the ticker wake up once after the last stall before it is cancelled
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.max_stall


async def _push(session: Any, port: int, body: bytes) -> tuple[int, str, float]:
    started = time.perf_counter()
    async with session.put(f"http://{BIND}:{port}/snapshot", data=body,
                           headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}) as resp:
        text = await resp.text()
    return resp.status, text, time.perf_counter() - started


async def _render_apply(world: World, n: int, probe_seconds: float) -> dict[str, Any]:
    import aiohttp

    from controller.model import Inputs
    from controller.render import RenderConfig, render
    from dataplane.runtime import DataPlane, DataPlaneConfig

    row: dict[str, Any] = {"ingresses": n}
    t = time.perf_counter()
    objs = make_objects(world, n)
    row["make_objects_s"] = time.perf_counter() - t
    small_objs = make_objects(world, 0)

    t = time.perf_counter()
    inputs, _ = Inputs.from_objects(objs)
    row["project_s"] = time.perf_counter() - t
    t = time.perf_counter()
    snapshot, problems = render(inputs, RenderConfig())
    row["render_s"] = time.perf_counter() - t
    row["render_problems"] = len(problems)
    row["render_errors"] = [str(p) for p in problems][:5]
    row["tls_hosts"] = len(snapshot.tls_hosts) if hasattr(snapshot, "tls_hosts") else None
    row["certificates"] = len(snapshot.certificates)
    small, _ = render(Inputs.from_objects(small_objs)[0], RenderConfig())

    bodies = {}
    t = time.perf_counter()
    for gen in (2, 3):
        bodies[gen] = snapshot.with_generation(gen).to_json().encode()
    row["serialize_s"] = (time.perf_counter() - t) / 2
    row["snapshot_mib"] = len(bodies[2]) / 1048576

    dp = DataPlane(DataPlaneConfig(bind=BIND, https_port=0, http_port=0, admin_port=0, admin_token=TOKEN,
                                   admin_max_body=512 * 1024 * 1024))
    await dp.start()
    ticker = Ticker()
    probe: subprocess.Popen[str] | None = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            status, text, _ = await _push(session, dp.admin_port, small.with_generation(1).to_json().encode())
            if status != 200:
                raise RuntimeError(f"small snapshot refused: {status} {text[:500]}")
            probe = subprocess.Popen([sys.executable, __file__, "probe", HOSTS["offload"], str(dp.https_port),
                                      str(probe_seconds)], stdout=subprocess.PIPE, text=True)
            await asyncio.sleep(1.5)  # baseline
            windows = []
            for gen, key in ((2, "apply"), (3, "reapply")):
                ticker.start()
                await asyncio.sleep(0.05)
                w0 = time.time()
                with GCWatch() as gcw:
                    status, text, took = await _push(session, dp.admin_port, bodies[gen])
                w1 = time.time()
                stall = await ticker.stop()
                row[f"{key}_gc"] = gcw.summary()
                windows.append((w0, w1))
                if status != 200:
                    raise RuntimeError(f"snapshot of {n} Ingresses refused: {status} {text[:500]}")
                row[f"{key}_s"] = took
                row[f"{key}_max_stall_ms"] = stall * 1000
                row[f"{key}_max_busy_stall_ms"] = ticker.max_busy_stall * 1000
                await asyncio.sleep(0.7)
            row["max_stall_ms"] = max(row["apply_max_stall_ms"], row["reapply_max_stall_ms"])
            row["max_busy_stall_ms"] = max(row["apply_max_busy_stall_ms"], row["reapply_max_busy_stall_ms"])
            out, _ = await asyncio.get_running_loop().run_in_executor(None, probe.communicate)
            samples = json.loads(out)
            row["probe"] = _classify(samples, windows)
    finally:
        if probe is not None and probe.poll() is None:
            probe.kill()
            probe.wait()
        await dp.stop(drain_timeout=0)
    return row


def _classify(samples: list[list[float]], windows: list[tuple[float, float]]) -> dict[str, Any]:
    during, baseline = [], []
    for start, took in samples:
        end = start + took
        if any(start < w1 and end > w0 for w0, w1 in windows):
            during.append(took)
        elif start < windows[0][0]:
            baseline.append(took)

    def pct(xs: list[float], q: float) -> float | None:
        if not xs:
            return None
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000

    return {"baseline_p50_ms": pct(baseline, 0.5), "baseline_max_ms": max(baseline) * 1000 if baseline else None,
            "during_p50_ms": pct(during, 0.5), "during_p99_ms": pct(during, 0.99),
            "during_max_ms": max(during) * 1000 if during else None, "samples": len(during),
            "baseline_samples": len(baseline), "applies": len(windows)}


def apply_profile(world: World, n: int, top: int = 12) -> list[tuple[str, int, float, float]]:
    """cProfile of one direct ``DataPlane.apply`` of ``n`` Ingresses: (function, calls, self s, cumulative s)."""
    import cProfile
    import pstats

    from controller.model import Inputs
    from controller.render import RenderConfig, render
    from dataplane.runtime import DataPlane, DataPlaneConfig
    from dataplane.snapshot import Snapshot

    snapshot, _ = render(Inputs.from_objects(make_objects(world, n))[0], RenderConfig())
    body = snapshot.with_generation(1).to_json()
    dp = DataPlane(DataPlaneConfig(bind=BIND, https_port=0, http_port=0, admin_port=0, admin_enabled=False))
    prof = cProfile.Profile()
    prof.enable()
    errors = dp.apply(Snapshot.from_json(body))
    prof.disable()
    if errors:
        raise RuntimeError(f"apply refused: {errors[:3]}")
    stats = pstats.Stats(prof)
    rows = []
    for (path, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = path.replace(str(peers.ROOT) + "/", "")
        rows.append((f"{where}:{line}({func})", calls, tottime, cumtime))
    rows.sort(key=lambda r: -r[3])
    return rows[:top]


def render_apply(world: World, sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        probe_seconds = 4.0 + n / 1000 * 1.5
        try:
            try:
                import uvloop

                row = uvloop.run(_render_apply(world, n, probe_seconds))
            except ImportError:
                row = asyncio.run(_render_apply(world, n, probe_seconds))
        except Exception as exc:
            row = {"ingresses": n, "error": f"{type(exc).__name__}: {exc}"}
        print(f"[bench] scale {n}: {json.dumps(row)[:600]}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


# --- idle connections -------------------------------------------------------------------------------


def hold_connections(harness: Any, n: int) -> list[dict[str, Any]]:
    rows = []
    for proxy, proc in harness.procs.items():
        count = min(n, 9800) if proxy == "haproxy" else n  # HAProxy: maxconn 9900 under the 20000-fd cap
        port = harness.world.proxy_port(proxy, "offload")
        row: dict[str, Any] = {"proxy": proxy, "connections": count}
        before = peers.rss_bytes(proc.pid)
        client = subprocess.Popen([sys.executable, __file__, "hold", HOSTS["offload"], str(port), str(count), "120"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=peers.ROOT)
        try:
            assert client.stdout is not None and client.stdin is not None
            line = client.stdout.readline().strip()
            if not line.startswith("HELD"):
                raise RuntimeError(f"client: {line} {client.stderr.read()[-500:] if client.stderr else ''}")
            held = int(line.split()[1])
            time.sleep(1.0)
            after = peers.rss_bytes(proc.pid)
            row.update({"connections": held, "requested": count, "rss_before": before, "rss_after": after,
                        "kib_per_conn": (after - before) / 1024 / max(1, held), "handshake_s": float(line.split()[2])})
            client.stdin.close()
            client.wait(60)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        print(f"[bench] idle connections {proxy}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
        time.sleep(2.0)  # let the proxy close and free them
    return rows


# --- entry points -----------------------------------------------------------------------------------


def run_all(args: Any, world: World, harness: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"notes": []}
    if harness is not None and harness.procs:
        out["memory"] = hold_connections(harness, args.idle_connections)
        out["notes"].append("Idle connections: TLS handshakes completed to the offload host, no request sent; "
                            "RSS is the proxy process tree's VmRSS before and while they are held. HAProxy holds "
                            "at most 9,800 (maxconn 9,900: the sandbox caps file descriptors at 20,000 per process).")
        return out
    confs = peers.write_configs(world)
    backend = peers.start_backend(world, confs["backend"], args.proxy_cpu)
    try:
        rows = render_apply(world, args.scale_sizes)
    finally:
        backend.stop()
    out["render_apply"] = rows
    if args.scale_sizes:
        try:
            out["apply_profile"] = {"ingresses": min(args.scale_sizes),
                                    "rows": apply_profile(world, min(args.scale_sizes))}
        except Exception as exc:
            out["apply_profile"] = {"error": f"{type(exc).__name__}: {exc}"}
    out["notes"].append("Render = Inputs.from_objects + render() over N Ingresses (alternately offload and reencrypt, "
                        "each with its own ECDSA certificate). Apply = PUT /snapshot to an in-process DataPlane "
                        "(uvloop) through its admin API: parse, validate, build SSLContexts and tables, swap; the "
                        "stall is the longest gap a 2 ms ticker on the same loop saw. Re-apply: same certificates, "
                        "new generation (contexts cached by content).")
    for r in rows:
        probe = r.get("probe")
        if probe and "during_p50_ms" in probe:
            out["latency_during_apply"] = {
                "description": "keep-alive GET /1k every 2 ms to offload.bench.test from another process",
                "ingresses": r["ingresses"], **probe}
    return out


async def _hold(host: str, port: int, n: int, seconds: float) -> None:
    peers.raise_own_nofile()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conns: list[Any] = []
    sem = asyncio.Semaphore(64)
    started = time.perf_counter()

    async def one() -> None:
        async with sem:
            with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
                conns.append(await asyncio.wait_for(
                    asyncio.open_connection(BIND, port, ssl=ctx, server_hostname=host), 20))

    await asyncio.gather(*(one() for _ in range(n)))
    print(f"HELD {len(conns)} {time.perf_counter() - started:.2f}", flush=True)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), seconds)
    for _, writer in conns:
        writer.transport.abort()


def _probe(host: str, port: int, seconds: float) -> None:
    import http.client
    import socket

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    class Conn(http.client.HTTPSConnection):
        def connect(self) -> None:
            self.sock = ctx.wrap_socket(socket.create_connection((BIND, port), timeout=30), server_hostname=host)

    samples: list[list[float]] = []
    conn = Conn(host, port, timeout=30, context=ctx)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t_wall, t0 = time.time(), time.perf_counter()
        try:
            conn.request("GET", "/1k", headers={"Host": host})
            resp = conn.getresponse()
            resp.read()
            samples.append([t_wall, time.perf_counter() - t0])
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = Conn(host, port, timeout=30, context=ctx)
        time.sleep(0.002)
    print(json.dumps(samples))


def main(argv: list[str]) -> int:
    if argv[:1] == ["probe"]:
        _probe(argv[1], int(argv[2]), float(argv[3]))
        return 0
    if argv[:1] == ["hold"]:
        asyncio.run(_hold(argv[1], int(argv[2]), int(argv[3]), float(argv[4])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main(sys.argv[1:]))
