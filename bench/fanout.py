"""Fan-out at pod scale (issue 18): with the chart's data plane scaled to N pods on the rig's real node and M
Ingresses applied, how long after one Ingress change every pod serves it, and what that change costs the
controller: the bytes it sends (the push bodies it logs, and what its sockets carry on the wire) and its CPU.

This is a benchmark, not a test: it prints figures and asserts nothing. It runs what users run: `helm install`
of charts/portcullis with the image deploy/image/build.py makes, on the node e2e/cluster/node-up starts (both
reused when already up, and left up afterwards), with one backend pod of the e2e backend image.

"Served" is proven per pod, not through the Service: a thread per data-plane pod sends a fresh HTTP request with
the changed host to that pod's IP (port 8080) every ``--probe-interval`` until the backend answers, so the
latency is from the API write's response to that pod's first answer from the backend (to within the interval).
The probes land on the node they measure; what they cost is measured first and printed, and taken out of the
data planes' CPU per change.

Costs are measured from outside the processes, from the host (as root): CPU from each container's cgroup (v1
``cpuacct.usage``, and ``cpu.stat`` for how long the controller's CPU limit held it back), wire bytes from the
kernel's per-socket counters in the controller pod's network namespace (``ss -ti``: TLS records to data-plane
admin ports, and everything else), the push bodies from the controller's own log line per push, and the data
planes' apply time from their /metrics. An idle baseline (resync polls, lease renewals) is measured first and
subtracted.

    .venv/bin/python -m bench.fanout [--ingresses 2000] [--dataplanes 10] [--changes 10]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import fcntl
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.cluster_edge import ClusterEdge
from e2e.kube import Cluster, Kube, api_client, wait_for
from e2e.node import Node, build_images, node_up
from e2e.objects import ingress
from e2e.release import Release

REPO = Path(__file__).resolve().parent.parent
UP = REPO / "e2e" / "cluster" / "up"
CGROUPS = Path("/sys/fs/cgroup")
CPUACCT = CGROUPS / "cpuacct" / "kubepods"
PODS_LOGS = Path("/var/log/pods")
BACKEND = "web"
HTTP_PORT, ADMIN_PORT = 8080, 9901
SERVED_BOUND = 1.0  # the figure: every pod serves one change within this many seconds
PUSHED = re.compile(r"pushed (full|delta) \((\d+) bytes\) to (\S+): generation \d+")
RENDERED = re.compile(r"rendered \d+ TLS hosts, (\d+) virtual hosts, \d+ problems in ([0-9.]+) s")
APPLY_SUM = re.compile(r"^portcullis_snapshot_apply_seconds_sum(?:\{[^}]*\})? ([0-9.e+-]+)$", re.MULTILINE)


def host(name: str) -> str:
    return f"{name}.fanout.test"


# --------------------------------------------------------------------------------------------- the rig


def state_dir() -> Path:
    return Path(os.environ.get("PORTCULLIS_E2E_STATE", "/tmp/portcullis-e2e"))


@contextlib.contextmanager
def rig_user(state: Path) -> Iterator[None]:
    """Hold the rig as e2e/conftest.py does (a shared flock on users.lock): a test session that started the rig
    tears it down at its end only if it can take that lock exclusively, so never under this benchmark."""
    state.mkdir(parents=True, exist_ok=True)
    with (state / "users.lock").open("a+") as users:
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(users, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemExit("the rig was held exclusively (being torn down) for 10 minutes") from None
                time.sleep(0.5)
        yield


def rig_up(state: Path) -> Cluster:
    """e2e/cluster/up is idempotent: a healthy rig is reused."""
    done = subprocess.run([str(UP)], capture_output=True, text=True, timeout=2400, check=False)
    if done.returncode != 0:
        raise SystemExit(f"e2e/cluster/up failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    fields = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    kubeconfig = Path(fields["KUBECONFIG"])
    return Cluster(kubeconfig, Kube(api_client(kubeconfig)), local_rig=True, state_dir=state)


def make_namespace(kube: Kube) -> str:
    name = f"bench-fanout-{int(time.time()) % 100000}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": {"portcullis.io/bench": "fanout"}}})
    return name


def install(release: Release, dataplanes: int) -> None:
    """One controller (the one that pushes), N single-worker data planes with small requests so ten fit the
    2-core node; limits stay the chart's defaults, which is what users get."""
    timed("helm install", lambda: release.install(
        controller={"replicas": 1},
        dataplane={"replicas": dataplanes, "workers": 1, "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}}}))
    timed("the controller pod ready", lambda: release.wait_rolled_out("controller", 1, timeout=300.0))
    timed(f"{dataplanes} data-plane pods ready", lambda: release.wait_rolled_out("dataplane", dataplanes,
                                                                                    timeout=300.0))


def cleanup(cluster: Cluster, release: Release, namespace: str) -> None:
    """Uninstall first (so no controller renders while 2,000 Ingresses go), then the namespace, waited for
    (bounded) so that a next run starts on a quiet apiserver."""
    try:
        release.uninstall()
    except Exception as exc:  # the namespace deletion below removes what is left
        print(f"helm uninstall failed: {exc!r}", file=sys.stderr)
    cluster.kube.delete("v1", "Namespace", namespace)
    with contextlib.suppress(TimeoutError):
        wait_for(f"namespace {namespace} gone", lambda: cluster.kube.get("v1", "Namespace", namespace) is None,
                 300.0, interval=1.0)


# --------------------------------------------------------------------------------------------- Ingresses


def create_ingresses(api: client.ApiClient, namespace: str, ingress_class: str, count: int,
                     threads: int = 8) -> float:
    """Creates h0..h<count-1> with a few client threads (as ``kubectl apply -f dir`` would); seconds taken."""
    net = client.NetworkingV1Api(api)

    def create(i: int) -> None:
        body: Any = ingress(f"h{i}", host(f"h{i}"), BACKEND, 80, ingress_class)  # the client sends a dict as is
        net.create_namespaced_ingress(namespace, body, _preload_content=False, _request_timeout=30)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(count)))
    return time.monotonic() - started


def add_host(api: client.ApiClient, namespace: str, name: str, new_host: str) -> None:
    """The change: one more rule (host) on an existing Ingress, as a JSON patch (one API write)."""
    rule = {"host": new_host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
        "service": {"name": BACKEND, "port": {"number": 80}}}}]}}
    client.NetworkingV1Api(api).patch_namespaced_ingress(
        name, namespace, [{"op": "add", "path": "/spec/rules/-", "value": rule}],
        _preload_content=False, _request_timeout=30)


