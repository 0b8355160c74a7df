"""The benchmark's world: certificates, the nginx backend, the proxies' configs and processes.

Every proxy is one process tree we start ourselves (``Popen``), pinned with ``taskset`` to the
proxy core; its CPU time is read from ``/proc/<pid>/stat`` (utime + stime of every process in
the tree), so "CPU per request" is the proxy's own work, not the client's.
"""

from __future__ import annotations

import base64
import contextlib
import os
import resource
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.pki import CA  # noqa: E402

BIND = "127.0.0.1"
HOSTS = {
    "passthrough": "passthrough.bench.test",
    "offload": "offload.bench.test",
    "reencrypt": "reencrypt.bench.test",
}
BACKEND_NAME = "backend.bench.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Ports:
    backend_http: int = 18080
    backend_https: int = 18443
    haproxy_passthrough: int = 20443
    haproxy_terminate: int = 20444
    nginx_passthrough: int = 21443
    nginx_terminate: int = 21444
    portcullis_https: int = 22443
    portcullis_http: int = 22080
    portcullis_admin: int = 22901


@dataclass
class World:
    """Certificates and body files on disk, in one work directory."""

    dir: Path
    ports: Ports = field(default_factory=Ports)
    ca_pem: str = ""

    def proxy_port(self, proxy: str, mode: str) -> int:
        p = self.ports
        if proxy == "portcullis":
            return p.portcullis_https
        if proxy == "haproxy":
            return p.haproxy_passthrough if mode == "passthrough" else p.haproxy_terminate
        if proxy == "nginx":
            return p.nginx_passthrough if mode == "passthrough" else p.nginx_terminate
        raise ValueError(proxy)


def make_world(work: Path, ports: Ports | None = None) -> World:
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("www", "tmp", "manifests"):
        (work / sub).mkdir(exist_ok=True)
    (work / "www" / "1k").write_bytes(b"x" * 1024)
    (work / "www" / "100k").write_bytes(b"y" * 102400)
    ca = CA("Portcullis Bench CA")
    world = World(work, ports or Ports(), ca.cert_pem)
    (work / "ca.crt").write_text(ca.cert_pem)
    backend = ca.issue(BACKEND_NAME, HOSTS["passthrough"])
    _write_pair(work, "backend", backend.cert_pem, backend.key_pem)
    for mode in ("offload", "reencrypt"):
        leaf = ca.issue(HOSTS[mode])
        _write_pair(work, mode, leaf.cert_pem, leaf.key_pem)
    write_manifests(world)
    return world


def _write_pair(work: Path, name: str, cert_pem: str, key_pem: str) -> None:
    (work / f"{name}.crt").write_text(cert_pem)
    (work / f"{name}.key").write_text(key_pem)
    (work / f"{name}.pem").write_text(cert_pem + key_pem)  # HAProxy wants both in one file


# --- Portcullis manifests -------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_manifests(world: World) -> Path:
    """The three modes as Kubernetes objects pointing at the nginx backend (``portcullis local -f``)."""
    import yaml

    w, p = world.dir, world.ports
    ns = "bench"
    docs: list[dict[str, object]] = [
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "portcullis"},
         "spec": {"controller": "portcullis.io/ingress-controller"}},
    ]
    services = (("web", "http", 80, p.backend_http), ("secure-web", "https", 443, p.backend_https))
    for svc, port_name, port, target in services:
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "namespace": ns},
                     "spec": {"ports": [{"name": port_name, "port": port, "targetPort": target, "protocol": "TCP"}]}})
        docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{svc}-local", "namespace": ns,
                                  "labels": {"kubernetes.io/service-name": svc}},
                     "addressType": "IPv4",
                     "endpoints": [{"addresses": [BIND], "conditions": {"ready": True}}],
                     "ports": [{"name": port_name, "port": target, "protocol": "TCP"}]})
    for mode in ("offload", "reencrypt"):
        docs.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                     "metadata": {"name": f"{mode}-tls", "namespace": ns},
                     "data": {"tls.crt": _b64((w / f"{mode}.crt").read_text()),
                              "tls.key": _b64((w / f"{mode}.key").read_text())}})
    docs.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                 "metadata": {"name": "bench-ca", "namespace": ns}, "data": {"ca.crt": _b64(world.ca_pem)}})

    def ingress(name: str, annotations: dict[str, str], service: str, port: int, tls: bool) -> dict[str, object]:
        spec: dict[str, object] = {
            "ingressClassName": "portcullis",
            "rules": [{"host": HOSTS[name], "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": port}}}}]}}],
        }
        if tls:
            spec["tls"] = [{"hosts": [HOSTS[name]], "secretName": f"{name}-tls"}]
        return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": name, "namespace": ns, "annotations": annotations}, "spec": spec}

    docs.append(ingress("passthrough", {"portcullis.io/tls-mode": "passthrough"}, "secure-web", 443, False))
    docs.append(ingress("offload", {"portcullis.io/tls-mode": "offload", "portcullis.io/hsts": "off"},
                        "web", 80, True))
    docs.append(ingress("reencrypt", {"portcullis.io/tls-mode": "reencrypt", "portcullis.io/hsts": "off",
                                      "portcullis.io/backend-ca-secret": "bench-ca",
                                      "portcullis.io/backend-server-name": BACKEND_NAME},
                        "secure-web", 443, True))
    out = w / "manifests" / "bench.yaml"
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out.parent


