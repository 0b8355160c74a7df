"""Where Portcullis spends its CPU, per mode: two samplers while wrk drives one workload.

- ``perf record -e cpu-clock`` on the Portcullis process: the split by shared object (kernel, OpenSSL,
  the Python interpreter, uvloop, httptools, ...). Python 3.11 frames are invisible to perf.
- ``py-spy record --nonblocking`` (Python frames only, no pausing, so no syscall bias): which
  Portcullis functions the interpreter time goes to. Samples whose innermost Python frame is the
  event loop's ``run`` are time in uvloop's C code (I/O, TLS records via the ssl module, callbacks).

Profiling perturbs the run, so it comes after the measured points and its CPU figures are not used.
py-spy is installed on demand with pip into a cache folder (not into the project's venv).
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import loadgen, peers
from bench.peers import HOSTS

SCENARIOS = (("passthrough", "1k"), ("passthrough", "close"), ("offload", "1k"), ("reencrypt", "1k"),
             ("offload", "100k"), ("offload", "handshake"), ("offload", "h2-1k"))
SYSCALL_POINTS = (("passthrough", "1k"), ("offload", "1k"), ("reencrypt", "1k"), ("passthrough", "close"),
                  ("offload", "handshake"))
CACHE = Path.home() / ".cache" / "portcullis-bench"


def ensure_pyspy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    exe = CACHE / "py-spy" / "bin" / "py-spy"
    if not exe.exists():
        res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(CACHE / "py-spy"),
                              "py-spy"], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"[bench] py-spy not installable: {res.stderr[-400:]}", file=sys.stderr)
            return None
    return str(exe) if exe.exists() else None


def _py_frame_summary(raw: Path, top: int = 12) -> dict[str, Any]:
    """From py-spy's collapsed stacks: innermost-frame (self) shares and the Portcullis entry points."""
    leaf: collections.Counter[str] = collections.Counter()
    entry: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        last = frames[-1]
        name = last.split(" (")[0]
        where = last.split(" (")[1].rstrip(")").rsplit(":", 1)[0] if " (" in last else ""
        if name in ("Runner.run", "run") and ("asyncio" in where or "uvloop" in where):
            leaf["(event loop C code: uvloop I/O, TLS records, callbacks)"] += count
        else:
            leaf[f"{name} ({where})"] += count
        first = next((f for f in frames if "dataplane/" in f), None)
        if first is None:
            entry["(no data-plane frame: event loop C code)"] += count
        else:
            fname, _, fwhere = first.partition(" (")
            entry[f"{fname} ({fwhere.rsplit(':', 1)[0]})"] += count
    return {"samples": total,
            "self": [(k, v / total) for k, v in leaf.most_common(top)] if total else [],
            "entry": [(k, v / total) for k, v in entry.most_common(8)] if total else []}


def _perf_summary(data: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, sort in (("dso", "dso"), ("symbols", "dso,sym")):
        res = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort,
                              "--percent-limit", "1.5"], capture_output=True, text=True, timeout=300)
        rows = []
        for line in res.stdout.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "%" not in line.split()[0]:
                continue
            pct, _, rest = line.partition("%")
            try:
                rows.append((" ".join(rest.split()), float(pct) / 100))
            except ValueError:
                continue
        out[key] = rows[:14]
    return out