# --------------------------------------------------------------------------------------------- probing pods


def backend_answers(address: str, name: str, timeout: float = 1.0) -> bool:
    """One fresh connection to a data-plane pod's HTTP port: does the backend answer for ``name``? (Before the
    change reaches the pod, the data plane itself answers 404.) Raw socket, status line and headers only: the
    probe runs every few milliseconds per pod and must cost the 2-core node little."""
    request = f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\nUser-Agent: portcullis-bench\r\n\r\n"
    with socket.create_connection((address, HTTP_PORT), timeout=timeout) as sock:
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    text = head.decode("latin-1").lower()
    return text.startswith("http/1.1 200") and f"x-echo-server: {BACKEND}\r\n" in text


def first_served(address: str, name: str, deadline: float, interval: float) -> float | None:
    """Monotonic time of the first backend answer for ``name`` from this pod; None if not by ``deadline``."""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if backend_answers(address, name):
                return time.monotonic()
        time.sleep(interval)
    return None


def probes_sent(address: str, name: str, deadline: float, interval: float) -> int:
    """``first_served``'s loop for a host nobody serves, counting: what the probing itself costs."""
    sent = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            backend_answers(address, name)
        sent += 1
        time.sleep(interval)
    return sent


def all_serve(addresses: Sequence[str], name: str, timeout: float) -> dict[str, float | None]:
    """Every pod probed at once until it serves ``name`` (one thread per pod, slow interval): for waits that
    are not measured to the millisecond."""
    deadline = time.monotonic() + timeout
    with concurrent.futures.ThreadPoolExecutor(len(addresses)) as pool:
        found = pool.map(lambda a: first_served(a, name, deadline, 0.1), addresses)
        return dict(zip(addresses, found, strict=True))


# --------------------------------------------------------------------------------------------- what runs where


