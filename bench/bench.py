"""Side-by-side benchmark: Portcullis vs HAProxy (1 thread) vs nginx (1 worker), same machine, same run.

``bash bench/run`` (``make bench``) runs everything; ``--quick`` runs one 3 s repetition of each
point. The load generator is pinned to one core and every proxy and the backend to the other;
proxies are interleaved (A B C A B C ...) so drift hits all alike; each figure is a median.

Proxy CPU per request = (utime + stime of the proxy's process tree over the run) / requests done.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, peers, report
from bench.peers import HOSTS, Proc, World

MODES = ("passthrough", "offload", "reencrypt")
PROXIES = ("portcullis", "haproxy", "nginx")
BENCH_DIR = Path(__file__).resolve().parent


def machine_line() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass

    def version(argv: list[str]) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unavailable ({exc})"
        text = (res.stdout + res.stderr).strip().splitlines()
        return text[0] if text else ""

    import ssl

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 1048576, 1),
        "kernel": platform.release(), "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
        "haproxy": version(["haproxy", "-v"]), "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "--version"]).split(" Copyright")[0], "h2load": version(["h2load", "--version"]),
        "git": version(["git", "-C", str(BENCH_DIR.parent), "log", "-1", "--format=%h %s"]),
    }


class Harness:
    def __init__(self, args: argparse.Namespace, world: World) -> None:
        self.args = args
        self.world = world
        self.procs: dict[str, Proc] = {}
        self.unavailable: dict[str, str] = {}
        self.backend: Proc | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        confs = peers.write_configs(self.world)
        cpu = self.args.proxy_cpu
        self.backend = peers.start_backend(self.world, confs["backend"], cpu)
        starters = {
            "haproxy": lambda: peers.start_haproxy(self.world, confs["haproxy"], cpu),
            "nginx": lambda: peers.start_nginx(self.world, confs["nginx"], cpu),
            "portcullis": lambda: peers.start_portcullis(self.world, cpu),
        }
        for name in self.args.proxies:
            try:
                self.procs[name] = starters[name]()
            except Exception as exc:
                self.unavailable[name] = f"{type(exc).__name__}: {exc}".strip()
                print(f"[bench] {name}: not available: {self.unavailable[name]}", file=sys.stderr)
        for name in list(self.procs):
            problem = self.probe(name)
            if problem:
                self.unavailable[name] = problem
                self.procs.pop(name).stop()
                print(f"[bench] {name}: not available: {problem}", file=sys.stderr)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        if self.backend is not None:
            self.backend.stop()

    def probe(self, name: str) -> str | None:
        """One short request per mode and body: the right status and the whole body, or why not."""
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.world.dir / "ca.crt"))
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        for mode in self.args.modes:
            port = self.world.proxy_port(name, mode)
            for path, size in (("/1k", 1024), ("/100k", 102400)):
                host = HOSTS[mode]
                try:
                    body = _get(ctx, host, port, path)
                except Exception as exc:
                    return f"{mode} {path}: {type(exc).__name__}: {exc}"
                if len(body) != size:
                    return f"{mode} {path}: body of {len(body)} bytes, expected {size}"
        return None

    # --- one point ---------------------------------------------------------------------------------

    def measure(self, proxy: str, mode: str, wl: loadgen.Workload) -> dict[str, Any]:
        proc = self.procs[proxy]
        assert self.backend is not None
        ctx0 = peers.ctx_switches(proc.pid)
        (u0, s0), bcpu0, t0 = peers.cpu_times(proc.pid), peers.cpu_seconds(self.backend.pid), time.monotonic()
        result: dict[str, Any] = dict(loadgen.run(self.world.dir, wl, HOSTS[mode], self.world.proxy_port(proxy, mode),
                                                  self.args.seconds, self.args.connections, self.args.client_cpu))
        (u1, s1), bcpu1, t1 = peers.cpu_times(proc.pid), peers.cpu_seconds(self.backend.pid), time.monotonic()
        cpu0, cpu1 = u0 + s0, u1 + s1
        ctx1 = peers.ctx_switches(proc.pid)
        if not proc.alive():
            raise RuntimeError(f"{proxy} died during the run: {proc.tail()}")
        n = max(1, int(result["requests"]))
        result["proxy_cpu_s"] = cpu1 - cpu0
        result["proxy_cpu_us_per_req"] = (cpu1 - cpu0) / n * 1e6
        result["proxy_user_us_per_req"] = (u1 - u0) / n * 1e6
        result["proxy_sys_us_per_req"] = (s1 - s0) / n * 1e6
        result["proxy_cpu_util"] = (cpu1 - cpu0) / (t1 - t0)
        result["proxy_vol_ctx_per_req"] = (ctx1[0] - ctx0[0]) / n
        result["proxy_invol_ctx_per_req"] = (ctx1[1] - ctx0[1]) / n
        result["backend_cpu_us_per_req"] = (bcpu1 - bcpu0) / n * 1e6
        result["bytes_per_req"] = result.get("bytes", 0) / n
        return result

    def run_points(self) -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = []
        active = [p for p in self.args.proxies if p in self.procs]
        pairs = [(m, w) for m in self.args.modes for w in self.args.workloads
                 if not loadgen.WORKLOADS[w].modes or m in loadgen.WORKLOADS[w].modes]
        total = len(pairs) * self.args.reps * len(active)
        done = 0
        for mode in self.args.modes:
            for wl_name in self.args.workloads:
                if (mode, wl_name) not in pairs:
                    continue  # e.g. HTTP/2 needs a terminating mode
                wl = loadgen.WORKLOADS[wl_name]
                runs: dict[str, list[dict[str, Any]]] = {p: [] for p in active}
                failures: dict[str, str] = {}
                for rep in range(self.args.reps):
                    order = active[rep % len(active):] + active[: rep % len(active)] if active else []
                    for proxy in order:
                        done += 1
                        if proxy in failures:
                            continue
                        try:
                            r = self.measure(proxy, mode, wl)
                            runs[proxy].append(r)
                            print(f"[bench] {done}/{total} {mode:11} {wl_name:9} {proxy:10} rep {rep + 1}: "
                                  f"{r['rps']:8.0f} req/s  p99 {r.get('p99_us', 0) / 1000:7.2f} ms  "
                                  f"cpu {r['proxy_cpu_us_per_req']:7.1f} us/req  errors {r['errors']}",
                                  file=sys.stderr, flush=True)
                        except Exception as exc:
                            failures[proxy] = f"{type(exc).__name__}: {exc}"
                            print(f"[bench] {mode} {wl_name} {proxy}: FAILED {failures[proxy]}", file=sys.stderr)
                        time.sleep(self.args.pause)
                for proxy in self.args.proxies:
                    point: dict[str, Any] = {"mode": mode, "workload": wl_name, "proxy": proxy}
                    if proxy in self.unavailable:
                        point["error"] = f"not available: {self.unavailable[proxy]}"
                    elif proxy in failures:
                        point["error"] = failures[proxy]
                        point["runs"] = runs.get(proxy, [])
                    else:
                        point["runs"] = runs[proxy]
                        point["median"] = medians(runs[proxy])
                    points.append(point)
        return points


def _get(ctx: Any, host: str, port: int, path: str) -> bytes:
    """HTTPS GET to 127.0.0.1:port with SNI and Host set to ``host`` (the bench names do not resolve)."""
    import http.client

    class Conn(http.client.HTTPSConnection):
        def connect(self) -> None:
            import socket

            sock = socket.create_connection((peers.BIND, port), timeout=10)
            self.sock = ctx.wrap_socket(sock, server_hostname=host)

    conn = Conn(host, port, timeout=10, context=ctx)
    try:
        conn.request("GET", path, headers={"Host": f"{host}:{port}"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}: {body[:200]!r}")
        return body
    finally:
        conn.close()


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("rps", "p50_us", "p99_us", "proxy_cpu_us_per_req", "proxy_user_us_per_req", "proxy_sys_us_per_req",
            "backend_cpu_us_per_req", "errors", "proxy_cpu_util", "bytes_per_req", "proxy_vol_ctx_per_req",
            "proxy_invol_ctx_per_req")
    out: dict[str, float] = {}
    for key in keys:
        values = [float(r[key]) for r in runs if key in r]
        if values:
            out[key] = statistics.median(values)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="1 repetition of 3 s per point (for trying it)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--proxies", default=",".join(PROXIES))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--workloads", default=",".join(loadgen.WORKLOADS))
    ap.add_argument("--client-cpu", default="0", help="core for wrk (taskset -c)")
    ap.add_argument("--proxy-cpu", default="1", help="core for the proxies and the backend")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between runs")
    ap.add_argument("--no-load", action="store_true", help="skip the proxy comparison")
    ap.add_argument("--no-scale", action="store_true", help="skip render/apply/memory/latency-under-apply")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                    help="profile Portcullis per mode after the measured runs (perf + py-spy)")
    ap.add_argument("--scale-sizes", default=None, help="Ingress counts for render/apply (default 1000,10000; "
                    "--quick: 1000)")
    ap.add_argument("--idle-connections", type=int, default=None, help="default 10000 (--quick: 2000)")
    ap.add_argument("--work", default="", help="work directory (default: a fresh temporary one)")
    ap.add_argument("--out", default=str(BENCH_DIR / "results"), help="where the raw JSON goes")
    ap.add_argument("--markdown", default=str(BENCH_DIR / "RESULTS.md"))
    ap.add_argument("--note", default="", help="a line for RESULTS.md (e.g. 'machine shared with 4 other engineers')")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.reps = 3.0, 1
    if args.scale_sizes is None:
        args.scale_sizes = "1000" if args.quick else "1000,10000"
    if args.idle_connections is None:
        args.idle_connections = 2000 if args.quick else 10000
    args.proxies = [p for p in args.proxies.split(",") if p]
    args.modes = [m for m in args.modes.split(",") if m]
    args.workloads = [w for w in args.workloads.split(",") if w]
    for m in args.modes:
        if m not in MODES:
            ap.error(f"unknown mode {m}")
    for w in args.workloads:
        if w not in loadgen.WORKLOADS:
            ap.error(f"unknown workload {w}")
    args.scale_sizes = [int(x) for x in args.scale_sizes.split(",") if x]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    peers.raise_own_nofile()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    print(f"[bench] work directory: {work}", file=sys.stderr)
    world = peers.make_world(work)
    results: dict[str, Any] = {
        "machine": machine_line(),
        "settings": {"seconds": args.seconds, "reps": args.reps, "connections": args.connections,
                     "client_cpu": args.client_cpu, "proxy_cpu": args.proxy_cpu, "quick": args.quick,
                     "proxies": args.proxies, "modes": args.modes, "workloads": args.workloads,
                     "note": args.note},
        "workloads": {w: loadgen.WORKLOADS[w].description for w in args.workloads},
    }
    from bench import scale

    scale_out: dict[str, Any] = {}
    if not (args.no_load and args.no_scale):
        harness = Harness(args, world)
        try:
            harness.start()
            results["unavailable"] = harness.unavailable
            if not args.no_load:
                results["points"] = harness.run_points()
            if args.profile and "portcullis" in harness.procs:
                from bench import profiling

                try:
                    prof = profiling.profile(world, harness.procs["portcullis"], 5.0 if args.quick else 8.0,
                                           args.client_cpu, args.connections)
                    prof["syscalls"] = profiling.syscalls(world, harness.procs, args.client_cpu, args.connections)
                    results["profile_raw"] = prof
                    results["profile"] = profiling.markdown(prof)
                except Exception:
                    results["profile"] = "Profiling failed:\n\n```\n" + traceback.format_exc(limit=5) + "```"
            if not args.no_scale and args.idle_connections > 0:
                try:
                    scale_out.update(scale.run_all(args, world, harness))
                except Exception:
                    scale_out["memory_error"] = traceback.format_exc(limit=5)
        finally:
            harness.stop()
    if not args.no_scale:
        try:
            more = scale.run_all(args, world)
            notes = scale_out.pop("notes", []) + more.pop("notes", [])
            scale_out.update(more)
            scale_out["notes"] = notes
        except Exception:
            scale_out["error"] = traceback.format_exc(limit=5)
            print(f"[bench] scale failed: {scale_out['error']}", file=sys.stderr)
        results["scale"] = scale_out
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = out_dir / f"{stamp}{'-quick' if args.quick else ''}.json"
    raw.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    md = report.markdown(results, raw.relative_to(BENCH_DIR) if raw.is_relative_to(BENCH_DIR) else raw)
    Path(args.markdown).write_text(md)
    print(md)
    print(f"[bench] raw results: {raw}\n[bench] table: {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
