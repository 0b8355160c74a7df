"""The rig's real node (e2e/cluster/node-up), proved as a cluster user relies on it: it registers Ready with the
version it was built from, pods of images built here get addresses on the CNI bridge, Services' cluster IPs and
NodePorts reach them through kube-proxy, and a pod reaches the API server through the ``kubernetes`` Service with
its projected service-account token (what in-cluster configuration uses)."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.client import http_get
from e2e.cluster_edge import ClusterEdge
from e2e.kube import Cluster, wait_for
from e2e.node import Node

NODE_IP = "10.231.0.1"  # the rig bridge's host address, the node's InternalIP (e2e/cluster/common.sh)


def _condition(obj: Any, kind: str) -> str | None:
    return next((c["status"] for c in obj.to_dict()["status"].get("conditions") or [] if c["type"] == kind), None)


def test_the_node_is_ready_with_the_built_versions(node: Node, rig: Cluster) -> None:
    found = rig.kube.get("v1", "Node", node.name)
    assert found is not None and _condition(found, "Ready") == "True"
    info = found.to_dict()["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.30.14" and info["kubeProxyVersion"] == "v1.30.14"
    assert info["containerRuntimeVersion"].startswith("containerd://1.6")
    addresses = {a["type"]: a["address"] for a in found.to_dict()["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE_IP


def test_pods_get_bridge_addresses_and_services_reach_them(node: Node, rig: Cluster, rig_namespace: str,
                                                           tmp_path: Path) -> None:
    edge = ClusterEdge(rig, rig_namespace, tmp_path, image=node.backend_image.name)
    edge.backend("echo", "http")
    pods = rig.kube.resource("v1", "Pod").get(namespace=rig_namespace,
                                                  label_selector="app.kubernetes.io/name=echo").items
    assert len(pods) == 1 and pods[0].spec.nodeName == node.name
    pod_ip = pods[0].status.podIP
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(node.pod_cidr)
    assert http_get(pod_ip, 8080, "direct.e2e.test").json()["server"] == "echo"

    service = rig.kube.get("v1", "Service", "echo", rig_namespace)
    assert service is not None
    cluster_ip = service.spec.clusterIP
    answer = wait_for("the echo Service's cluster IP through kube-proxy", lambda: _get(cluster_ip, 80), 15.0)
    assert answer["server"] == "echo"

    service = client.CoreV1Api(rig.kube.api).patch_namespaced_service(
        "echo", rig_namespace, {"spec": {"type": "NodePort"}})
    node_port = service.spec.ports[0].node_port
    for address in (NODE_IP, "127.0.0.1"):
        answer = wait_for(f"NodePort {address}:{node_port} through kube-proxy", lambda a=address: _get(a, node_port),
                          15.0)
        assert answer["server"] == "echo"


def _get(address: str, port: int) -> dict[str, Any] | None:
    try:
        answer = http_get(address, port, "svc.e2e.test", timeout=2.0)
    except OSError:
        return None
    return answer.json() if answer.status == 200 else None  # type: ignore[no-any-return]


# Run in a pod: in-cluster configuration as client libraries read it (environment, token and CA files).
IN_CLUSTER_CHECK = textwrap.dedent("""
    import json, os, ssl, sys, urllib.request
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}/version"
    token = open(f"{sa}/token").read()
    context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        version = json.load(answer)["gitVersion"]
    sys.exit(0 if version == "v1.30.14" else 3)
""")


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(node: Node, rig: Cluster,
                                                                     rig_namespace: str) -> None:
    rig.kube.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "in-cluster"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "check", "image": node.backend_image.name, "imagePullPolicy": "Never",
            "command": ["python3.11", "-c", IN_CLUSTER_CHECK], "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False}}]},
    }, namespace=rig_namespace)

    def finished() -> str | None:
        pod = rig.kube.get("v1", "Pod", "in-cluster", rig_namespace)
        phase = pod.status.phase if pod is not None else None
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for("the in-cluster check pod finishes", finished, 60.0, interval=0.5)
    pod = rig.kube.get("v1", "Pod", "in-cluster", rig_namespace)
    assert pod is not None
    terminated = pod.status.containerStatuses[0].state.terminated
    assert phase == "Succeeded", f"exit {terminated.exitCode}: {terminated.message or terminated.reason}"
