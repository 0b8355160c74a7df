"""Portcullis's own processes on the rig, run the way the chart runs them: ``portcullis dataplane`` in a netns pod
(admin API over TLS with SAN portcullis-dataplane, bearer token from a file) and ``portcullis controller`` on the
host with the admin kubeconfig, finding the data planes through a headless Service's EndpointSlices.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from e2e.client import https_get
from e2e.netns import REPO, NetnsPod, RigError, die_with_parent
from tests.pki import CA

ADMIN_SERVER_NAME = "portcullis-dataplane"
HTTPS_PORT, HTTP_PORT, ADMIN_PORT = 8443, 8080, 9901


@dataclass(frozen=True)
class AdminPKI:
    """What the chart mounts: the data plane's admin certificate and key, the CA the controller trusts, and the
    shared push token (files only; the token never goes on a command line)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    token_file: Path

    @classmethod
    def create(cls, directory: Path) -> AdminPKI:
        directory.mkdir(parents=True, exist_ok=True)
        ca = CA("Portcullis e2e admin CA")
        issued = ca.issue(ADMIN_SERVER_NAME)
        pki = cls(directory / "admin-ca.crt", directory / "admin.crt", directory / "admin.key", directory / "token")
        pki.ca_file.write_text(ca.cert_pem)
        pki.cert_file.write_text(issued.cert_pem)
        pki.key_file.write_text(issued.key_pem)
        pki.token_file.write_text(secrets.token_hex(24))
        for path in (pki.key_file, pki.token_file):
            path.chmod(0o600)
        return pki


def _portcullis(*args: str) -> list[str]:
    return [sys.executable, "-m", "controller.cli", *args]


@dataclass
class DataPlane:
    """``portcullis dataplane`` in one netns pod."""

    pod: NetnsPod
    pki: AdminPKI

    https_port = HTTPS_PORT
    http_port = HTTP_PORT

    @property
    def address(self) -> str:
        return self.pod.address

    def start(self) -> None:
        self.pod.spawn("dataplane", _portcullis(
            "dataplane", "--bind", "0.0.0.0", "--https-port", str(HTTPS_PORT), "--http-port", str(HTTP_PORT),
            "--admin-port", str(ADMIN_PORT), "--admin-cert-file", str(self.pki.cert_file),
            "--admin-key-file", str(self.pki.key_file), "--admin-token-file", str(self.pki.token_file),
            "--drain-timeout", "1", "--log-format", "text",
        ), env={"PYTHONUNBUFFERED": "1"})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.pod.stop("dataplane", sig)

    def admin(self, path: str, token: bool = False) -> tuple[int, bytes]:
        """GET on the admin API, verifying its certificate as the controller does."""
        headers = {"Authorization": f"Bearer {self.pki.token_file.read_text().strip()}"} if token else None
        answer = https_get(self.address, ADMIN_PORT, ADMIN_SERVER_NAME, path, ca_pem=self.pki.ca_file.read_text(),
                           headers=headers)
        return answer.status, answer.body

    def ready(self) -> bool:
        self.pod.check_running("dataplane")
        with contextlib.suppress(OSError):
            return self.admin("/readyz")[0] == 200
        return False

    def log_tail(self) -> str:
        return self.pod.log_tail("dataplane")


@dataclass
class Controller:
    """``portcullis controller`` as a host process, scoped to one test namespace and one private ingress class so
    sessions sharing a rig never see each other's objects."""

    name: str
    kubeconfig: Path
    namespace: str
    ingress_class: str
    pki: AdminPKI
    log_dir: Path
    publish_address: str | None = None
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"controller-{self.name}.log"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RigError(f"controller {self.name} is already running")
        args = [
            "controller", "--kubeconfig", str(self.kubeconfig), "--watch-namespaces", self.namespace,
            "--ingress-class", self.ingress_class,
            "--dataplane-service", f"{self.namespace}/portcullis-dataplane-admin",
            "--dataplane-admin-port", str(ADMIN_PORT), "--push-token-file", str(self.pki.token_file),
            "--push-ca-file", str(self.pki.ca_file), "--push-server-name", ADMIN_SERVER_NAME,
            "--lease-namespace", self.namespace, "--health-port", "0", *self.extra,
        ]
        if self.publish_address:
            args += ["--publish-address", self.publish_address]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # KUBECONFIG too: kopf's own login reads only the environment / default path, not --kubeconfig.
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(_portcullis(*args), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                         env={**env, "PYTHONUNBUFFERED": "1"}, preexec_fn=die_with_parent)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_running(self) -> None:
        if not self.running():
            code = None if self.proc is None else self.proc.returncode
            raise RigError(f"controller {self.name} is not running (exit {code}); log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return f"(no log at {self.log_path})"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
