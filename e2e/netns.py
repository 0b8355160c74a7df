"""Network-namespace "pods" for the local rig: there is no kubelet, so a pod is a netns with one veth on the rig's
bridge, a non-loopback address in 10.231.0.0/24 that exists only on this machine, and processes started inside it.

The API server rejects loopback addresses in EndpointSlices, so these addresses are what make the objects the tests
create realistic; the host (the controller, the test client) reaches them over the bridge, and they reach the
API server at the bridge's host address. Names and addresses match e2e/cluster/common.sh, whose `down` removes any
leftovers by prefix.

Addresses are leased with exclusive-create files in the rig's state dir, so several test sessions sharing one rig
never hand out the same address; a lease whose owner process is gone is taken over.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BRIDGE = "pcbr0"
HOST_ADDR = "10.231.0.1"
NETNS_PREFIX = "pcx-"
VETH_PREFIX = "pcv"
FIRST_OCTET, LAST_OCTET = 10, 250
REPO = Path(__file__).resolve().parent.parent


class RigError(RuntimeError):
    """The rig could not do what a test asked; the message carries the command and its output."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise RigError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_pids(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def die_with_parent() -> None:
    """Runs in the child before exec (and survives it): a pod's process must not outlive a killed test session."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@dataclass
class NetnsPod:
    """One "pod": its netns, its address, and the processes the test started in it."""

    label: str
    octet: int
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.octet}"

    @property
    def veth(self) -> str:
        return f"{VETH_PREFIX}{self.octet}"

    @property
    def address(self) -> str:
        return f"10.231.0.{self.octet}"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the pod (own process group, output to ``<log_dir>/<label>-<name>.log``)."""
        if name in self.processes and self.processes[name].poll() is None:
            raise RigError(f"{self.label}: process {name!r} is already running")
        log_path = self.log_path(name)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=REPO, env={**os.environ, **(env or {})}, start_new_session=True, preexec_fn=die_with_parent,
            )
        self.processes[name] = proc
        return proc

    def python(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Run this checkout's Python (the venv the tests run in) inside the pod."""
        return self.spawn(name, [sys.executable, *args], env={"PYTHONUNBUFFERED": "1", **(env or {})})

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.processes.pop(name)
        if sig == signal.SIGKILL and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        _stop(proc)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{self.label}-{name}.log"

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_path(name)
        if not path.exists():
            return f"(no log at {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def check_running(self, name: str) -> None:
        """Fail loudly, with the log tail, when a process the test relies on has exited."""
        proc = self.processes.get(name)
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise RigError(f"{self.label}/{name} is not running (exit {code}); log tail:\n{self.log_tail(name)}")


class PodFactory:
    """Makes netns pods on the rig's bridge and removes every one it made."""

    def __init__(self, state_dir: Path, log_dir: Path) -> None:
        self.lease_dir = state_dir / "pods"
        self.log_dir = log_dir
        self.pods: list[NetnsPod] = []
        self.lease_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def _lease(self) -> int:
        for octet in range(FIRST_OCTET, LAST_OCTET + 1):
            lease = self.lease_dir / str(octet)
            try:
                fd = os.open(lease, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = int(lease.read_text().strip() or "0")
                except (OSError, ValueError):
                    continue
                if owner and _pid_alive(owner):
                    continue
                _remove_leftovers(octet)  # the owner died without cleaning up: take the address over
                lease.write_text(str(os.getpid()))
                return octet
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return octet
        raise RigError(f"no free pod address in 10.231.0.{FIRST_OCTET}-{LAST_OCTET}")

    def create(self, label: str) -> NetnsPod:
        octet = self._lease()
        pod = NetnsPod(label, octet, self.log_dir)
        self.pods.append(pod)
        _remove_leftovers(octet)
        peer = f"pcp{octet}"
        _ip("netns", "add", pod.netns)
        _ip("link", "add", pod.veth, "type", "veth", "peer", "name", peer, "netns", pod.netns)
        _ip("link", "set", pod.veth, "master", BRIDGE, "up")
        _ip("-n", pod.netns, "link", "set", peer, "name", "eth0")
        _ip("-n", pod.netns, "addr", "add", f"{pod.address}/24", "dev", "eth0")
        _ip("-n", pod.netns, "link", "set", "eth0", "up")
        _ip("-n", pod.netns, "link", "set", "lo", "up")
        _ip("-n", pod.netns, "route", "add", "default", "via", HOST_ADDR)
        return pod

    def delete(self, pod: NetnsPod) -> None:
        for name in list(pod.processes):
            _stop(pod.processes.pop(name))
        _remove_leftovers(pod.octet)
        with contextlib.suppress(FileNotFoundError):
            (self.lease_dir / str(pod.octet)).unlink()
        if pod in self.pods:
            self.pods.remove(pod)

    def cleanup(self) -> None:
        for pod in list(self.pods):
            self.delete(pod)


def _remove_leftovers(octet: int) -> None:
    netns = f"{NETNS_PREFIX}{octet}"
    if Path(f"/run/netns/{netns}").exists():
        for pid in _netns_pids(netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True, timeout=20, check=False)
    subprocess.run(["ip", "link", "delete", f"{VETH_PREFIX}{octet}"], capture_output=True, timeout=20, check=False)


def wait_tcp(host: str, port: int, timeout: float = 10.0) -> None:
    """Until something accepts on host:port (bounded); raises RigError naming the address."""
    import socket

    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.1)
    raise RigError(f"nothing accepted on {host}:{port} within {timeout}s ({last})")