@dataclass(frozen=True)
class Container:
    """A pod's (first) container as the host sees it."""

    pod: str
    address: str
    cgroup: Path | None  # cgroup v1 cpuacct directory; None when not found

    def cpu_ns(self) -> int | None:
        if self.cgroup is None:
            return None
        try:
            return int((self.cgroup / "cpuacct.usage").read_text())
        except OSError:
            return None

    def throttled_ns(self) -> int | None:
        """Time the CFS quota (the CPU limit) held the container back: the cpu controller's ``cpu.stat``."""
        if self.cgroup is None:
            return None
        stat = CGROUPS / "cpu" / self.cgroup.relative_to(CGROUPS / "cpuacct") / "cpu.stat"
        try:
            fields = dict(line.split() for line in stat.read_text().splitlines())
            return int(fields["throttled_time"])
        except (OSError, KeyError, ValueError):
            return None

    def pid(self) -> int | None:
        if self.cgroup is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            return int((self.cgroup / "cgroup.procs").read_text().split()[0])
        return None


def container(pod: Any) -> Container:
    """The pod's cgroup under the kubelet's cgroupfs layout: kubepods[/burstable|/besteffort]/pod<uid>/<id>."""
    container_id = pod.status.containerStatuses[0].containerID.removeprefix("containerd://")
    uid = pod.metadata.uid
    found = [CPUACCT / qos / f"pod{uid}" / container_id for qos in ("", "burstable", "besteffort")]
    cgroup = next((path for path in found if path.is_dir()), None)
    return Container(pod.metadata.name, pod.status.podIP, cgroup)


def cpu_total(containers: Sequence[Container]) -> int | None:
    values = [c.cpu_ns() for c in containers]
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


@dataclass(frozen=True)
class SocketBytes:
    """Bytes the controller's TCP sockets sent, by (local, peer) address: the kernel's counters, read with
    ``ss -ti`` inside the controller pod's network namespace."""

    sent: dict[tuple[str, str], int]

    @staticmethod
    def read(pid: int | None) -> SocketBytes | None:
        if pid is None:
            return None
        try:
            done = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ss", "-tinH"], capture_output=True,
                                  text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return SocketBytes(parse_ss(done.stdout))

    def since(self, before: SocketBytes, to_port: int) -> tuple[int, int, int]:
        """Bytes sent since ``before`` to peers on ``to_port`` and to every other peer, and how many sockets
        closed meanwhile (their last bytes are not counted)."""
        push = other = 0
        for key, sent in self.sent.items():
            grown = sent - before.sent.get(key, 0)
            if key[1].rsplit(":", 1)[-1] == str(to_port):
                push += grown
            else:
                other += grown
        return push, other, len(set(before.sent) - set(self.sent))


def parse_ss(text: str) -> dict[tuple[str, str], int]:
    """``ss -tinH``: a line per socket (state, queues, local, peer), then an indented line of counters."""
    sent: dict[tuple[str, str], int] = {}
    key: tuple[str, str] | None = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            fields = line.split()
            key = (fields[3], fields[4]) if len(fields) >= 5 else None
        elif key is not None:
            match = re.search(r"\bbytes_sent:(\d+)", line)
            sent[key] = int(match.group(1)) if match else 0
            key = None
    return sent


def apply_seconds(address: str) -> float | None:
    """Seconds this data plane spent validating and applying snapshots so far (its /metrics, admin port)."""
    context = ssl._create_unverified_context()  # the push CA is the chart's; only a figure is read here
    try:
        with urllib.request.urlopen(f"https://{address}:{ADMIN_PORT}/metrics", context=context,
                                    timeout=3) as response:
            match = APPLY_SUM.search(response.read().decode())
    except OSError:
        return None
    return float(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------- the controller log


@dataclass(frozen=True)
class Push:
    at: float  # unix time the kubelet read the line: the push was answered (applied) just before
    kind: str
    size: int
    dataplane: str


@dataclass(frozen=True)
class Render:
    at: float
    virtual_hosts: int
    seconds: float


def cri_time(line: str) -> float:
    """The timestamp the kubelet puts in front of each line (RFC 3339, nanoseconds, UTC) as unix time."""
    stamp = line.split(" ", 1)[0].rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    seconds = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC).timestamp()
    return seconds + float(f"0.{fraction or 0}")


