"""Memory under configuration churn: a data plane swapped between many hosts and almost none, cycle after cycle.

What an operator does with ``portcullis local`` (or a cluster with fast-moving Ingresses): ``--hosts`` Ingresses
(offload, reencrypt and passthrough in turn; every tenth with ``limit-rps`` and ``limit-connections``) are
rendered and applied, a request goes to each limited host (so per-host metric series and rate-limit buckets
exist), then a set of one Ingress is applied. After each cycle, with the near-empty set in, it prints the live
Python memory (tracemalloc, after a full collection), RSS and the ``/metrics`` series that name a host. Memory
that levels off shows flat figures after the first cycles; a leak shows a slope.

``--names same`` reuses the Ingress and host names every cycle, ``--names new`` makes new ones each cycle
(hostname churn), ``--names both`` (the default) runs the two one after the other in one process.
``--diff`` prints the allocation sites whose live memory grew most between cycle 2 and the last cycle.
``--write FILE`` only writes the full set as one YAML file (for timing ``portcullis render FILE``) and exits.

Run: ``.venv/bin/python -m bench.churn`` (50 cycles of 2,000 hosts per phase; ``--cycles``/``--hosts`` to shrink).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NS = "churn"
DOMAIN = "churn.bench.test"
MODES = ("offload", "reencrypt", "passthrough")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Material:
    """One CA and one wildcard certificate for every host (issuing 2,000 keys would dominate the run)."""

    def __init__(self) -> None:
        from tests.pki import CA

        ca = CA("Portcullis Churn CA")
        leaf = ca.issue("*." + DOMAIN)
        self.ca_pem = ca.cert_pem
        self.cert_pem, self.key_pem = leaf.cert_pem, leaf.key_pem


def _base(material: Material) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "portcullis"},
         "spec": {"controller": "portcullis.io/ingress-controller"}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "churn-ca", "namespace": NS},
         "data": {"ca.crt": _b64(material.ca_pem)}},
    ]
    for svc, port in (("web", 80), ("secure-web", 443)):
        objs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "namespace": NS},
                     "spec": {"ports": [{"name": "p", "port": port, "targetPort": 9}]}})
        objs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{svc}-1", "namespace": NS, "labels": {"kubernetes.io/service-name": svc}},
                     "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
                     "ports": [{"name": "p", "port": 9}]})
    return objs


def _ingress(material: Material, name: str, index: int) -> list[dict[str, Any]]:
    """One Ingress (and its TLS Secret): mode by ``index``, every tenth limited."""
    mode = MODES[index % 3]
    host = f"{name}.{DOMAIN}"
    ann = {"portcullis.io/tls-mode": mode, "portcullis.io/hsts": "off",
           "nginx.ingress.kubernetes.io/ssl-redirect": "false"}
    svc, port = ("web", 80) if mode == "offload" else ("secure-web", 443)
    if mode == "reencrypt":
        ann.update({"portcullis.io/backend-ca-secret": "churn-ca", "portcullis.io/backend-server-name": host})
    if index % 10 == 0:
        ann.update({"portcullis.io/limit-rps": "5", "portcullis.io/limit-connections": "10"})
    spec: dict[str, Any] = {"ingressClassName": "portcullis", "rules": [{"host": host, "http": {"paths": [{
        "path": "/", "pathType": "Prefix", "backend": {"service": {"name": svc, "port": {"number": port}}}}]}}]}
    objs: list[dict[str, Any]] = []
    if mode != "passthrough":
        spec["tls"] = [{"hosts": [host], "secretName": f"{name}-tls"}]
        objs.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                     "metadata": {"name": f"{name}-tls", "namespace": NS},
                     "data": {"tls.crt": _b64(material.cert_pem), "tls.key": _b64(material.key_pem)}})
    objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                 "metadata": {"name": name, "namespace": NS, "annotations": ann,
                              "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec})
    return objs


def full_set(material: Material, hosts: int, prefix: str) -> list[dict[str, Any]]:
    objs = _base(material)
    for i in range(hosts):
        objs.extend(_ingress(material, f"{prefix}{i}", i))
    return objs


def small_set(material: Material) -> list[dict[str, Any]]:
    return _base(material) + _ingress(material, "keep", 1)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def _get(port: int, hosts: Sequence[str]) -> int:
    """One plain-HTTP request per host over keep-alive connections; the number of responses read."""
    answered = 0
    reader = writer = None
    for host in hosts:
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert reader is not None
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        answered += 1
        if b"connection: close" in head.lower():
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()
    return answered


def _host_series(metrics_text: str) -> int:
    return sum(1 for line in metrics_text.splitlines() if f'.{DOMAIN}"' in line and not line.startswith("#"))


async def churn(cycles: int, hosts: int, names: str, material: Material, rows: list[dict[str, Any]]) -> None:
    from controller.model import Inputs
    from controller.render import RenderConfig, render
    from dataplane.runtime import DataPlane, DataPlaneConfig

    plane = DataPlane(DataPlaneConfig(https_port=0, http_port=0, admin_enabled=False))
    await plane.start()
    small, _ = render(Inputs.from_objects(small_set(material))[0], RenderConfig())
    try:
        for cycle in range(1, cycles + 1):
            prefix = "h" if names == "same" else f"c{cycle}h"
            snapshot, _ = render(Inputs.from_objects(full_set(material, hosts, prefix))[0], RenderConfig())
            started = time.perf_counter()
            errors = await plane.apply_async(snapshot)
            applied = time.perf_counter() - started
            if errors:
                raise SystemExit(f"apply refused: {errors[:3]}")
            limited = [f"{prefix}{i}.{DOMAIN}" for i in range(0, hosts, 10) if MODES[i % 3] != "passthrough"]
            answered = await _get(plane.http_port, limited)
            series_full = _host_series(plane.metrics.render().decode())
            if await plane.apply_async(small):
                raise SystemExit("the small set was refused")
            del snapshot
            gc.collect()
            live = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
            row = {"names": names, "cycle": cycle, "live_kib": live // 1024, "rss_kib": rss_kib(),
                   "apply_s": round(applied, 3), "answered": answered, "host_series_full": series_full,
                   "host_series_small": _host_series(plane.metrics.render().decode())}
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if cycle == 2 and tracemalloc.is_tracing():
                row["snapshot"] = tracemalloc.take_snapshot()
    finally:
        await plane.stop(drain_timeout=0)


def slope(rows: list[dict[str, Any]], key: str, after: int) -> float:
    """KiB per cycle over the cycles after ``after`` (least squares), 0.0 when there are fewer than two."""
    points = [(r["cycle"], r[key]) for r in rows if r["cycle"] > after]
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    return float(sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points))


def write_manifests(path: Path, hosts: int) -> None:
    import yaml

    objs = full_set(Material(), hosts, "h")
    path.write_text(yaml.safe_dump_all(objs, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--names", choices=("same", "new", "both"), default="both")
    parser.add_argument("--no-trace", action="store_true", help="RSS only (tracemalloc costs time and memory)")
    parser.add_argument("--diff", action="store_true", help="allocation sites that grew between cycle 2 and the last")
    parser.add_argument("--write", type=Path, help="write the full set to this YAML file and exit")
    args = parser.parse_args(argv)
    if args.write is not None:
        write_manifests(args.write, args.hosts)
        print(f"wrote {args.write} ({args.write.stat().st_size} bytes, {args.hosts} Ingresses)")
        return 0
    if not args.no_trace:
        tracemalloc.start(1 if not args.diff else 4)
    material = Material()
    for names in ("same", "new") if args.names == "both" else (args.names,):
        rows: list[dict[str, Any]] = []
        asyncio.run(churn(args.cycles, args.hosts, names, material, rows))
        print(f"names={names}: live {slope(rows, 'live_kib', 5):+.1f} KiB/cycle after cycle 5, "
              f"RSS {slope(rows, 'rss_kib', 10) / 1024:+.3f} MiB/cycle after cycle 10, "
              f"host series with the small set in: {rows[-1]['host_series_small']}", flush=True)
        first = next((r["snapshot"] for r in rows if "snapshot" in r), None)
        if args.diff and first is not None:
            for stat in tracemalloc.take_snapshot().compare_to(first, "traceback")[:15]:
                print(f"  {stat.size_diff / 1024:+8.1f} KiB {stat.count_diff:+6d} blocks  "
                      + " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in reversed(stat.traceback)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
