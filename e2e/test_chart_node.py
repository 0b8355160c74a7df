"""Run it as users run it: `helm install` of charts/portcullis with the image `make image` builds, onto the rig's
real node, proved through real pods (issue 18). One release serves the whole module, in the order a user meets
things: install to first answer, every TLS mode, mTLS, the redirect and HTTP/2 through the data-plane Service;
the controller in its pod (in-cluster configuration, leader election, Events and status with exactly the chart's
RBAC); a rolling `helm upgrade` and a deleted leader under continuous keep-alive load; a killed data-plane
container serving from its state file with no controller; `helm uninstall` leaving only what docs/helm.md says.

Figures (time to first answer, requests held through the upgrade) are printed in the session summary."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from e2e.client import Answer, http_get, https_get, tls_echo
from e2e.cluster_edge import ClusterEdge
from e2e.kube import Cluster, wait_for
from e2e.load import SteadyClients
from e2e.node import Node
from e2e.objects import ca_secret, ingress, tls_secret
from e2e.release import Release
from tests.pki import CA

CHANGE_BOUND = 10.0   # an Ingress change through the controller pod to every data-plane pod
TAKEOVER_BOUND = 30.0  # the standby's lease: leaseDuration 15 s after the last renewal, plus its retry period
WEB = "web"
T = TypeVar("T")
NODE_IP = "10.231.0.1"  # the node's InternalIP (e2e/cluster/common.sh HOST_ADDR)
REFUSED = re.compile(r"forbidden", re.IGNORECASE)  # APIForbiddenError, "... is forbidden: User ..."


@pytest.fixture(scope="module")
def edge_ca() -> CA:
    return CA("Portcullis node edge CA")


@pytest.fixture(scope="module")
def install_namespace(rig: Cluster, node: Node) -> Iterator[str]:
    name = f"e2e-chart-{int(time.time()) % 100000}"
    rig.kube.apply({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": name, "labels": {"portcullis.io/e2e": "true"}}})
    yield name
    rig.kube.delete("v1", "Namespace", name)


@pytest.fixture(scope="module")
def release(rig: Cluster, node: Node, install_namespace: str) -> Iterator[Release]:
    installed = Release(rig, node, install_namespace)
    yield installed
    installed.uninstall()  # idempotent: the last test uninstalls and checks what is left


@pytest.fixture(scope="module")
def backends(rig: Cluster, node: Node, release: Release, tmp_path_factory: pytest.TempPathFactory,
             edge_ca: CA) -> ClusterEdge:
    """The backends as real pods of the e2e backend image, behind ordinary Services (the endpoint-slice
    controller writes their slices)."""
    edge = ClusterEdge(rig, release.namespace, tmp_path_factory.mktemp("backends"),
                       ingress_class=release.ingress_class, image=node.backend_image.name)
    edge.backend(WEB, "http")
    return edge


def answers(probe: Callable[[], T]) -> Callable[[], T | None]:
    """Connection errors and refused handshakes are "not yet" (ssl.SSLError is an OSError)."""
    def run() -> T | None:
        try:
            return probe()
        except OSError:
            return None
    return run


def on_every_pod(release: Release, what: str, check: Callable[[str, int, int], T | None]) -> list[T]:
    """Wait until ``check(pod_ip, https_port, http_port)`` holds on every ready data-plane pod, asked directly:
    through the Service a probe reaches one pod at random, and the others may not have the change yet."""
    def probe() -> list[T] | None:
        found = []
        for pod in release.ready_pods("dataplane"):
            result = answers(lambda pod=pod: check(pod.status.podIP, 8443, 8080))()
            if not result:
                return None
            found.append(result)
        return found or None
    return wait_for(f"{what} on every data-plane pod", probe, CHANGE_BOUND)


def from_backend(answer: Answer, backend: str = WEB) -> Answer | None:
    return answer if answer.status == 200 and answer.json().get("server") == backend else None


def served(release: Release, host: str, ca: CA, backend: str = WEB) -> Answer:
    """``host`` served from ``backend`` by every data-plane pod, then the answer through the load balancer."""
    on_every_pod(release, f"HTTPS to {host}", lambda address, https, _: from_backend(
        https_get(address, https, host, ca_pem=ca.cert_pem), backend))
    answer = from_backend(https_get(release.target.address, release.target.https_port, host, ca_pem=ca.cert_pem),
                          backend)
    assert answer is not None, f"{host} through the load balancer"
    return answer


def offload(release: Release, edge_ca: CA, name: str) -> str:
    host = f"{name}.node.e2e.test"
    cert = edge_ca.issue(host)
    release.cluster.kube.apply([tls_secret(f"{name}-tls", cert.cert_pem, cert.key_pem),
                                ingress(name, host, WEB, 80, release.ingress_class, tls_secret=f"{name}-tls")],
                               namespace=release.namespace)
    return host


# ---------------------------------------------------------------------------- install


def test_helm_install_serves_through_the_load_balancer_address(release: Release, backends: ClusterEdge,
                                                               edge_ca: CA, figures: list[str]) -> None:
    host = "first.node.e2e.test"
    release.cluster.kube.apply(ingress("first", host, WEB, 80, release.ingress_class), namespace=release.namespace)
    started = time.monotonic()
    release.install()
    answer = wait_for("the first answer after helm install", answers(lambda: (
        a := http_get(release.target.address, release.target.http_port, host)) and a.status == 200 and a),
        180.0, interval=0.2)
    figures.append(f"helm install to first 200 through the Service: {time.monotonic() - started:.1f} s")
    assert answer.json()["server"] == WEB
    release.wait_rolled_out("dataplane", 2)
    release.wait_rolled_out("controller", 2)
    for pod in release.pods("dataplane"):  # both native parts load in the image
        assert "HTTP request-head parser: c; HTTP/2 session: libnghttp2" in release.log(pod.metadata.name)
    service = release.cluster.kube.get("v1", "Service", f"{release.prefix}-dataplane", release.namespace)
    assert service is not None
    node_port = next(p.nodePort for p in service.spec.ports if p.name == "http")
    through_node_port = http_get(NODE_IP, node_port, host)
    assert through_node_port.status == 200 and through_node_port.json()["server"] == WEB


def test_every_tls_mode_mtls_redirect_and_http2(release: Release, backends: ClusterEdge, edge_ca: CA,
                                                node: Node, tmp_path: Path) -> None:
    kube, ns, target = release.cluster.kube, release.namespace, release.target
    backend_ca = CA("Portcullis node backend CA")
    backends.backend("secure", "https", cert=backend_ca.issue(f"secure.{ns}.svc"))
    direct_host = "direct.node.e2e.test"
    direct_cert = backend_ca.issue(direct_host)
    backends.backend("direct", "tls", cert=direct_cert)
    edge_host = offload(release, edge_ca, "edge")
    bridge_host, mtls_host = "bridge.node.e2e.test", "mtls.node.e2e.test"
    bridge_cert, mtls_cert = edge_ca.issue(bridge_host), edge_ca.issue(mtls_host)
    client_ca = CA("Portcullis node client CA")
    issued = client_ca.issue("alice", client=True)
    (tmp_path / "alice.crt").write_text(issued.cert_pem)
    (tmp_path / "alice.key").write_text(issued.key_pem)
    (tmp_path / "ca.crt").write_text(edge_ca.cert_pem)
    kube.apply([
        tls_secret("bridge-tls", bridge_cert.cert_pem, bridge_cert.key_pem),
        ca_secret("backend-ca", backend_ca.cert_pem),
        ingress("bridge", bridge_host, "secure", 443, release.ingress_class, tls_secret="bridge-tls", annotations={
            "portcullis.io/tls-mode": "reencrypt", "portcullis.io/backend-ca-secret": "backend-ca"}),
        ingress("direct", direct_host, "direct", 443, release.ingress_class,
                annotations={"portcullis.io/tls-mode": "passthrough"}),
        tls_secret("mtls-tls", mtls_cert.cert_pem, mtls_cert.key_pem),
        ca_secret("client-ca", client_ca.cert_pem),
        ingress("mtls", mtls_host, WEB, 80, release.ingress_class, tls_secret="mtls-tls",
                annotations={"portcullis.io/client-auth-secret": "client-ca"}),
    ], namespace=ns)

    edge = served(release, edge_host, edge_ca)
    assert edge.json()["tls"] is None and edge.peer_cert is not None
    bridge = served(release, bridge_host, edge_ca, "secure")
    assert bridge.json()["tls"]["sni"] == f"secure.{ns}.svc"  # verified TLS from the data plane to the pod

    def relayed(address: str, port: int) -> tuple[bytes, Any] | None:
        echoed, peer = tls_echo(address, port, direct_host, b"end to end", backend_ca.cert_pem)
        return (echoed, peer) if echoed == b"end to end" else None

    on_every_pod(release, "passthrough", lambda address, https, _: relayed(address, https))
    echoed, peer = relayed(target.address, target.https_port) or (b"", None)
    assert echoed == b"end to end" and peer.serial_number == direct_cert.cert.serial_number

    alice = (str(tmp_path / "alice.crt"), str(tmp_path / "alice.key"))
    on_every_pod(release, "mTLS with a trusted client certificate", lambda address, https, _: from_backend(
        https_get(address, https, mtls_host, ca_pem=edge_ca.cert_pem, client_cert=alice)))
    assert https_get(target.address, target.https_port, mtls_host, ca_pem=edge_ca.cert_pem,
                     client_cert=alice).status == 200
    without = answers(lambda: https_get(target.address, target.https_port, mtls_host, ca_pem=edge_ca.cert_pem))()
    assert without is None or without.status != 200, "served without a client certificate"

    redirect = http_get(target.address, target.http_port, edge_host, path="/a?b=1")
    assert redirect.status == 308 and redirect.headers["location"] == f"https://{edge_host}/a?b=1"

    curl = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(tmp_path / "ca.crt"), "--resolve",
         f"{edge_host}:443:{target.address}", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
         f"https://{edge_host}/"], capture_output=True, text=True, timeout=30, check=False)
    assert curl.stdout == "2 200", curl.stderr


# ---------------------------------------------------------------------------- the controller in its pods


def test_controller_pods_lead_report_and_lack_no_permission(release: Release, backends: ClusterEdge) -> None:
    kube, ns = release.cluster.kube, release.namespace
    controllers = {p.metadata.name for p in release.ready_pods("controller")}
    assert len(controllers) == 2
    holder = wait_for("a controller pod holds the Lease", release.lease_holder, 30.0)
    assert any(holder.startswith(name) for name in controllers), f"{holder} is not one of {controllers}"

    kube.apply(ingress("odd", "odd.node.e2e.test", WEB, 80, release.ingress_class,
                       annotations={"portcullis.io/tls-mode": "sideways"}), namespace=ns)

    def warning() -> Any:
        events = kube.resource("v1", "Event").get(namespace=ns, field_selector="involvedObject.name=odd")
        return next((e for e in events.items if e.type == "Warning" and "tls-mode" in (e.message or "")), None)

    assert wait_for("a Warning Event on the Ingress from the controller pod", warning, CHANGE_BOUND)

    def published() -> Any:
        found = kube.get("networking.k8s.io/v1", "Ingress", "first", ns)
        ingress_status = (found.to_dict()["status"].get("loadBalancer") or {}).get("ingress") or [] if found else []
        return [i.get("ip") for i in ingress_status] == [release.target.address]

    assert wait_for("Ingress status carries the load balancer's address", published, CHANGE_BOUND)
    for name in controllers:  # a permission the chart's RBAC lacks shows up as a 403 in the controller's log
        log = release.log(name)
        forbidden = [line for line in log.splitlines() if "403" in line or "forbidden" in line.lower()]
        assert not forbidden, f"{name} was refused by the API server:\n" + "\n".join(forbidden[:10])
    kube.delete("networking.k8s.io/v1", "Ingress", "odd", ns)


# ---------------------------------------------------------------------------- changes under load


def test_helm_upgrade_rolls_the_data_planes_without_a_failed_request(release: Release, backends: ClusterEdge,
                                                                     edge_ca: CA, figures: list[str]) -> None:
    host = offload(release, edge_ca, "steady")
    served(release, host, edge_ca)
    before = {p.metadata.name for p in release.pods("dataplane")}
    with SteadyClients(release.target, host, edge_ca.cert_pem, WEB) as clients:
        wait_for("the clients are sending", lambda: clients.sent() > 20, 30.0)
        release.upgrade({"dataplane": {"podAnnotations": {"portcullis.io/e2e-rollout": str(time.time())}}})
        after = release.wait_rolled_out("dataplane", 2, timeout=180.0)
        release.wait_gone(before)  # preStop and drain over: the old pods' connections are closed
        sent_at_rollout = clients.sent()
        wait_for("the clients keep sending after the rollout", lambda: clients.sent() > sent_at_rollout + 200, 30.0)
        tally = clients.stop()
    assert not before & {p.metadata.name for p in after}, "every data-plane pod was replaced"
    figures.append(f"helm upgrade rolling 2 data-plane pods under 4 keep-alive clients: {tally}")
    assert tally.ok > 0 and not tally.failures, "\n".join(tally.failures[:20])
    assert tally.connections > 4, "the clients moved to the new pods (their old connections were closed)"


def test_deleting_the_leader_pod_hands_over_while_traffic_flows(release: Release, backends: ClusterEdge,
                                                                edge_ca: CA, figures: list[str]) -> None:
    kube, ns = release.cluster.kube, release.namespace
    host = offload(release, edge_ca, "handover")
    served(release, host, edge_ca)
    leader = wait_for("a leader", release.lease_holder, 30.0)
    leader_pod = next(p.metadata.name for p in release.pods("controller") if leader.startswith(p.metadata.name))
    with SteadyClients(release.target, host, edge_ca.cert_pem, WEB) as clients:
        wait_for("the clients are sending", lambda: clients.sent() > 20, 30.0)
        started = time.monotonic()
        kube.delete("v1", "Pod", leader_pod, ns)
        new = wait_for("another controller pod takes the Lease", lambda: (
            h := release.lease_holder()) and not h.startswith(leader_pod) and h, TAKEOVER_BOUND, interval=0.2)
        took = time.monotonic() - started
        later = offload(release, edge_ca, "after-handover")  # the new leader renders and pushes
        served(release, later, edge_ca)  # a change after the handover reaches every data-plane pod
        tally = clients.stop()
    figures.append(f"leader pod deleted: {new} leads after {took:.1f} s; traffic meanwhile: {tally}")
    assert tally.ok > 0 and not tally.failures, "\n".join(tally.failures[:20])


def test_a_killed_data_plane_container_serves_from_its_state_file(release: Release, backends: ClusterEdge,
                                                                  edge_ca: CA) -> None:
    kube, ns = release.cluster.kube, release.namespace
    host = offload(release, edge_ca, "remembered")
    served(release, host, edge_ca)
    release.upgrade({"controller": {"replicas": 0}})  # nobody can push: what serves comes from the state file
    release.wait_rolled_out("controller", 0)
    try:
        victim = release.ready_pods("dataplane")[0]
        restarts = victim.status.containerStatuses[0].restartCount
        release.kill_container(victim)

        def restarted_and_ready() -> Any:
            pod = kube.get("v1", "Pod", victim.metadata.name, ns)
            status = pod.status.containerStatuses[0] if pod is not None else None
            return status is not None and status.restartCount > restarts and status.ready and pod

        pod = wait_for("the killed container restarted and ready", restarted_and_ready, 90.0, interval=0.5)
        answer = https_get(pod.status.podIP, 8443, host, ca_pem=edge_ca.cert_pem)
        assert answer.status == 200 and answer.json()["server"] == WEB
    finally:
        release.upgrade({"controller": {"replicas": 2}})
    release.wait_rolled_out("controller", 2)


# ---------------------------------------------------------------------------- uninstall


def test_helm_uninstall_leaves_only_the_lease_and_events(release: Release, rig: Cluster) -> None:
    kube, ns = rig.kube, release.namespace
    release.uninstall()
    selector = f"app.kubernetes.io/instance={release.name}"

    def gone() -> bool:
        for api_version, kind in (("v1", "Pod"), ("v1", "Service"), ("v1", "Secret"), ("v1", "ServiceAccount"),
                                  ("apps/v1", "Deployment"), ("apps/v1", "ReplicaSet"),
                                  ("rbac.authorization.k8s.io/v1", "Role"),
                                  ("rbac.authorization.k8s.io/v1", "RoleBinding"),
                                  ("policy/v1", "PodDisruptionBudget"),
                                  ("networking.k8s.io/v1", "NetworkPolicy"),
                                  ("discovery.k8s.io/v1", "EndpointSlice")):
            if kube.resource(api_version, kind).get(namespace=ns, label_selector=selector).items:
                return False
        for api_version, kind in (("networking.k8s.io/v1", "IngressClass"),
                                  ("rbac.authorization.k8s.io/v1", "ClusterRole"),
                                  ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
                                  ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration")):
            if kube.resource(api_version, kind).get(label_selector=selector).items:
                return False
        return True

    wait_for("every object of the release gone", gone, 120.0, interval=0.5)
    # What docs/helm.md says stays: the leader Lease the controller made at run time (and Events, which expire).
    leases = kube.resource("coordination.k8s.io/v1", "Lease").get(namespace=ns).items
    assert [lease.metadata.name for lease in leases] == [f"{release.prefix}-leader"]
    assert not [p for p in kube.resource("v1", "Pod").get(namespace=ns).items
                if (p.metadata.labels or {}).get("app.kubernetes.io/part-of") == "portcullis"]