@dataclass(frozen=True)
class LogView:
    """What the controller logs per render and per push (its INFO lines), since an offset in its log file.

    Read from the file the kubelet writes on the host (/var/log/pods), not through the apiserver: on the rig the
    apiserver cannot reach the kubelet by the node's name, a file offset marks "since the change" exactly, and
    the kubelet's timestamps say when each render and push finished."""

    pushes: list[Push]
    renders: list[Render]
    end: int  # offset to read the next view from

    @staticmethod
    def read(path: Path | None, since: int) -> LogView:
        if path is None:
            return LogView([], [], 0)
        with path.open("rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
            end = handle.tell()
        pushes, renders = [], []
        for line in text.splitlines():
            if pushed := PUSHED.search(line):
                pushes.append(Push(cri_time(line), pushed[1], int(pushed[2]), pushed[3]))
            elif rendered := RENDERED.search(line):
                renders.append(Render(cri_time(line), int(rendered[1]), float(rendered[2])))
        return LogView(pushes, renders, end)


def log_file(pod: Any) -> Path | None:
    """The kubelet's file for the pod's first container: /var/log/pods/<ns>_<name>_<uid>/<container>/<n>.log."""
    meta = pod.metadata
    folder = PODS_LOGS / f"{meta.namespace}_{meta.name}_{meta.uid}" / pod.spec.containers[0].name
    files = sorted(folder.glob("*.log"), key=lambda f: f.stat().st_mtime)
    return files[-1] if files else None


# --------------------------------------------------------------------------------------------- one change


@dataclass
class Meters:
    """Where the costs are read: the controller's container and sockets, the data planes' containers."""

    api: client.ApiClient
    namespace: str
    controller: Container
    dataplanes: list[Container]
    controller_log: Path | None

    def sample(self) -> Sample:
        return Sample(time.monotonic(), self.controller.cpu_ns(), self.controller.throttled_ns(),
                      cpu_total(self.dataplanes), time.process_time_ns(), SocketBytes.read(self.controller.pid()))

    def log(self, since: int) -> LogView:
        return LogView.read(self.controller_log, since)

    def log_end(self) -> int:
        return self.controller_log.stat().st_size if self.controller_log is not None else 0

    def apply_total(self) -> float | None:
        values = [apply_seconds(c.address) for c in self.dataplanes]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)


@dataclass(frozen=True)
class Sample:
    at: float
    controller_ns: int | None
    throttled_ns: int | None
    dataplanes_ns: int | None
    own_ns: int
    sockets: SocketBytes | None


@dataclass(frozen=True)
class Costs:
    """Differences between two samples, over ``seconds``."""

    seconds: float
    controller_ms: float | None
    throttled_ms: float | None  # the controller held back by its CPU limit
    dataplanes_ms: float | None
    own_ms: float  # this process (the probes)
    push_bytes: float | None
    other_bytes: float | None
    closed_sockets: int

    @staticmethod
    def between(before: Sample, after: Sample) -> Costs:
        def ms(a: int | None, b: int | None) -> float | None:
            return (b - a) / 1e6 if a is not None and b is not None else None

        push = other = None
        closed = 0
        if before.sockets is not None and after.sockets is not None:
            push, other, closed = after.sockets.since(before.sockets, ADMIN_PORT)
        return Costs(after.at - before.at, ms(before.controller_ns, after.controller_ns),
                     ms(before.throttled_ns, after.throttled_ns), ms(before.dataplanes_ns, after.dataplanes_ns),
                     (after.own_ns - before.own_ns) / 1e6, push, other, closed)

    def net_of(self, idle: Costs) -> Costs:
        """These costs minus what the idle baseline spends in as long a time (throttling is left as is)."""
        scale = self.seconds / idle.seconds

        def less(value: float | None, base: float | None) -> float | None:
            return value - base * scale if value is not None and base is not None else None

        return replace(self, controller_ms=less(self.controller_ms, idle.controller_ms),
                       dataplanes_ms=less(self.dataplanes_ms, idle.dataplanes_ms),
                       own_ms=self.own_ms - idle.own_ms * scale,
                       push_bytes=less(self.push_bytes, idle.push_bytes),
                       other_bytes=less(self.other_bytes, idle.other_bytes))

    def less_probes(self, probe: ProbeCost, pod_seconds: float) -> Costs:
        """The data planes' CPU without what answering ``pod_seconds`` of probing cost them."""
        if self.dataplanes_ms is None:
            return self
        return replace(self, dataplanes_ms=self.dataplanes_ms - probe.dataplane_ms * pod_seconds)


