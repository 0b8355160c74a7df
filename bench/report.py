"""Markdown for bench/RESULTS.md from the raw results (bench/results/*.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (mode, workload, max ratio of Portcullis proxy CPU per request to HAProxy's) -- issue 12's targets
CPU_TARGETS = (
    ("passthrough", "1k", 1.2),
    ("passthrough", "100k", 1.0),
    ("passthrough", "close", 1.5),
    ("offload", "1k", 1.5),
    ("reencrypt", "1k", 1.5),
    ("offload", "100k", 1.0),
    ("offload", "handshake", 1.3),
    ("offload", "h2-1k", 2.0),  # issue 13: HTTP/2 to clients
)
P99_TARGET = ("1k-paced", 1.5)


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _point(results: dict[str, Any], mode: str, workload: str, proxy: str) -> dict[str, Any] | None:
    for p in results.get("points", []):
        if (p["mode"], p["workload"], p["proxy"]) == (mode, workload, proxy):
            return p  # type: ignore[no-any-return]
    return None


def _median(results: dict[str, Any], mode: str, workload: str, proxy: str, key: str) -> float | None:
    p = _point(results, mode, workload, proxy)
    if not p or "median" not in p:
        return None
    v = p["median"].get(key)
    return float(v) if v is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def markdown(results: dict[str, Any], raw_path: Path | str) -> str:
    m = results.get("machine", {})
    s = results.get("settings", {})
    lines = [
        "# Benchmark: Portcullis beside HAProxy and nginx",
        "",
        f"Run {m.get('date', '?')} — machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"{m.get('memory_gib', '?')} GiB, Linux {m.get('kernel', '?')}; Python {m.get('python', '?')}, "
        f"{m.get('openssl', '?')}; {m.get('haproxy', '?')}; {m.get('nginx', '?')}; {m.get('wrk', '?')}; "
        f"{m.get('h2load', '?')}. "
        f"Commit: {m.get('git', '?')}.",
        "",
        f"Settings: wrk 1 thread, {s.get('connections')} connections, {s.get('seconds')} s per run, "
        f"{s.get('reps')} repetition(s) per point, proxies interleaved, medians reported; wrk pinned to core "
        f"{s.get('client_cpu')}, proxy and backend to core {s.get('proxy_cpu')}"
        f"{' (--quick: indicative only)' if s.get('quick') else ''}. "
        f"Raw results: `{raw_path}` (kept by the run, not committed).",
    ]
    if s.get("note"):
        lines += ["", f"**Note:** {s['note']}"]
    lines += [
        "",
        "Proxy CPU per request = (utime + stime of the proxy's process tree over the run, from /proc) / requests. "
        "On 2 cores the client competes for CPU, so requests/s is client-bound; CPU per request is the fair figure. "
        "\"Proxy preempted /req\": involuntary context switches of the proxy per request (/proc status) - with "
        "proxy and backend on one core, mostly the backend waking up and taking the core.",
        "",
        "Workloads: " + "; ".join(f"`{k}`: {v}" for k, v in results.get("workloads", {}).items()) + ".",
        "",
        "Configurations: HAProxy `nbthread 1` (passthrough: TCP frontend, `req.ssl_sni`; offload and reencrypt: one "
        "HTTPS frontend choosing the backend by SNI; reencrypt verifies the backend, `verify required`), nginx "
        "`worker_processes 1` (passthrough: `stream` + `ssl_preread`; offload/reencrypt: `http` with upstream "
        "keep-alive, `proxy_ssl_verify on`), Portcullis `portcullis local` (1 process) with the same three modes "
        "as Ingresses on one HTTPS port (its design: one listener, SNI decides). HAProxy and nginx get a port per "
        "passthrough/terminate, their best configuration. Backend: nginx, 1 worker, 1 KiB and 100 KiB files.",
    ]
    unavailable = results.get("unavailable") or {}
    for proxy, why in unavailable.items():
        lines += ["", f"**{proxy}: not available** — `{why.strip()[:1500]}`"]
    proxies = s.get("proxies", [])
    if results.get("points"):
        for mode in s.get("modes", []):
            lines += ["", f"## {mode}", "",
                      "| workload | proxy | req/s | p50 ms | p99 ms | proxy CPU µs/req (user + sys) "
                      "| ratio to HAProxy CPU | backend CPU µs/req | proxy preempted /req | errors |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for wl in s.get("workloads", []):
                base = _median(results, mode, wl, "haproxy", "proxy_cpu_us_per_req")
                for proxy in proxies:
                    p = _point(results, mode, wl, proxy)
                    if p is None:
                        continue
                    if "median" not in p:
                        lines.append(f"| {wl} | {proxy} | {p.get('error', 'no data')[:160]} | | | | | | | |")
                        continue
                    med = p["median"]
                    cpu = med.get("proxy_cpu_us_per_req")
                    ratio = _ratio(cpu, base)
                    p50 = med.get("p50_us")
                    p99 = med.get("p99_us")
                    lines.append(
                        f"| {wl} | {proxy} | {_fmt(med.get('rps'))} | {_fmt(p50 / 1000 if p50 else None, 2)} | "
                        f"{_fmt(p99 / 1000 if p99 else None, 2)} | {_fmt(cpu, 1)} "
                        f"({_fmt(med.get('proxy_user_us_per_req'), 1)} + {_fmt(med.get('proxy_sys_us_per_req'), 1)}) "
                        f"| {_fmt(ratio, 2)} | "
                        f"{_fmt(med.get('backend_cpu_us_per_req'), 1)} | {_fmt(med.get('proxy_invol_ctx_per_req'), 2)} "
                        f"| {_fmt(med.get('errors'))} |")
        lines += ["", "## Targets (Portcullis ÷ HAProxy 1 thread, same run)", "",
                  "| point | target | Portcullis | HAProxy | ratio | verdict |", "|---|---:|---:|---:|---:|---|"]
        for mode, wl, limit in CPU_TARGETS:
            if mode not in s.get("modes", []) or wl not in s.get("workloads", []):
                continue
            pc = _median(results, mode, wl, "portcullis", "proxy_cpu_us_per_req")
            hp = _median(results, mode, wl, "haproxy", "proxy_cpu_us_per_req")
            lines.append(_target_row(f"{mode} {wl} CPU µs/req", limit, pc, hp))
        wl, limit = P99_TARGET
        if wl in s.get("workloads", []):
            for mode in s.get("modes", []):
                pc = _median(results, mode, wl, "portcullis", "p99_us")
                hp = _median(results, mode, wl, "haproxy", "p99_us")
                lines.append(_target_row(f"{mode} {wl} p99 µs (same offered load)", limit, pc, hp))
    scale = results.get("scale")
    if scale:
        lines += ["", "## Scale", ""]
        lines += scale_markdown(scale)
    profile = results.get("profile")
    if profile:
        lines += ["", "## Where Portcullis spends its CPU", "", profile]
    return "\n".join(lines) + "\n"


def _target_row(name: str, limit: float, pc: float | None, hp: float | None) -> str:
    ratio = _ratio(pc, hp)
    verdict = "not measured" if ratio is None else "met" if ratio <= limit else "**missed**"
    return f"| {name} | <= {limit}x | {_fmt(pc, 1)} | {_fmt(hp, 1)} | {_fmt(ratio, 2)} | {verdict} |"


def scale_markdown(scale: dict[str, Any]) -> list[str]:
    if "error" in scale:
        return ["Scale measurements failed:", "", "```", str(scale["error"]).strip()[-3000:], "```"]
    lines: list[str] = []
    rows = scale.get("render_apply", [])
    if rows:
        lines += ["| Ingresses (distinct certificates) | render s | snapshot JSON MiB | apply s (first) "
                  "| apply s (same certs, new generation) | longest event-loop stall while applying, ms "
                  "| of which this process was on a CPU, ms | verdict (<= 50 ms) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r.get('ingresses')} | {r['error'][:200]} | | | | | | |")
                continue
            stall = r.get("max_stall_ms")
            verdict = "-" if stall is None else ("met" if stall <= 50 else "**missed**")
            lines.append(f"| {r['ingresses']:,} | {_fmt(r.get('render_s'), 2)} | {_fmt(r.get('snapshot_mib'), 1)} "
                         f"| {_fmt(r.get('apply_s'), 2)} | {_fmt(r.get('reapply_s'), 2)} | {_fmt(stall, 1)} "
                         f"| {_fmt(r.get('max_busy_stall_ms'), 1)} | {verdict} |")
        for r in rows:
            gc = r.get("apply_gc")
            if gc:
                lines.append(f"- {r['ingresses']:,} Ingresses, first apply: {gc['collections']} garbage collections "
                             f"({gc['full_collections']} full), the longest {gc['longest_ms']:.1f} ms "
                             f"(generation {gc['longest_generation']}); a collection holds the GIL, so it stalls the "
                             "loop even when the build runs in a worker thread.")
        lines.append("")
    for note in scale.get("notes", []):
        lines.append(f"- {note}")
    prof = scale.get("apply_profile")
    if prof and "rows" in prof:
        lines += ["", f"Where a first apply of {prof['ingresses']:,} Ingresses goes (cProfile of one direct "
                  "`DataPlane.apply`, by cumulative time):", "",
                  "| function | calls | self s | cumulative s |", "|---|---:|---:|---:|"]
        for name, calls, tot, cum in prof["rows"]:
            lines.append(f"| `{name}` | {calls:,} | {tot:.3f} | {cum:.3f} |")
    mem = scale.get("memory", [])
    if mem:
        lines += ["", "| proxy | idle TLS connections held | RSS before MiB | RSS with connections MiB "
                  "| KiB per connection |",
                  "|---|---:|---:|---:|---:|"]
        for r in mem:
            if "error" in r:
                lines.append(f"| {r['proxy']} | {r['error'][:200]} | | | |")
                continue
            lines.append(f"| {r['proxy']} | {r['connections']:,} | {_fmt(r['rss_before'] / 1048576, 1)} | "
                         f"{_fmt(r['rss_after'] / 1048576, 1)} | {_fmt(r['kib_per_conn'], 1)} |")
    lat = scale.get("latency_during_apply")
    if lat:
        lines += ["", "Latency of an unrelated request (keep-alive GET through Portcullis, offload) while a "
                  "snapshot is applied:", ""]
        if "error" in lat:
            lines.append(f"- failed: {lat['error'][:500]}")
        else:
            lines.append(f"- {lat['description']}: baseline p50 {_fmt(lat['baseline_p50_ms'], 2)} ms, "
                         f"max {_fmt(lat['baseline_max_ms'], 2)} ms; during applies p50 {_fmt(lat['during_p50_ms'], 2)}"
                         f" ms, p99 {_fmt(lat['during_p99_ms'], 2)} ms, max {_fmt(lat['during_max_ms'], 2)} ms "
                         f"({lat['samples']} requests during {lat['applies']} applies of "
                         f"{lat['ingresses']:,} Ingresses)")
    return lines
