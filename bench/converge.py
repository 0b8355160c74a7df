"""Convergence at scale on the e2e rig: how long after the last ``create`` every host is served, after the last
``delete`` every host is gone, and after one change among N that change is served; what it costs the controller
(CPU seconds, peak RSS) and the data plane (RSS); how many bytes each push carried.

This is a benchmark, not a test: it prints figures, asserts nothing about time. It runs the real thing the e2e
tests run (``e2e/README.md``): kube-apiserver on this machine, ``portcullis controller`` on the host,
``portcullis dataplane`` in a netns pod, Ingresses with a distinct TLS Secret each, created through the API with a
few client threads (as ``kubectl apply -f dir`` would).

"Served" is proven with real TLS handshakes to the data plane: a host is served once the data plane presents that
host's own certificate for its SNI (before, it presents its fallback). The clock stops when the last host created
(or the changed one) is served, and a full sweep over every host then confirms all of them (counted in the time
if the sweep has to wait for stragglers). "Gone" is the same in reverse.

    sudo .venv/bin/python bench/converge.py 500 2000 [5000] [--json out.json] [--profile-seconds 20]

Also prints, without the rig, the bytes one change costs under each push encoding (full JSON, gzip, delta, gzip
delta) for the same N, from the renderer itself: ``bench/converge.py --encodings-only 2000``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import gzip
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509

REPO = Path(__file__).resolve().parent.parent
PUSHED = re.compile(r"pushed (full|delta) \((\d+) bytes\)")
RENDERED = re.compile(r"rendered (\d+) TLS hosts.* in ([0-9.]+) s")
CLIENT_THREADS = 8


# --- probes -------------------------------------------------------------------------------------------------


def presented_serial(address: str, port: int, host: str, timeout: float = 3.0) -> int | None:
    """Serial number of the certificate the data plane presents for SNI ``host`` (None: no handshake)."""
    context = ssl._create_unverified_context()
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der).serial_number if der else None


def sweep(address: str, port: int, expected: dict[str, int], want_served: bool) -> list[str]:
    """Hosts not yet in the wanted state (served with their own certificate, or no longer)."""
    def wrong(host: str) -> bool:
        return (presented_serial(address, port, host) == expected[host]) != want_served

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return [h for h, bad in zip(expected, pool.map(wrong, expected), strict=True) if bad]


def until(what: str, probe: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Seconds (monotonic) at which ``probe`` first held."""
    deadline = time.monotonic() + timeout
    while True:
        if probe():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def converge(address: str, port: int, expected: dict[str, int], last: str, want_served: bool, start: float,
             timeout: float) -> tuple[float, float]:
    """(seconds until ``last`` reached the state, seconds until every host had)."""
    def state(host: str) -> bool:
        return (presented_serial(address, port, host) == expected[host]) == want_served

    first = until(f"{last} {'served' if want_served else 'gone'}", lambda: state(last), timeout) - start
    remaining = list(expected)
    deadline = time.monotonic() + timeout
    while True:
        remaining = sweep(address, port, {h: expected[h] for h in remaining}, want_served)
        if not remaining:
            return first, time.monotonic() - start
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(remaining)} hosts never {'served' if want_served else 'gone'}: {remaining[:5]}")
        time.sleep(0.1)


# --- process figures ----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pushes(log: Path, since: int) -> list[tuple[str, int]]:
    text = log.read_text(errors="replace")[since:]
    return [(m.group(1), int(m.group(2))) for m in PUSHED.finditer(text)]


def renders(log: Path, since: int) -> list[tuple[int, float]]:
    text = log.read_text(errors="replace")[since:]
    return [(int(m.group(1)), float(m.group(2))) for m in RENDERED.finditer(text)]


# --- one scale ----------------------------------------------------------------------------------------------