@dataclass
class Change:
    index: int
    ingress: str
    host: str
    write_ms: float = 0.0
    latencies: dict[str, float | None] = field(default_factory=dict)  # pod address -> seconds after the write
    costs: Costs | None = None
    net: Costs | None = None
    pushes: list[Push] = field(default_factory=list)
    renders: list[Render] = field(default_factory=list)
    written_at: float = 0.0  # unix time of the write's response
    probing: float = 0.0  # pod-seconds of probing (each pod until it served)
    apply_ms: float | None = None

    def served(self) -> list[float]:
        return sorted(v for v in self.latencies.values() if v is not None)

    def missed(self) -> int:
        return sum(v is None for v in self.latencies.values())

    def within(self, bound: float) -> bool:
        return not self.missed() and max(self.served(), default=0.0) <= bound


def run_change(meters: Meters, change: Change, interval: float, timeout: float, settle: float) -> None:
    """Probers first (each sees the data plane's 404 until the change arrives), then the API write; the clock
    starts at the write's response. Costs are read just before the write and ``settle`` seconds after the last
    pod served, so the pushes, the data planes' applies and their state-file writes fall inside."""
    offset = meters.log_end()
    applied_before = meters.apply_total()
    addresses = [c.address for c in meters.dataplanes]
    deadline = time.monotonic() + timeout
    probing_from = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(addresses)) as pool:
        futures = {a: pool.submit(first_served, a, change.host, deadline, interval) for a in addresses}
        before = meters.sample()
        started = time.monotonic()
        add_host(meters.api, meters.namespace, change.ingress, change.host)
        written, change.written_at = time.monotonic(), time.time()
        change.write_ms = (written - started) * 1000
        served = {a: f.result() for a, f in futures.items()}
    change.latencies = {a: None if t is None else t - written for a, t in served.items()}
    change.probing = sum((deadline if t is None else t) - probing_from for t in served.values())
    time.sleep(settle)
    after = meters.sample()
    change.costs = Costs.between(before, after)
    view = meters.log(offset)
    change.pushes = view.pushes
    change.renders = view.renders
    applied_after = meters.apply_total()
    if applied_before is not None and applied_after is not None:
        change.apply_ms = (applied_after - applied_before) * 1000


# --------------------------------------------------------------------------------------------- waiting for quiet


def wait_quiet(meters: Meters, timeout: float, below_ms_per_s: float = 100.0, for_seconds: int = 3) -> float:
    """Until the controller spends under ``below_ms_per_s`` CPU ms a second for ``for_seconds`` seconds in a row
    (after a bulk create it writes 2,000 Ingress statuses; a change measured meanwhile would be charged for them).
    Returns seconds waited (``timeout`` when it never went quiet)."""
    started = time.monotonic()
    calm = 0
    last = meters.controller.cpu_ns()
    while calm < for_seconds and time.monotonic() - started < timeout:
        time.sleep(1.0)
        now = meters.controller.cpu_ns()
        if last is None or now is None:
            return 0.0
        calm = calm + 1 if (now - last) / 1e6 < below_ms_per_s else 0
        last = now
    return time.monotonic() - started


def idle_costs(meters: Meters, seconds: float) -> Costs:
    before = meters.sample()
    time.sleep(seconds)
    return Costs.between(before, meters.sample())


@dataclass(frozen=True)
class ProbeCost:
    """What probing costs, so that a change is not charged for it: the probes land on the same 2 cores."""

    per_pod_second: float  # probes one pod answers per second of probing
    dataplane_ms: float  # data-plane CPU per pod-second of probing, idle subtracted
    own_ms: float  # this process's CPU per second of probing every pod