# --- configs --------------------------------------------------------------------------------------


def render_config(template: str, world: World, **extra: object) -> str:
    p = world.ports
    values: dict[str, object] = {
        "dir": str(world.dir), "bind": BIND,
        "user_line": "user root;" if os.geteuid() == 0 else "",
        "backend_http_port": p.backend_http, "backend_https_port": p.backend_https,
        "http_port": p.backend_http, "https_port": p.backend_https,
    }
    values.update(extra)
    text = string.Template((CONFIGS / template).read_text()).safe_substitute(values)
    if "${" in text:
        raise ValueError(f"{template}: unfilled placeholder near {text[text.index('${'):][:40]!r}")
    return text


def write_configs(world: World) -> dict[str, Path]:
    p = world.ports
    out = {
        "backend": ("nginx-backend.conf", {}),
        "nginx": ("nginx-proxy.conf", {"passthrough_port": p.nginx_passthrough, "terminate_port": p.nginx_terminate}),
        "haproxy": ("haproxy.cfg", {"passthrough_port": p.haproxy_passthrough, "terminate_port": p.haproxy_terminate}),
    }
    paths: dict[str, Path] = {}
    for name, (template, extra) in out.items():
        path = world.dir / f"{name}.conf"
        path.write_text(render_config(template, world, **extra))
        paths[name] = path
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (world.dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    return paths


# --- processes ------------------------------------------------------------------------------------


def raise_own_nofile(want: int = 65536) -> int:
    """Raise this process's open-file limit as far as allowed (the sandbox caps the hard limit)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _raise_nofile() -> None:
    raise_own_nofile()
    os.setsid()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


def spawn(name: str, argv: list[str], cpu: str | None, log_dir: Path, env: dict[str, str] | None = None) -> Proc:
    """Start ``argv`` in its own process group (so stop() ends exactly its tree), pinned to ``cpu``."""
    log = log_dir / f"{name}.log"
    full = (["taskset", "-c", cpu] if cpu is not None else []) + argv
    fh = log.open("wb")
    popen = subprocess.Popen(full, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             preexec_fn=_raise_nofile, env=env)
    fh.close()
    return Proc(name, popen, log)


def wait_port(port: int, proc: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
        try:
            with socket.create_connection((BIND, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout}s: {proc.tail()}")


def start_backend(world: World, conf: Path, cpu: str | None) -> Proc:
    proc = spawn("backend", ["nginx", "-e", str(world.dir / "backend-error.log"), "-p", str(world.dir),
                             "-c", str(conf)], cpu, world.dir)
    wait_port(world.ports.backend_http, proc)
    wait_port(world.ports.backend_https, proc)
    return proc


def start_nginx(world: World, conf: Path, cpu: str | None) -> Proc:
    proc = spawn("nginx", ["nginx", "-e", str(world.dir / "proxy-error.log"), "-p", str(world.dir),
                           "-c", str(conf)], cpu, world.dir)
    wait_port(world.ports.nginx_passthrough, proc)
    wait_port(world.ports.nginx_terminate, proc)
    return proc


def start_haproxy(world: World, conf: Path, cpu: str | None) -> Proc:
    proc = spawn("haproxy", ["haproxy", "-db", "-f", str(conf)], cpu, world.dir)
    wait_port(world.ports.haproxy_passthrough, proc)
    wait_port(world.ports.haproxy_terminate, proc)
    return proc


def portcullis_argv(world: World) -> list[str]:
    exe = ROOT / ".venv" / "bin" / "portcullis"
    p = world.ports
    return [str(exe), "local", "-f", str(world.dir / "manifests"), "--bind", BIND,
            "--https-port", str(p.portcullis_https), "--http-port", str(p.portcullis_http),
            "--admin-port", str(p.portcullis_admin),
            # Like for like: the nginx peer runs with access_log off and HAProxy logs errors only. The
            # access log's own cost is measured apart (bench/access_log_micro.py).
            "--access-log", "off"]


def start_portcullis(world: World, cpu: str | None, timeout: float = 30.0) -> Proc:
    proc = spawn("portcullis", portcullis_argv(world), cpu, world.dir)
    wait_port(world.ports.portcullis_https, proc, timeout)
    wait_ready(world, proc, timeout)
    return proc


def wait_ready(world: World, proc: Proc, timeout: float) -> None:
    """``/readyz`` on the admin port: 200 once the first snapshot is applied."""
    import http.client

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"portcullis exited with {proc.popen.returncode}: {proc.tail()}")
        try:
            conn = http.client.HTTPConnection(BIND, world.ports.portcullis_admin, timeout=1)
            conn.request("GET", "/readyz")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
            last = f"/readyz answered {status}"
        except OSError as exc:
            last = f"/readyz: {exc}"
        time.sleep(0.2)
    raise RuntimeError(f"portcullis not ready within {timeout}s ({last}): {proc.tail()}")


# --- CPU and memory accounting ---------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds of every live process in the tree rooted at ``pid`` (plus reaped children)."""
    user = system = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        # fields[0] is state (field 3); utime=14, stime=15, cutime=16, cstime=17 (1-based)
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def ctx_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of the process tree: with the proxy and the backend on one core,
    involuntary ones are mostly the backend preempting the proxy when it wakes."""
    vol = invol = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            continue
    return vol, invol


def rss_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def which(tool: str) -> str | None:
    return shutil.which(tool)
