"""The cluster under test does what the controller's e2e tests rely on. On the local rig these prove the rig itself:
the namespace and service-account controllers run, EndpointSlices carry pod addresses (and refuse loopback, which
is why the rig has netns pods), netns pods are reachable both ways, Leases have optimistic concurrency, Events
can be posted."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import urllib.request
import uuid
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.kube import Cluster, Kube, wait_for
from e2e.netns import HOST_ADDR, PodFactory, wait_tcp
from e2e.objects import selectorless_service


def test_namespace_gets_a_service_account_and_deletion_empties_it(kube: Kube) -> None:
    name = f"e2e-ns-{uuid.uuid4().hex[:8]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "filler"}, "data": {"a": "b"}},
                   namespace=name)
        wait_for("default ServiceAccount (service-account controller)",
                 lambda: kube.get("v1", "ServiceAccount", "default", name), timeout=30)
    finally:
        kube.delete("v1", "Namespace", name)
    wait_for("namespace deleted (namespace controller empties it, then it goes)",
             lambda: kube.get("v1", "Namespace", name) is None, timeout=60, interval=0.5)


def test_endpoint_slices_refuse_loopback(kube: Kube, namespace: str) -> None:
    """Why the rig needs network namespaces: a real API server will not take 127.0.0.1 as an endpoint."""
    docs = selectorless_service("loop", ["127.0.0.1"], 80, 8080)
    kube.apply(docs[0], namespace=namespace)
    with pytest.raises(ApiException) as caught:
        kube.apply(docs[1], namespace=namespace)
    assert caught.value.status == 422
    assert "loopback" in str(caught.value.body)


def test_netns_pod_serves_its_service_address(cluster: Cluster, kube: Kube, namespace: str,
                                              pods: PodFactory) -> None:
    pod = pods.create("web")
    pod.python("server", ["-m", "e2e.backend", "--mode", "http", "--name", "web-1", "--port", "8080"])
    docs = selectorless_service("web", [pod.address], 80, 8080)
    kube.apply(docs, namespace=namespace)

    stored = kube.get("discovery.k8s.io/v1", "EndpointSlice", "web-e2e", namespace)
    assert stored is not None
    assert [ep.addresses for ep in stored.endpoints] == [[pod.address]]

    try:
        wait_tcp(pod.address, 8080, timeout=15)
    except Exception:
        pod.check_running("server")
        raise
    with urllib.request.urlopen(f"http://{pod.address}:8080/hello", timeout=5) as answer:
        seen = json.loads(answer.read())
    assert seen["server"] == "web-1"
    assert seen["path"] == "/hello"
    assert seen["peer"][0] == HOST_ADDR  # the host reached the pod over the bridge, not over loopback

    # ...and the pod reaches the API server at the host's bridge address, with the server's own certificate.
    server = urlparse(yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"])
    ca_file = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["certificate-authority"]
    probe = subprocess.run(
        ["ip", "netns", "exec", pod.netns, "curl", "-sS", "--max-time", "5", "--cacert", ca_file,
         f"https://{HOST_ADDR}:{server.port}/readyz"],
        capture_output=True, text=True, timeout=20, check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "ok"


def test_lease_updates_are_guarded_by_resource_version(cluster: Cluster, namespace: str) -> None:
    leases = client.CoordinationV1Api(cluster.kube.api)
    now = dt.datetime.now(dt.UTC)
    created: Any = leases.create_namespaced_lease(namespace, client.V1Lease(
        metadata=client.V1ObjectMeta(name="leader"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=10, acquire_time=now, renew_time=now),
    ))
    stale_version = created.metadata.resource_version
    created.spec.holder_identity = "b"
    updated: Any = leases.replace_namespaced_lease("leader", namespace, created)
    assert updated.spec.holder_identity == "b"
    assert updated.metadata.resource_version != stale_version

    updated.spec.holder_identity = "c"
    updated.metadata.resource_version = stale_version
    with pytest.raises(ApiException) as caught:
        leases.replace_namespaced_lease("leader", namespace, updated)
    assert caught.value.status == 409
    current: Any = leases.read_namespaced_lease("leader", namespace)
    assert current.spec.holder_identity == "b"


def test_events_can_be_posted_and_listed(cluster: Cluster, kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(cluster.kube.api)
    target: Any = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="subject")))
    now = dt.datetime.now(dt.UTC)
    core.create_namespaced_event(namespace, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="subject."),
        involved_object=client.V1ObjectReference(kind="ConfigMap", name="subject", namespace=namespace,
                                                 uid=target.metadata.uid, api_version="v1"),
        reason="E2ECheck", message="the rig accepts Events", type="Warning",
        first_timestamp=now, last_timestamp=now, count=1,
        source=client.V1EventSource(component="portcullis-e2e"),
    ))
    found = core.list_namespaced_event(namespace, field_selector="involvedObject.name=subject").items
    assert [(e.reason, e.type, e.message) for e in found] == [("E2ECheck", "Warning", "the rig accepts Events")]