def probe_cost(meters: Meters, idle: Costs, interval: float, seconds: float = 3.0) -> ProbeCost:
    addresses = [c.address for c in meters.dataplanes]
    before = meters.sample()
    deadline = time.monotonic() + seconds
    with concurrent.futures.ThreadPoolExecutor(len(addresses)) as pool:
        sent = list(pool.map(lambda a: probes_sent(a, host("nobody"), deadline, interval), addresses))
    costs = Costs.between(before, meters.sample()).net_of(idle)
    pod_seconds = len(addresses) * costs.seconds
    return ProbeCost(sum(sent) / pod_seconds, (costs.dataplanes_ms or 0.0) / pod_seconds, costs.own_ms / costs.seconds)


# --------------------------------------------------------------------------------------------- printing


def fmt(value: float | int | None, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def print_idle(idle: Costs, dataplanes: int) -> None:
    per_s = 1 / idle.seconds
    print(f"idle baseline over {idle.seconds:.1f} s (subtracted below): controller "
          f"{fmt(mul(idle.controller_ms, per_s), '.1f')} CPU ms/s, {dataplanes} data planes "
          f"{fmt(mul(idle.dataplanes_ms, per_s), '.1f')} CPU ms/s; controller sends "
          f"{fmt(mul(idle.push_bytes, per_s))} B/s to data-plane admin ports (resync polls), "
          f"{fmt(mul(idle.other_bytes, per_s))} B/s elsewhere (apiserver)")


def mul(value: float | int | None, factor: float) -> float | None:
    return None if value is None else value * factor


COLUMNS = (  # heading, unit, width
    ("#", "", 2), ("ingress", "", 7), ("write", "ms", 6), ("rendered", "+ms", 9), ("render", "s", 6),
    ("pushed", "+ms", 11), ("served", "med ms", 7), ("served", "max ms", 7), ("missed", "pods", 6),
    ("pushes", "", 10), ("body", "B/pod", 7), ("body", "B", 8), ("wire to", "DPs B", 8), ("ctl CPU", "ms", 7),
    ("thrott", "ms", 6), ("DP CPU", "ms", 7), ("DP apply", "ms sum", 8), ("bench", "CPU ms", 6),
    ("closed", "sockets", 7),
)


def change_row(c: Change) -> list[str]:
    """One change's figures, in COLUMNS' order; times of the controller's log lines are relative to the write."""
    served = c.served()
    body = sum(p.size for p in c.pushes)
    pods = len({p.dataplane for p in c.pushes})
    pushed = [(p.at - c.written_at) * 1000 for p in c.pushes]
    net = c.net
    return [
        str(c.index), c.ingress, f"{c.write_ms:.1f}",
        "/".join(f"{(r.at - c.written_at) * 1000:.0f}" for r in c.renders) or "n/a",
        "/".join(f"{r.seconds:.2f}" for r in c.renders) or "n/a",
        f"{min(pushed):.0f}..{max(pushed):.0f}" if pushed else "n/a",
        fmt(statistics.median(served) * 1000 if served else None), fmt(max(served) * 1000 if served else None),
        str(c.missed()), f"{len(c.pushes)} {'+'.join(sorted({p.kind for p in c.pushes}))}",
        fmt(body / pods if pods else None), str(body), fmt(net.push_bytes if net else None),
        fmt(net.controller_ms if net else None), fmt(net.throttled_ms if net else None),
        fmt(net.dataplanes_ms if net else None), fmt(c.apply_ms), fmt(net.own_ms if net else None),
        str(net.closed_sockets if net else 0),
    ]


def print_change_table(changes: Sequence[Change]) -> None:
    print()
    print("per change: latency from the API write's response to each pod's first backend answer; the controller's "
          "render and push lines as +ms after that response; costs from just before the write to 1 s after the "
          "last pod served, idle baseline subtracted (and from DP CPU, the probes)")
    for row in ([h for h, _, _ in COLUMNS], [u for _, u, _ in COLUMNS], *(change_row(c) for c in changes)):
        print(" ".join(cell.rjust(width) for cell, (_, _, width) in zip(row, COLUMNS, strict=True)))


def print_summary(changes: Sequence[Change], dataplanes: int) -> None:
    every = [v for c in changes for v in c.served()]
    missed = sum(c.missed() for c in changes)
    held = all(c.within(SERVED_BOUND) for c in changes)
    print()
    if every:
        worst = [max(c.served()) for c in changes if c.served()]
        print(f"over {len(changes)} changes x {dataplanes} pods: per-pod latency p50 "
              f"{percentile(every, 0.5) * 1000:.0f} ms, p90 {percentile(every, 0.9) * 1000:.0f} ms, max "
              f"{max(every) * 1000:.0f} ms; slowest pod per change: median {statistics.median(worst) * 1000:.0f} ms;"
              f" {missed} pod-change(s) never served within the probe timeout")
    print(f"every pod within {SERVED_BOUND:.0f} s of the change, for every change: {'YES' if held else 'NO'}"
          + ("" if held else f" ({sum(not c.within(SERVED_BOUND) for c in changes)} of {len(changes)} changes "
                             "missed it)"))
    bodies = [sum(p.size for p in c.pushes) for c in changes if c.pushes]
    wire = [c.net.push_bytes for c in changes if c.net is not None and c.net.push_bytes is not None]
    nets = [c.net for c in changes if c.net is not None]
    cpu = [n.controller_ms for n in nets if n.controller_ms is not None]
    throttled = [n.throttled_ms for n in nets if n.throttled_ms is not None]
    dp = [n.dataplanes_ms for n in nets if n.dataplanes_ms is not None]
    kinds = sorted({p.kind for c in changes for p in c.pushes})
    if bodies:
        print(f"controller sends per change (median): push bodies {statistics.median(bodies):.0f} B "
              f"({statistics.median(bodies) / dataplanes:.0f} B per data-plane pod, push kinds: {', '.join(kinds)});"
              f" on the wire to data-plane admin ports {fmt(statistics.median(wire) if wire else None)} B (TLS, "
              "HTTP and the body)")
    print(f"controller CPU per change (median, net of idle): {fmt(statistics.median(cpu) if cpu else None)} ms, "
          f"held back by its CPU limit for {fmt(statistics.median(throttled) if throttled else None)} ms; "
          f"all {dataplanes} data-plane pods together: {fmt(statistics.median(dp) if dp else None)} ms "
          f"({fmt(statistics.median(dp) / dataplanes if dp else None)} ms per pod; net of idle and of the probes)")


# --------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Options:
    ingresses: int
    dataplanes: int
    changes: int
    probe_interval: float
    timeout: float
    gap: float


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingresses", type=int, default=2000)
    parser.add_argument("--dataplanes", type=int, default=10)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--probe-interval", type=float, default=0.02, metavar="SECONDS",
                        help="sleep between one pod's probes while waiting for a change (default 20 ms: at 5 ms, "
                             "probing 10 pods took about a third of the 2-core node it measures)")
    parser.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                        help="give up on a change reaching a pod after this long (default 15)")
    parser.add_argument("--gap", type=float, default=2.0, metavar="SECONDS", help="quiet time between changes")
    args = parser.parse_args(argv)
    if not 1 <= args.ingresses <= 20000 or not 1 <= args.dataplanes <= 20 or not 1 <= args.changes <= 100:
        parser.error("--ingresses 1..20000, --dataplanes 1..20, --changes 1..100")
    return Options(args.ingresses, args.dataplanes, args.changes, args.probe_interval, args.timeout, args.gap)


