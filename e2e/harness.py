"""One test's Portcullis installation on the rig: data planes in netns pods listed by the headless admin Service,
controllers as host processes, backends in netns pods behind selector-less Services. Everything lives in the test's
namespace and uses a private ingress class, so tests (and sessions sharing the rig) do not see each other."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from e2e.components import ADMIN_PORT, AdminPKI, Controller, DataPlane
from e2e.kube import Cluster, Kube, wait_for
from e2e.netns import NetnsPod, PodFactory, RigError, wait_tcp
from e2e.objects import selectorless_service
from tests.pki import Issued

DATAPLANE_SERVICE = "portcullis-dataplane-admin"
BACKEND_PORTS = {"http": (80, 8080), "https": (443, 8443), "tls": (443, 8443)}
GRPC_PORT = 50051  # Service port and pod port of e2e/grpc_backend.py
T = TypeVar("T")


class Edge:
    """On the local rig the test owns every process, so it can also kill, restart and double them."""

    local = True

    def __init__(self, cluster: Cluster, namespace: str, pods: PodFactory, work_dir: Path) -> None:
        self.cluster = cluster
        self.kube: Kube = cluster.kube
        self.namespace = namespace
        self.pods = pods
        self.work_dir = work_dir
        self.pki = AdminPKI.create(work_dir / "admin-pki")
        self.ingress_class = f"portcullis-{namespace}"
        self.dataplanes: list[DataPlane] = []
        self.controllers: dict[str, Controller] = {}
        self.publish_dataplanes()

    def require_local(self, why: str) -> None:
        """Tests that kill or start Portcullis processes call this; on the rig they always may."""

    # ------------------------------------------------------------------ data planes
    def add_dataplane(self) -> DataPlane:
        dataplane = DataPlane(self.pods.create(f"dataplane-{len(self.dataplanes)}"), self.pki)
        dataplane.start()
        self.dataplanes.append(dataplane)
        try:
            wait_tcp(dataplane.address, ADMIN_PORT, timeout=20)
        except RigError as exc:
            raise RigError(f"{exc}\ndata plane log:\n{dataplane.log_tail()}") from None
        self.publish_dataplanes()
        return dataplane

    def publish_dataplanes(self) -> None:
        """What the endpoint-slice controller would write for the data-plane pods (not-ready ones included)."""
        self.kube.apply(selectorless_service(DATAPLANE_SERVICE, [d.address for d in self.dataplanes], ADMIN_PORT,
                                             ADMIN_PORT, port_name="admin", headless=True), namespace=self.namespace)

    def restart_dataplane(self, dataplane: DataPlane, sig: int = signal.SIGKILL) -> None:
        dataplane.stop(sig)
        dataplane.start()
        try:
            wait_tcp(dataplane.address, ADMIN_PORT, timeout=20)
        except RigError as exc:
            raise RigError(f"{exc}\ndata plane log:\n{dataplane.log_tail()}") from None

    def wait_ready(self, dataplane: DataPlane, timeout: float = 30.0) -> None:
        try:
            wait_for(f"data plane {dataplane.address} ready (first snapshot pushed)", dataplane.ready, timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnostics()}") from None

    # ------------------------------------------------------------------ controllers
    def add_controller(self, name: str = "a", publish_address: str | None = None,
                       extra: tuple[str, ...] = ()) -> Controller:
        controller = Controller(name, self.cluster.kubeconfig, self.namespace, self.ingress_class, self.pki,
                                self.work_dir / "logs", publish_address, extra)
        controller.start()
        self.controllers[name] = controller
        return controller

    def stop_all(self) -> None:
        for controller in self.controllers.values():
            controller.stop(timeout=2.0)  # teardown: kopf's graceful exit is not under test here

    # ------------------------------------------------------------------ backends
    def backend(self, service: str, mode: Literal["http", "https", "tls"] = "http", cert: Issued | None = None,
                name: str | None = None) -> NetnsPod:
        """A netns pod serving ``mode`` and the selector-less Service ``service`` (port 80 or 443) naming it."""
        port, target = BACKEND_PORTS[mode]
        pod = self.pods.create(f"backend-{service}")
        args = ["-m", "e2e.backend", "--mode", mode, "--name", name or service, "--port", str(target)]
        if cert is not None:
            cert_file, key_file = self.work_dir / f"{service}.crt", self.work_dir / f"{service}.key"
            cert_file.write_text(cert.cert_pem)
            key_file.write_text(cert.key_pem)
            args += ["--cert-file", str(cert_file), "--key-file", str(key_file)]
        pod.python("backend", args)
        try:
            wait_tcp(pod.address, target, timeout=20)
        except RigError as exc:
            raise RigError(f"{exc}\nbackend log:\n{pod.log_tail('backend')}") from None
        self.kube.apply(selectorless_service(service, [pod.address], port, target,
                                             port_name="https" if port == 443 else "http"),
                        namespace=self.namespace)
        return pod

    def grpc_backend(self, service: str, cert: Issued | None = None) -> NetnsPod:
        """A netns pod running grpcio's server (e2e/grpc_backend.py: h2c, or TLS with ``cert``) and the
        selector-less Service ``service`` (port GRPC_PORT) naming it."""
        pod = self.pods.create(f"grpc-{service}")
        args = ["-m", "e2e.grpc_backend", "--port", str(GRPC_PORT)]
        if cert is not None:
            cert_file, key_file = self.work_dir / f"{service}.crt", self.work_dir / f"{service}.key"
            cert_file.write_text(cert.cert_pem)
            key_file.write_text(cert.key_pem)
            args += ["--cert-file", str(cert_file), "--key-file", str(key_file)]
        pod.python("grpc", args)
        try:
            wait_tcp(pod.address, GRPC_PORT, timeout=20)
        except RigError as exc:
            raise RigError(f"{exc}\ngRPC backend log:\n{pod.log_tail('grpc')}") from None
        self.kube.apply(selectorless_service(service, [pod.address], GRPC_PORT, GRPC_PORT, port_name="grpc"),
                        namespace=self.namespace)
        return pod

    # ------------------------------------------------------------------ waiting and explaining
    def eventually(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        """``wait_for`` whose failure message carries the controller and data-plane logs."""
        try:
            return wait_for(what, probe, timeout, interval=0.05)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        parts = []
        for controller in self.controllers.values():
            code = controller.proc.returncode if controller.proc else None
            state = "running" if controller.running() else f"exited {code}"
            parts.append(f"--- controller {controller.name} ({state}):\n{controller.log_tail()}")
        for dataplane in self.dataplanes:
            parts.append(f"--- data plane {dataplane.address}:\n{dataplane.log_tail()}")
        return "\n".join(parts)
