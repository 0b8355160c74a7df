"""The same tests against a cluster given by KUBECONFIG with the chart installed (e2e/kind/up makes one): the
chart's controller and data planes serve, backends are real Pods (the e2e backend image) behind ordinary Services,
and traffic goes to the data-plane Service's address as seen from this machine.

Environment (e2e/kind/up prints these):
  PORTCULLIS_E2E_EDGE            ADDRESS:HTTPS_PORT:HTTP_PORT where the data planes are reached (127.0.0.1:18443:18080)
  PORTCULLIS_E2E_INGRESS_CLASS   the chart's IngressClass (portcullis)
  PORTCULLIS_E2E_BACKEND_IMAGE   image whose entrypoint is ``python -m e2e.backend`` (portcullis-e2e-backend:e2e)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

from e2e.kube import Cluster, Kube, wait_for
from e2e.objects import tls_secret
from tests.pki import Issued

BACKEND_PORTS = {"http": (80, 8080), "https": (443, 8443), "tls": (443, 8443)}
T = TypeVar("T")


@dataclass(frozen=True)
class ExternalTarget:
    """The chart's data planes, behind their Service."""

    address: str
    https_port: int
    http_port: int

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.address, self.https_port), timeout=1.0):
                return True
        except OSError:
            return False


def _target_from_env() -> ExternalTarget:
    raw = os.environ.get("PORTCULLIS_E2E_EDGE", "127.0.0.1:18443:18080")
    try:
        address, https, http = raw.rsplit(":", 2)
        return ExternalTarget(address, int(https), int(http))
    except ValueError:
        raise ValueError(f"PORTCULLIS_E2E_EDGE must be ADDRESS:HTTPS_PORT:HTTP_PORT, got {raw!r}") from None


class ClusterEdge:
    local = False

    def __init__(self, cluster: Cluster, namespace: str, work_dir: Path, target: ExternalTarget | None = None,
                 ingress_class: str | None = None, image: str | None = None) -> None:
        """Unset arguments come from the environment (the kind path); the rig's node passes them."""
        self.cluster = cluster
        self.kube: Kube = cluster.kube
        self.namespace = namespace
        self.work_dir = work_dir
        self.ingress_class = ingress_class or os.environ.get("PORTCULLIS_E2E_INGRESS_CLASS", "portcullis")
        self.image = image or os.environ.get("PORTCULLIS_E2E_BACKEND_IMAGE", "portcullis-e2e-backend:e2e")
        self.target = target or _target_from_env()
        self.controllers: dict[str, Any] = {}

    def require_local(self, why: str) -> None:
        pytest.skip(f"needs the local rig ({why}); on this cluster the chart owns the Portcullis processes")

    def add_dataplane(self) -> ExternalTarget:
        return self.target

    def add_controller(self, name: str = "a", publish_address: str | None = None,
                       extra: tuple[str, ...] = ()) -> None:
        if publish_address or extra:
            self.require_local("controller flags chosen by the test")

    def wait_ready(self, dataplane: ExternalTarget, timeout: float = 30.0) -> None:
        wait_for(f"the chart's data planes accept on {dataplane.address}:{dataplane.https_port}",
                 dataplane.ready, timeout)

    def stop_all(self) -> None:
        """Nothing to stop: the chart's processes are not the test's."""

    def backend(self, service: str, mode: Literal["http", "https", "tls"] = "http", cert: Issued | None = None,
                name: str | None = None) -> None:
        """A one-replica Deployment of the backend image and a Service selecting it; returns once it is ready."""
        port, target = BACKEND_PORTS[mode]
        labels = {"app.kubernetes.io/name": service, "portcullis.io/e2e": "backend"}
        args = ["--mode", mode, "--name", name or service, "--port", str(target)]
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        docs: list[dict[str, Any]] = []
        if cert is not None:
            docs.append(tls_secret(f"{service}-serving", cert.cert_pem, cert.key_pem))
            volumes = [{"name": "serving", "secret": {"secretName": f"{service}-serving"}}]
            mounts = [{"name": "serving", "mountPath": "/certs", "readOnly": True}]
            args += ["--cert-file", "/certs/tls.crt", "--key-file", "/certs/tls.key"]
        container = {
            "name": "backend", "image": self.image, "imagePullPolicy": "IfNotPresent", "args": args,
            "ports": [{"containerPort": target, "name": "serve"}], "volumeMounts": mounts,
            "readinessProbe": {"tcpSocket": {"port": target}, "periodSeconds": 1},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False},
        }
        docs += [
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": service, "labels": labels},
             "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                      "template": {"metadata": {"labels": labels},
                                   "spec": {"containers": [container], "volumes": volumes}}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": service},
             "spec": {"selector": labels, "ports": [{"name": "https" if port == 443 else "http", "port": port,
                                                     "targetPort": target}]}},
        ]
        self.kube.apply(docs, namespace=self.namespace)

        def ready_endpoint() -> bool:
            slices = self.kube.resource("discovery.k8s.io/v1", "EndpointSlice").get(
                namespace=self.namespace, label_selector=f"kubernetes.io/service-name={service}")
            return any((ep.conditions or {}).get("ready") for s in slices.items for ep in (s.endpoints or []))

        wait_for(f"backend {service} ready (image {self.image})", ready_endpoint, 120.0, interval=0.5)

    def eventually(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        return wait_for(what, probe, timeout, interval=0.05)

    def diagnostics(self) -> str:
        return "(external cluster: see `kubectl logs` of the chart's controller and data planes)"