def limits(pod: Any) -> str:
    found = pod.spec.containers[0].resources.limits or {}
    return f"CPU {found.get('cpu', 'none')}, memory {found.get('memory', 'none')}"


def timed(what: str, step: Callable[[], Any]) -> Any:
    started = time.monotonic()
    result = step()
    print(f"{what}: {time.monotonic() - started:.1f} s", flush=True)
    return result


def prepare(cluster: Cluster, node: Node, release: Release, options: Options) -> Meters:
    """The chart installed, the backend up, and where its costs are read."""
    install(release, options.dataplanes)
    edge = ClusterEdge(cluster, release.namespace, Path(tempfile.gettempdir()), target=release.target,
                       ingress_class=release.ingress_class, image=node.backend_image.name)
    timed("backend pod ready", lambda: edge.backend(BACKEND, "http"))
    controller, dataplanes = release.ready_pods("controller")[0], release.ready_pods("dataplane")
    print(f"limits: controller {limits(controller)}, each data plane {limits(dataplanes[0])} "
          f"({release.values['dataplane']['workers']} worker)")
    meters = Meters(cluster.kube.api, release.namespace, container(controller), [container(p) for p in dataplanes],
                    log_file(controller))
    if meters.controller_log is None:
        print(f"(no log file of the controller under {PODS_LOGS}: push and render figures are n/a)")
    if meters.controller.cgroup is None:
        print(f"(no cgroup v1 cpuacct directory under {CPUACCT} for the controller: CPU figures are n/a)")
    return meters