def run_scale(n: int, kubeconfig: Path, state: Path, work: Path, profile_seconds: float) -> dict[str, Any]:
    from e2e.components import HTTPS_PORT
    from e2e.harness import Edge
    from e2e.kube import Cluster, Kube, api_client
    from e2e.netns import PodFactory
    from e2e.objects import ingress, tls_secret
    from tests.pki import CA

    cluster = Cluster(kubeconfig, Kube(api_client(kubeconfig)), local_rig=True, state_dir=state)
    kube = cluster.kube
    namespace = f"bench-{n}-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    pods = PodFactory(state, work / namespace / "pod-logs")
    edge = Edge(cluster, namespace, pods, work / namespace)
    out: dict[str, Any] = {"ingresses": n}
    try:
        dataplane = edge.add_dataplane()
        edge.backend("web", "http")
        controller = edge.add_controller(publish_address="192.0.2.10")  # status writes, as in a real cluster
        edge.wait_ready(dataplane, timeout=60)
        assert controller.proc is not None
        pid, dp_pid = controller.proc.pid, dataplane.pod.processes["dataplane"].pid
        address = dataplane.address

        ca = CA(f"Bench CA {n}")
        hosts = [f"h{i}.{namespace}.bench.test" for i in range(n)]
        issued = {h: ca.issue(h) for h in hosts}
        expected = {h: issued[h].cert.serial_number for h in hosts}
        secrets = [tls_secret(f"s{i}", issued[h].cert_pem, issued[h].key_pem) for i, h in enumerate(hosts)]
        ingresses = [ingress(f"i{i}", h, "web", 80, edge.ingress_class, tls_secret=f"s{i}")
                     for i, h in enumerate(hosts)]

        def create_all(docs: Iterable[dict[str, Any]]) -> None:
            with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
                list(pool.map(lambda d: kube.apply(d, namespace=namespace), docs))

        log_mark = controller.log_path.stat().st_size
        cpu0 = cpu_seconds(pid)
        t0 = time.monotonic()
        create_all(secrets)
        create_all(ingresses[:-1])
        create_all(ingresses[-1:])  # the last create is the last one to return
        last_create = time.monotonic()
        out["create_seconds"] = round(last_create - t0, 2)
        profiler = None
        py_spy = shutil.which("py-spy", path=os.environ.get("PY_SPY_PATH"))
        if profile_seconds and py_spy:  # folded stacks of the controller right after the creates
            profiler = subprocess.Popen(
                [py_spy, "record", "-p", str(pid), "-d", str(int(profile_seconds)), "-f", "raw",
                 "-o", str(work / f"controller-{n}.folded"), "-r", "50", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif profile_seconds:
            print("py-spy not found (PATH or PY_SPY_PATH): no profile", file=sys.stderr)
        first, all_served = converge(address, HTTPS_PORT, expected, hosts[-1], True, last_create, timeout=600)
        out["served_last_host_s"] = round(first, 2)
        out["served_all_s"] = round(all_served, 2)
        out["controller_cpu_s_create"] = round(cpu_seconds(pid) - cpu0, 2)
        out["pushes_create"] = pushes(controller.log_path, log_mark)
        out["renders_create"] = renders(controller.log_path, log_mark)
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(timeout=profile_seconds + 30)

        # One change among n: host 0 gets a new certificate (same name, new serial).
        time.sleep(3.0)  # let the status writes' watch events settle, so the change is timed alone
        log_mark = controller.log_path.stat().st_size
        cpu0 = cpu_seconds(pid)
        changed = hosts[0]
        renewed = ca.issue(changed)
        t_change = time.monotonic()
        kube.apply(tls_secret("s0", renewed.cert_pem, renewed.key_pem), namespace=namespace)
        applied = time.monotonic()
        served = until("changed host served", lambda: presented_serial(address, HTTPS_PORT, changed)
                       == renewed.cert.serial_number, 120) - applied
        out["change_served_s"] = round(served, 3)
        out["change_request_s"] = round(applied - t_change, 3)
        time.sleep(1.0)
        out["pushes_change"] = pushes(controller.log_path, log_mark)
        out["renders_change"] = renders(controller.log_path, log_mark)
        out["controller_cpu_s_change"] = round(cpu_seconds(pid) - cpu0, 2)
        expected[changed] = renewed.cert.serial_number

        out["dataplane_rss_mib_served"] = round(status_kib(dp_pid, "VmRSS") / 1024, 1)
        out["controller_rss_mib_served"] = round(status_kib(pid, "VmRSS") / 1024, 1)

        # Delete every Ingress (their Secrets too), last delete timed like the last create.
        log_mark = controller.log_path.stat().st_size
        cpu0 = cpu_seconds(pid)

        def delete_all(names: list[str], kind: str, api: str) -> None:
            with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
                list(pool.map(lambda name: kube.delete(api, kind, name, namespace), names))

        delete_all([f"i{i}" for i in range(n - 1)], "Ingress", "networking.k8s.io/v1")
        delete_all([f"i{n - 1}"], "Ingress", "networking.k8s.io/v1")
        last_delete = time.monotonic()
        first, all_gone = converge(address, HTTPS_PORT, expected, hosts[-1], False, last_delete, timeout=600)
        out["gone_last_host_s"] = round(first, 2)
        out["gone_all_s"] = round(all_gone, 2)
        out["controller_cpu_s_delete"] = round(cpu_seconds(pid) - cpu0, 2)
        out["pushes_delete"] = pushes(controller.log_path, log_mark)
        out["controller_peak_rss_mib"] = round(status_kib(pid, "VmHWM") / 1024, 1)
        out["dataplane_peak_rss_mib"] = round(status_kib(dp_pid, "VmHWM") / 1024, 1)
        out["controller_log_lines"] = sum(1 for _ in controller.log_path.open(errors="replace"))
        delete_all([f"s{i}" for i in range(n)], "Secret", "v1")
    finally:
        edge.stop_all()
        pods.cleanup()
        kube.delete("v1", "Namespace", namespace)
    return out


# --- push encodings, from the renderer ----------------------------------------------------------------------


def encodings(n: int) -> dict[str, Any]:
    """Bytes one changed certificate costs among ``n`` Ingresses, per encoding (what the data plane receives)."""
    import base64

    from controller.certificates import ParseCache
    from controller.model import Inputs
    from controller.render import RenderConfig, render
    from dataplane.push_body import compress, make_delta
    from tests.pki import CA

    ca = CA("Encodings CA")

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    objs: list[dict[str, Any]] = [
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "portcullis"},
         "spec": {"controller": "portcullis.io/ingress-controller"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "b"},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-1", "namespace": "b", "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}],
         "ports": [{"name": "http", "port": 8080}]},
    ]
    for i in range(n):
        host = f"h{i}.b.bench.test"
        cert = ca.issue(host)
        objs.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                     "metadata": {"name": f"s{i}", "namespace": "b"},
                     "data": {"tls.crt": b64(cert.cert_pem), "tls.key": b64(cert.key_pem)}})
        objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                     "metadata": {"name": f"i{i}", "namespace": "b"},
                     "spec": {"ingressClassName": "portcullis", "tls": [{"hosts": [host], "secretName": f"s{i}"}],
                              "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                                         "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
    cache = ParseCache()
    t = time.perf_counter()
    before, _ = render(Inputs.from_objects(objs)[0], RenderConfig(), cache)
    cold = time.perf_counter() - t
    renewed = ca.issue("h0.b.bench.test")
    objs[4] = {**objs[4], "data": {"tls.crt": b64(renewed.cert_pem), "tls.key": b64(renewed.key_pem)}}
    inputs = Inputs.from_objects(objs)[0]
    t = time.perf_counter()
    after, _ = render(inputs, RenderConfig(), cache)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    render(inputs, RenderConfig())
    uncached = time.perf_counter() - t
    full = after.to_json().encode()
    delta = json.dumps(make_delta(before, after), separators=(",", ":")).encode()
    return {"ingresses": n, "full_json": len(full), "full_gzip1": len(compress(full, 1)),
            "full_gzip6": len(gzip.compress(full, 6)), "delta_json": len(delta), "delta_gzip1": len(compress(delta, 1)),
            "render_cold_s": round(cold, 3), "render_one_change_cached_s": round(warm, 3),
            "render_one_change_uncached_s": round(uncached, 3)}


# --- main ---------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="+", type=int)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--encodings-only", action="store_true")
    parser.add_argument("--profile-seconds", type=float, default=0.0,
                        help="py-spy (pip install py-spy; found on PATH or PY_SPY_PATH) the controller after the "
                             "creates; folded stacks land in /tmp/portcullis-bench-PID/controller-N.folded")
    args = parser.parse_args()
    results: dict[str, Any] = {"encodings": [], "rig": []}
    for n in args.sizes:
        results["encodings"].append(encodings(n))
        print(json.dumps(results["encodings"][-1]), flush=True)
    if not args.encodings_only:
        state = Path(os.environ.get("PORTCULLIS_E2E_STATE", "/tmp/portcullis-e2e"))
        state.mkdir(parents=True, exist_ok=True)
        work = Path(f"/tmp/portcullis-bench-{os.getpid()}")
        with (state / "users.lock").open("a+") as users:  # a rig user, like a test session (e2e/conftest.py)
            fcntl.flock(users, fcntl.LOCK_SH)
            up = subprocess.run([str(REPO / "e2e/cluster/up")], capture_output=True, text=True, check=True)
            fields = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
            for n in args.sizes:
                results["rig"].append(run_scale(n, Path(fields["KUBECONFIG"]), state, work, args.profile_seconds))
                print(json.dumps(results["rig"][-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
