"""The chart installed for real on the rig's node, with the image the project builds: what a user does with
`helm install`, driven by the Helm engine the chart tests use (helm-python-sdk embeds Helm's Go library).

The node has no load-balancer implementation, so the test plays one: it writes an address into the data-plane
Service's ``status.loadBalancer``, kube-proxy forwards that address's ports to the data-plane pods, and the
controller publishes it on Ingresses, as in any cluster. The address is the Service's own cluster IP: unique per
release (two releases on the node, the tests' and the fan-out benchmark's, must not share one) and routed by
kube-proxy from this host, with nothing else to set up."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
from kubernetes import client

from e2e.cluster_edge import ExternalTarget
from e2e.kube import Cluster, wait_for
from e2e.node import Node

CHART_DIR = Path(__file__).resolve().parent.parent / "charts" / "portcullis"


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's value merge: maps merge key by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Release:
    """One `helm install` of charts/portcullis into ``namespace`` (release named after it, so cluster-scoped
    objects of two releases never collide), watching only that namespace, with its own IngressClass."""

    cluster: Cluster
    node: Node
    namespace: str
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.namespace

    @property
    def prefix(self) -> str:
        return f"{self.name}-portcullis"

    @property
    def ingress_class(self) -> str:
        return self.name

    @property
    def target(self) -> ExternalTarget:
        """Where clients connect: the load-balancer address ``expose`` published."""
        service = self.cluster.kube.get("v1", "Service", f"{self.prefix}-dataplane", self.namespace)
        ingress = (service.to_dict()["status"].get("loadBalancer") or {}).get("ingress") if service else None
        if not ingress:
            raise RuntimeError(f"{self.prefix}-dataplane has no load-balancer address yet (install first)")
        return ExternalTarget(ingress[0]["ip"], 443, 80)

    def base_values(self) -> dict[str, Any]:
        repository, _, tag = self.node.portcullis_image.name.rpartition(":")
        return {
            # docker.io/library/portcullis:<tag> is what the chart's default "portcullis" normalises to.
            "image": {"repository": repository.removeprefix("docker.io/library/"), "tag": tag, "pullPolicy": "Never"},
            "ingressClass": {"name": self.ingress_class, "controllerName": f"portcullis.io/{self.name}"},
            "watchNamespaces": [self.namespace],
            "controller": {"replicas": 2},
            # One serving process per pod and small requests: ten pods must fit the 2-core node.
            "dataplane": {"replicas": 2, "workers": 1, "preStopSleepSeconds": 3, "drainTimeoutSeconds": 10,
                          "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}}},
        }

    # ------------------------------------------------------------------ helm
    def _helm(self) -> helm_python.Config:
        return helm_python.Config(kubeconfig_path=self.cluster.kubeconfig, namespace=self.namespace)

    def install(self, **overrides: Any) -> None:
        self.values = merged(self.base_values(), overrides)
        with self._helm() as cfg:
            cfg.install(helm_python.Chart.load(CHART_DIR), self.name, self.values, namespace=self.namespace,
                        timeout=180)
        self.expose()

    def upgrade(self, overrides: Mapping[str, Any]) -> None:
        self.values = merged(self.values, overrides)
        with self._helm() as cfg:
            cfg.upgrade(helm_python.Chart.load(CHART_DIR), self.name, self.values, namespace=self.namespace,
                        timeout=180)

    def uninstall(self) -> None:
        with self._helm() as cfg:
            cfg.uninstall(self.name, ignore_not_found=True, timeout=180)

    def expose(self) -> None:
        """The load balancer's part: an address in the data-plane Service's status (see the module docstring)."""
        api, name = client.CoreV1Api(self.cluster.kube.api), f"{self.prefix}-dataplane"
        spec = api.read_namespaced_service(name, self.namespace).spec
        assert spec is not None and spec.cluster_ip, f"{name} has no cluster IP"
        address = spec.cluster_ip
        api.patch_namespaced_service_status(name, self.namespace,
                                            {"status": {"loadBalancer": {"ingress": [{"ip": address}]}}})

    # ------------------------------------------------------------------ what runs
    def pods(self, component: str) -> list[Any]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}"
        found = self.cluster.kube.resource("v1", "Pod").get(namespace=self.namespace, label_selector=selector)
        return [p for p in found.items if not p.metadata.deletionTimestamp]

    def ready_pods(self, component: str) -> list[Any]:
        return [p for p in self.pods(component)
                if any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))]

    def wait_rolled_out(self, component: str, replicas: int, timeout: float = 120.0) -> list[Any]:
        """``replicas`` ready pods of the workload's current template, and no others left."""
        name = f"{self.prefix}-{component}"

        def done() -> tuple[list[Any]] | None:  # a tuple: an empty list of pods is a valid answer
            workload = self.cluster.kube.get("apps/v1", "Deployment", name, self.namespace)
            found = workload.to_dict() if workload is not None else {"metadata": {}, "status": {}}
            status = found["status"]
            current = status.get("observedGeneration", 0) >= found["metadata"].get("generation", 1) and all(
                status.get(key, 0) == replicas for key in ("updatedReplicas", "readyReplicas", "replicas"))
            pods = self.ready_pods(component)
            return (pods,) if current and len(pods) == replicas and len(self.pods(component)) == replicas else None

        return wait_for(f"{name}: {replicas} ready pods of the current template", done, timeout, interval=0.5)[0]

    def wait_gone(self, pods: set[str], timeout: float = 120.0) -> None:
        """Until none of ``pods`` exists any more, terminating ones included."""
        wait_for(f"pods {sorted(pods)} gone", lambda: not pods & {
            p.metadata.name for p in self.cluster.kube.resource("v1", "Pod").get(namespace=self.namespace).items},
            timeout, interval=0.5)

    def lease_holder(self) -> str | None:
        lease = self.cluster.kube.get("coordination.k8s.io/v1", "Lease", f"{self.prefix}-leader", self.namespace)
        return lease.spec.holderIdentity if lease is not None else None

    def log(self, pod: str, previous: bool = False) -> str:
        """A container's log as the apiserver serves it (through the kubelet, as `kubectl logs` does)."""
        text: str = client.CoreV1Api(self.cluster.kube.api).read_namespaced_pod_log(
            pod, self.namespace, previous=previous, _request_timeout=10)
        return text

    def kill_container(self, pod: Any) -> None:
        """SIGKILL the pod's first container through the node's containerd, as an OOM kill or a crash would."""
        container_id = pod.status.containerStatuses[0].containerID.removeprefix("containerd://")
        socket = self.node.state_dir / "node" / "containerd.sock"
        subprocess.run(["ctr", "--address", str(socket), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL",
                        container_id], check=True, capture_output=True, timeout=30)