def bulk_create(meters: Meters, ingress_class: str, count: int) -> None:
    """Every Ingress, then until every pod serves the last one and the controller has written their statuses."""
    offset = meters.log_end()
    took = create_ingresses(meters.api, meters.namespace, ingress_class, count)
    print(f"created {count} Ingresses with 8 client threads: {took:.1f} s ({count / took:.0f}/s)", flush=True)
    last = host(f"h{count - 1}")
    started = time.monotonic()
    served = all_serve([c.address for c in meters.dataplanes], last, 600.0)
    late = [a for a, t in served.items() if t is None]
    if late:
        raise SystemExit(f"{len(late)} data-plane pods never served {last} within 600 s: {late}")
    print(f"every data-plane pod serves the last host {max(t for t in served.values() if t) - started:.1f} s "
          "after the last create", flush=True)
    print(f"controller quiet (writing statuses meanwhile) after {wait_quiet(meters, 300.0):.1f} s more", flush=True)
    bulk = meters.log(offset)
    last_render = bulk.renders[-1].seconds if bulk.renders else None
    print(f"the bulk create cost {len(bulk.renders)} renders (the last {fmt(last_render, '.2f')} s) and "
          f"{len(bulk.pushes)} pushes, {sum(p.size for p in bulk.pushes)} body bytes in all")


def baselines(meters: Meters, options: Options) -> tuple[Costs, ProbeCost]:
    idle = idle_costs(meters, 5.0)
    print_idle(idle, options.dataplanes)
    probe = probe_cost(meters, idle, options.probe_interval)
    print(f"probing every pod every {options.probe_interval * 1000:.0f} ms: {probe.per_pod_second:.0f} probes/s per "
          f"pod, {probe.dataplane_ms:.1f} data-plane CPU ms per pod-second probed (subtracted below), "
          f"{probe.own_ms:.0f} CPU ms/s in this process while all pods are probed", flush=True)
    return idle, probe


def measure(cluster: Cluster, node: Node, release: Release, options: Options) -> None:
    meters = prepare(cluster, node, release, options)
    bulk_create(meters, release.ingress_class, options.ingresses)
    idle, probe = baselines(meters, options)
    changes = [Change(k, f"h{k * options.ingresses // options.changes}", host(f"c{k}"))
               for k in range(options.changes)]
    for change in changes:
        time.sleep(options.gap)
        run_change(meters, change, options.probe_interval, options.timeout, settle=1.0)
        assert change.costs is not None
        change.net = change.costs.net_of(idle).less_probes(probe, change.probing)
    print_change_table(changes)
    print_summary(changes, options.dataplanes)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    state = state_dir()
    print(f"fan-out: {options.ingresses} Ingresses, {options.dataplanes} data-plane pods, {options.changes} "
          "changes", flush=True)
    with rig_user(state):
        cluster = timed("rig up (e2e/cluster/up)", lambda: rig_up(state))
        node: Node = timed("images built and node up", lambda: node_up(state, build_images()))
        print(f"node {node.name} ({'started' if node.started else 'reused'}), image {node.portcullis_image.name}")
        namespace = make_namespace(cluster.kube)
        release = Release(cluster, node, namespace)
        print(f"namespace and release {namespace}", flush=True)
        try:
            measure(cluster, node, release, options)
        finally:
            timed("cleanup (helm uninstall, namespace deleted)", lambda: cleanup(cluster, release, namespace))
            print("the rig and its node stay up; tear them down with: e2e/cluster/down --force")
    return 0


if __name__ == "__main__":
    sys.exit(main())