def profile(world: peers.World, proc: peers.Proc, seconds: float, client_cpu: str | None,
            connections: int) -> dict[str, Any]:
    pyspy = ensure_pyspy()
    perf = shutil.which("perf")
    results: dict[str, Any] = {"tools": {"py-spy": pyspy, "perf": perf}, "scenarios": []}
    for mode, wl_name in SCENARIOS:
        wl = loadgen.WORKLOADS[wl_name]
        port = world.proxy_port("portcullis", mode)
        row: dict[str, Any] = {"mode": mode, "workload": wl_name}
        raw = world.dir / f"pyspy-{mode}-{wl_name}.txt"
        perf_data = world.dir / f"perf-{mode}-{wl_name}.data"
        samplers = []
        if pyspy:
            samplers.append(subprocess.Popen(
                [pyspy, "record", "--nonblocking", "-r", "250", "-d", str(int(seconds)), "--format", "raw",
                 "-o", str(raw), "-p", str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        if perf:
            samplers.append(subprocess.Popen(
                ["perf", "record", "-e", "cpu-clock", "-F", "999", "-o", str(perf_data), "-p", str(proc.pid),
                 "--", "sleep", str(int(seconds))], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        time.sleep(0.3)
        try:
            load = loadgen.run(world.dir, wl, HOSTS[mode], port, seconds - 1, connections, client_cpu)
            row["rps_while_profiled"] = load["rps"]
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        for s in samplers:
            try:
                s.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                s.kill()
                s.wait()
        if pyspy and raw.exists():
            row["python"] = _py_frame_summary(raw)
        if perf and perf_data.exists():
            row["native"] = _perf_summary(perf_data)
        print(f"[bench] profiled {mode} {wl_name}", file=sys.stderr, flush=True)
        results["scenarios"].append(row)
    return results


def _strace_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            try:
                counts[parts[-1]] = int(parts[3])
            except ValueError:
                continue
    return counts


def syscalls(world: peers.World, procs: dict[str, peers.Proc], client_cpu: str | None,
             connections: int, seconds: float = 3.0) -> list[dict[str, Any]]:
    """System calls per request (``strace -f -c``) for each proxy at a few points (SYSCALL_POINTS).

    strace slows the proxy down a lot, so only the counts per request are kept, not the times."""
    if not shutil.which("strace"):
        return []
    rows = []
    for mode, wl_name in SYSCALL_POINTS:
        for name, proc in procs.items():
            out = world.dir / f"strace-{name}-{mode}-{wl_name}.txt"
            attach = [arg for pid in peers.tree(proc.pid) for arg in ("-p", str(pid))]  # nginx: master + worker
            tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(out), *attach],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            row: dict[str, Any] = {"proxy": name, "mode": mode, "workload": wl_name}
            try:
                load = loadgen.run(world.dir, loadgen.WORKLOADS[wl_name], HOSTS[mode], world.proxy_port(name, mode),
                                   seconds, connections, client_cpu)
                row["requests"] = int(load["requests"])
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
            time.sleep(0.3)
            tracer.send_signal(2)
            try:
                tracer.wait(20)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()
            if row.get("requests") and out.exists():
                counts = _strace_counts(out)
                n = row["requests"]
                ranked = sorted(counts.items(), key=lambda kv: -kv[1])
                row["per_request"] = {k: v / n for k, v in ranked if v / n >= 0.05}
                row["total_per_request"] = sum(counts.values()) / n
            rows.append(row)
            time.sleep(0.5)
    return rows


def markdown(prof: dict[str, Any]) -> str:
    lines = ["Sampled after the measured runs (profiling perturbs them): `perf record -e cpu-clock` for the "
             "split by shared object, `py-spy --nonblocking` for Python frames. Shares are of the process's "
             "busy samples."]
    for row in prof.get("scenarios", []):
        lines += ["", f"### {row['mode']} {row['workload']}", ""]
        if "error" in row:
            lines.append(f"- load failed: {row['error'][:300]}")
        native = row.get("native", {})
        if native.get("dso"):
            lines.append("- native, by object: " + ", ".join(f"{name} {share:.0%}" for name, share in native["dso"]))
        if native.get("symbols"):
            lines.append("- native, top symbols: " + ", ".join(f"{name} {share:.0%}"
                                                               for name, share in native["symbols"][:10]))
        py = row.get("python")
        if py and py.get("samples"):
            lines.append("- Python, innermost frame: " + ", ".join(f"{name} {share:.0%}"
                                                                  for name, share in py["self"][:10]))
            lines.append("- Python, Portcullis entry point: " + ", ".join(f"{name} {share:.0%}"
                                                                         for name, share in py["entry"][:6]))
    rows = prof.get("syscalls") or []
    if rows:
        lines += ["", "### System calls per request (`strace -f -c`; counts only, strace slows the proxy down)", "",
                  "| mode | workload | proxy | syscalls/request | the main ones |", "|---|---|---|---:|---|"]
        for r in rows:
            head = f"| {r['mode']} | {r.get('workload', '1k')} | {r['proxy']} "
            if "per_request" not in r:
                lines.append(head + f"| {r.get('error', 'no data')[:100]} | |")
                continue
            main = ", ".join(f"{k} {v:.2f}" for k, v in list(r["per_request"].items())[:8])
            lines.append(head + f"| {r['total_per_request']:.2f} | {main} |")
    return "\n".join(lines)
