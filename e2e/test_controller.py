"""`portcullis controller` and `portcullis dataplane` against a real API server, as the issue's "Done when" lists:
every mode carries traffic within 3 s of the Ingress being applied, deletions and Secret rotations take effect
within 3 s, mode changes switch, invalid annotations become Warning Events, data planes outlive the controller and
are not ready before their first snapshot, one of two controllers leads and the other takes over within 15 s, and
Ingress status carries the published address."""

from __future__ import annotations

import signal
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client

from e2e.client import Answer, http_get, https_get, tls_echo
from e2e.cluster_edge import ClusterEdge
from e2e.harness import Edge
from e2e.objects import ca_secret, ingress, selectorless_service, tls_secret
from tests.pki import CA, Issued

AnyEdge = Edge | ClusterEdge
CHANGE_BOUND = 3.0   # the issue: traffic, deletions and rotations take effect within 3 s
TAKEOVER_BOUND = 20.0  # a SIGKILLed leader: the standby waits the lease out (15 s), plus its retry period
PUSHED = "portcullis.publisher pushed"  # the controller's log line for a snapshot a data plane accepted


@pytest.fixture(scope="module")
def edge_ca() -> CA:
    return CA("Portcullis e2e edge CA")


@pytest.fixture(scope="module")
def backend_ca() -> CA:
    return CA("Portcullis e2e backend CA")


def serial(cert: x509.Certificate | None) -> int | None:
    return cert.serial_number if cert is not None else None


def ready_edge(edge: AnyEdge, **controller: Any) -> Any:
    """One data plane and one controller, the data plane ready (so later bounds measure changes, not start-up)."""
    dataplane: Any = edge.add_dataplane()
    edge.add_controller(**controller)
    edge.wait_ready(dataplane)
    return dataplane


def local(edge: AnyEdge, why: str) -> Edge:
    """The rig's edge, or a skip naming why the test needs processes it owns (on a chart-installed cluster)."""
    edge.require_local(why)
    assert isinstance(edge, Edge)
    return edge


def ok(probe: Any) -> Any:
    """A probe that treats connection errors as "not yet" (the route may not exist on the first tries)."""

    def run() -> Any:
        try:
            return probe()
        except OSError:
            return None

    return run


def plain(target: Any, host: str) -> Answer:
    return http_get(target.address, target.http_port, host)


def secure(target: Any, host: str, ca_pem: str) -> Answer:
    return https_get(target.address, target.https_port, host, ca_pem=ca_pem)


def relay(target: Any, host: str, payload: bytes, ca_pem: str) -> tuple[bytes, x509.Certificate]:
    return tls_echo(target.address, target.https_port, host, payload, ca_pem)


def served_by(answer: Answer, backend: str) -> bool:
    return answer.status == 200 and answer.json().get("server") == backend


# ---------------------------------------------------------------------------- every mode


def test_plain_http_ingress_serves_within_bound(edge: AnyEdge) -> None:
    dataplane = ready_edge(edge)
    edge.backend("web", "http")
    host = "plain.e2e.test"
    edge.kube.apply(ingress("plain", host, "web", 80, edge.ingress_class), namespace=edge.namespace)
    answer = edge.eventually(f"plain HTTP to {host} through the data plane", ok(lambda: (
        a := plain(dataplane, host)) and served_by(a, "web") and a), CHANGE_BOUND)
    assert answer.json()["tls"] is None


def test_offload_terminates_with_the_secret_certificate(edge: AnyEdge, edge_ca: CA) -> None:
    dataplane = ready_edge(edge)
    edge.backend("web", "http")
    host = "offload.e2e.test"
    cert = edge_ca.issue(host)
    edge.kube.apply([tls_secret("offload-tls", cert.cert_pem, cert.key_pem),
                     ingress("offload", host, "web", 80, edge.ingress_class, tls_secret="offload-tls")],
                    namespace=edge.namespace)
    answer = edge.eventually(f"HTTPS to {host} (offload)", ok(lambda: (
        a := secure(dataplane, host, ca_pem=edge_ca.cert_pem)) and served_by(a, "web")
        and a), CHANGE_BOUND)
    assert serial(answer.peer_cert) == cert.cert.serial_number
    seen = answer.json()
    assert seen["tls"] is None  # offload: the backend got plain HTTP
    assert dict((k.lower(), v) for k, v in seen["headers"])["x-forwarded-proto"] == "https"


def test_reencrypt_verifies_the_backend_and_speaks_tls_to_it(edge: AnyEdge, edge_ca: CA, backend_ca: CA) -> None:
    dataplane = ready_edge(edge)
    edge.backend("secure", "https", cert=backend_ca.issue(f"secure.{edge.namespace}.svc"))
    host = "reencrypt.e2e.test"
    cert = edge_ca.issue(host)
    edge.kube.apply([
        tls_secret("reencrypt-tls", cert.cert_pem, cert.key_pem),
        ca_secret("backend-ca", backend_ca.cert_pem),
        ingress("reencrypt", host, "secure", 443, edge.ingress_class, tls_secret="reencrypt-tls", annotations={
            "portcullis.io/tls-mode": "reencrypt", "portcullis.io/backend-ca-secret": "backend-ca"}),
    ], namespace=edge.namespace)
    answer = edge.eventually(f"HTTPS to {host} (reencrypt)", ok(lambda: (
        a := secure(dataplane, host, ca_pem=edge_ca.cert_pem)) and served_by(a, "secure")
        and a), CHANGE_BOUND)
    assert serial(answer.peer_cert) == cert.cert.serial_number
    assert answer.json()["tls"] is not None  # the backend saw TLS from the data plane
    assert answer.json()["tls"]["sni"] == f"secure.{edge.namespace}.svc"


def test_passthrough_relays_tls_to_the_backend(edge: AnyEdge, backend_ca: CA) -> None:
    dataplane = ready_edge(edge)
    host = "passthrough.e2e.test"
    backend_cert = backend_ca.issue(host)
    edge.backend("direct", "tls", cert=backend_cert)
    edge.kube.apply(ingress("direct", host, "direct", 443, edge.ingress_class,
                            annotations={"portcullis.io/tls-mode": "passthrough"}), namespace=edge.namespace)
    echoed, peer = edge.eventually(f"TLS to {host} (passthrough)", ok(
        lambda: relay(dataplane, host, b"hello through the edge", backend_ca.cert_pem)), CHANGE_BOUND)
    assert echoed == b"hello through the edge"
    assert peer.serial_number == backend_cert.cert.serial_number  # the backend's own certificate, end to end


def test_reencrypt_refuses_a_backend_its_ca_did_not_sign(edge: AnyEdge, edge_ca: CA, backend_ca: CA) -> None:
    """TLS done right toward the backend: an impostor's certificate gets the client a 502, never its answer."""
    dataplane = ready_edge(edge)
    impostor_ca = CA("Not the backend CA")
    edge.backend("secure", "https", cert=impostor_ca.issue(f"secure.{edge.namespace}.svc"), name="impostor")
    host = "strict.e2e.test"
    cert = edge_ca.issue(host)
    edge.kube.apply([
        tls_secret("strict-tls", cert.cert_pem, cert.key_pem),
        ca_secret("backend-ca", backend_ca.cert_pem),
        ingress("strict", host, "secure", 443, edge.ingress_class, tls_secret="strict-tls", annotations={
            "portcullis.io/tls-mode": "reencrypt", "portcullis.io/backend-ca-secret": "backend-ca"}),
    ], namespace=edge.namespace)
    answer = edge.eventually(f"{host} answers (the route exists)", ok(lambda: (
        a := secure(dataplane, host, edge_ca.cert_pem)) and a.status != 404 and a), CHANGE_BOUND)
    assert answer.status == 502
    assert "x-echo-server" not in answer.headers


def test_client_certificates_are_required_when_asked(edge: AnyEdge, edge_ca: CA, tmp_path: Path) -> None:
    dataplane = ready_edge(edge)
    edge.backend("web", "http")
    host = "mtls.e2e.test"
    cert, client_ca, stranger_ca = edge_ca.issue(host), CA("e2e client CA"), CA("e2e stranger CA")
    files = {}
    for who, issuer in (("alice", client_ca), ("mallory", stranger_ca)):
        issued = issuer.issue(who, client=True)
        files[who] = (tmp_path / f"{who}.crt", tmp_path / f"{who}.key")
        files[who][0].write_text(issued.cert_pem)
        files[who][1].write_text(issued.key_pem)
    edge.kube.apply([
        tls_secret("mtls-tls", cert.cert_pem, cert.key_pem),
        ca_secret("client-ca", client_ca.cert_pem),
        ingress("mtls", host, "web", 80, edge.ingress_class, tls_secret="mtls-tls",
                annotations={"portcullis.io/client-auth-secret": "client-ca"}),
    ], namespace=edge.namespace)

    def as_(who: str | None) -> Answer | None:
        pair = (str(files[who][0]), str(files[who][1])) if who else None
        try:
            return https_get(dataplane.address, dataplane.https_port, host, ca_pem=edge_ca.cert_pem,
                             client_cert=pair)
        except (ssl.SSLError, ConnectionError):
            return None  # refused in the handshake

    edge.eventually("alice (a client of the trusted CA) is served", lambda: (a := as_("alice")) is not None
                    and served_by(a, "web"), CHANGE_BOUND)
    for stranger in (None, "mallory"):
        answer = as_(stranger)
        assert answer is None or not served_by(answer, "web"), f"{stranger or 'no certificate'} got through"


# ---------------------------------------------------------------------------- changes


def test_deleting_the_ingress_removes_the_route(edge: AnyEdge) -> None:
    dataplane = ready_edge(edge)
    edge.backend("web", "http")
    host = "gone.e2e.test"
    edge.kube.apply(ingress("gone", host, "web", 80, edge.ingress_class), namespace=edge.namespace)
    edge.eventually("route up", ok(lambda: served_by(plain(dataplane, host), "web")),
                    CHANGE_BOUND)
    edge.kube.delete("networking.k8s.io/v1", "Ingress", "gone", edge.namespace)
    answer = edge.eventually("route gone", ok(lambda: (a := plain(dataplane, host))
                                               and a.status == 404 and a), CHANGE_BOUND)
    assert "x-echo-server" not in answer.headers


def test_deleting_a_namespace_removes_its_routes(any_edge: AnyEdge) -> None:
    """The namespace controller empties a deleted namespace; the Ingresses it had stop being served."""
    edge = local(any_edge, "a controller watching a second namespace")
    apps = f"e2e-apps-{uuid.uuid4().hex[:8]}"
    edge.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": apps}})
    try:
        dataplane = ready_edge(edge, extra=("--watch-namespaces", f"{edge.namespace},{apps}"))
        pod = edge.backend("web", "http")
        edge.kube.apply([*selectorless_service("web", [pod.address], 80, 8080),
                         ingress("app", "app.e2e.test", "web", 80, edge.ingress_class)], namespace=apps)
        edge.eventually("the app's route", ok(lambda: served_by(plain(dataplane, "app.e2e.test"), "web")),
                        CHANGE_BOUND)
        edge.kube.delete("v1", "Namespace", apps)
        edge.eventually("the Ingress is gone with its namespace", lambda: edge.kube.get(
            "networking.k8s.io/v1", "Ingress", "app", apps) is None, 60.0)
        edge.eventually("the route is gone", ok(lambda: plain(dataplane, "app.e2e.test").status == 404),
                        CHANGE_BOUND)
    finally:
        edge.kube.delete("v1", "Namespace", apps)


def test_rotating_the_tls_secret_serves_the_new_certificate(edge: AnyEdge, edge_ca: CA) -> None:
    dataplane = ready_edge(edge)
    edge.backend("web", "http")
    host = "rotate.e2e.test"
    first, second = edge_ca.issue(host), edge_ca.issue(host)
    edge.kube.apply([tls_secret("rotate-tls", first.cert_pem, first.key_pem),
                     ingress("rotate", host, "web", 80, edge.ingress_class, tls_secret="rotate-tls")],
                    namespace=edge.namespace)

    def presented(issued: Issued) -> Any:
        return ok(lambda: serial(secure(dataplane, host, ca_pem=edge_ca.cert_pem)
                                 .peer_cert) == issued.cert.serial_number)

    edge.eventually("first certificate served", presented(first), CHANGE_BOUND)
    edge.kube.apply(tls_secret("rotate-tls", second.cert_pem, second.key_pem), namespace=edge.namespace)
    edge.eventually("rotated certificate served", presented(second), CHANGE_BOUND)


def test_changing_tls_mode_switches_between_offload_and_passthrough(edge: AnyEdge, edge_ca: CA,
                                                                      backend_ca: CA) -> None:
    dataplane = ready_edge(edge)
    host = "switch.e2e.test"
    edge_cert, backend_cert = edge_ca.issue(host), backend_ca.issue(host)
    edge.backend("app", "tls", cert=backend_cert)
    edge.backend("web", "http")
    edge.kube.apply(tls_secret("switch-tls", edge_cert.cert_pem, edge_cert.key_pem), namespace=edge.namespace)
    offload = ingress("switch", host, "web", 80, edge.ingress_class, tls_secret="switch-tls")
    edge.kube.apply(offload, namespace=edge.namespace)
    edge.eventually("offload: the edge's certificate", ok(lambda: serial(
        secure(dataplane, host, ca_pem=edge_ca.cert_pem).peer_cert) == edge_cert.cert.serial_number),
        CHANGE_BOUND)

    edge.kube.apply(ingress("switch", host, "app", 443, edge.ingress_class,
                            annotations={"portcullis.io/tls-mode": "passthrough"}), namespace=edge.namespace)
    _, peer = edge.eventually("passthrough: the backend's certificate", ok(
        lambda: (r := relay(dataplane, host, b"x", backend_ca.cert_pem)) and r[0] == b"x" and r), CHANGE_BOUND)
    assert peer.serial_number == backend_cert.cert.serial_number

    edge.kube.apply(offload, namespace=edge.namespace)
    edge.eventually("back to offload", ok(lambda: served_by(secure(dataplane, host, ca_pem=edge_ca.cert_pem), "web")),
                    CHANGE_BOUND)


def test_invalid_annotation_becomes_a_warning_event(edge: AnyEdge) -> None:
    ready_edge(edge)
    edge.backend("web", "http")
    edge.kube.apply(ingress("odd", "odd.e2e.test", "web", 80, edge.ingress_class,
                            annotations={"portcullis.io/load-balance": "fastest-please"}), namespace=edge.namespace)
    core = client.CoreV1Api(edge.cluster.kube.api)

    def warning() -> Any:
        events = core.list_namespaced_event(edge.namespace, field_selector="involvedObject.name=odd").items
        return [e for e in events if e.type == "Warning" and "load-balance" in (e.message or "")]

    found = edge.eventually("Warning Event naming the annotation", warning, 10.0)
    assert found[0].involved_object.kind == "Ingress"
    assert "fastest-please" in found[0].message


def test_ingress_status_shows_the_published_address(any_edge: AnyEdge) -> None:
    edge = local(any_edge, "a controller started with --publish-address")
    dataplane = ready_edge(edge, publish_address="10.231.0.254")
    edge.backend("web", "http")
    edge.kube.apply(ingress("status", "status.e2e.test", "web", 80, edge.ingress_class), namespace=edge.namespace)
    edge.eventually("route up", ok(lambda: served_by(plain(dataplane, "status.e2e.test"),
                                                     "web")), CHANGE_BOUND)
    networking = client.NetworkingV1Api(edge.cluster.kube.api)

    def published() -> Any:
        status = networking.read_namespaced_ingress_status("status", edge.namespace).status
        return [i.ip for i in (status.load_balancer.ingress or [])] if status and status.load_balancer else None

    assert edge.eventually("Ingress status.loadBalancer", published, 10.0) == ["10.231.0.254"]


def test_ingress_status_follows_the_publish_service_load_balancer(any_edge: AnyEdge) -> None:
    """What a cloud load-balancer controller writes into the data-plane Service's status is what Ingresses show."""
    edge = local(any_edge, "a controller started with --publish-service, and a hand-written LoadBalancer status")
    core = client.CoreV1Api(edge.cluster.kube.api)
    edge.kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "portcullis-edge"},
                     "spec": {"type": "LoadBalancer", "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}},
                    namespace=edge.namespace)

    def set_lb(address: str) -> None:
        core.patch_namespaced_service_status("portcullis-edge", edge.namespace,
                                             {"status": {"loadBalancer": {"ingress": [{"ip": address}]}}})

    set_lb("10.231.0.251")
    ready_edge(edge, extra=("--publish-service", f"{edge.namespace}/portcullis-edge"))
    edge.backend("web", "http")
    edge.kube.apply(ingress("lb", "lb.e2e.test", "web", 80, edge.ingress_class), namespace=edge.namespace)
    networking = client.NetworkingV1Api(edge.cluster.kube.api)

    def published() -> Any:
        status = networking.read_namespaced_ingress_status("lb", edge.namespace).status
        return [i.ip for i in (status.load_balancer.ingress or [])] if status and status.load_balancer else None

    edge.eventually("status from the Service's load balancer", lambda: published() == ["10.231.0.251"], 10.0)
    set_lb("10.231.0.252")
    edge.eventually("status follows a new load-balancer address", lambda: published() == ["10.231.0.252"], 10.0)


# ---------------------------------------------------------------------------- failures


def test_data_planes_keep_serving_without_a_controller(any_edge: AnyEdge) -> None:
    edge = local(any_edge, "kills the controller")
    dataplane = ready_edge(edge)
    edge.backend("web", "http")
    edge.kube.apply(ingress("stay", "stay.e2e.test", "web", 80, edge.ingress_class), namespace=edge.namespace)
    edge.eventually("route up", ok(lambda: served_by(plain(dataplane, "stay.e2e.test"),
                                                     "web")), CHANGE_BOUND)
    edge.controllers["a"].stop(signal.SIGKILL)
    assert not edge.controllers["a"].running()
    for _ in range(10):
        assert served_by(plain(dataplane, "stay.e2e.test"), "web")
        assert dataplane.ready()
        time.sleep(0.2)


def test_restarted_data_plane_is_not_ready_until_it_gets_a_snapshot(any_edge: AnyEdge) -> None:
    edge = local(any_edge, "stops the controller and restarts a data plane")
    dataplane = ready_edge(edge)
    edge.backend("web", "http")
    host = "restart.e2e.test"
    edge.kube.apply(ingress("restart", host, "web", 80, edge.ingress_class), namespace=edge.namespace)
    edge.eventually("route up", ok(lambda: served_by(plain(dataplane, host), "web")),
                    CHANGE_BOUND)

    controller = edge.controllers["a"]
    controller.stop()
    edge.restart_dataplane(dataplane)
    for _ in range(5):  # nobody pushes now: an empty data plane must not claim readiness or serve routes
        assert dataplane.admin("/readyz")[0] == 503
        assert plain(dataplane, host).status != 200
        time.sleep(0.2)

    controller.start()
    edge.wait_ready(dataplane, timeout=30)
    assert served_by(plain(dataplane, host), "web")

    edge.restart_dataplane(dataplane)  # with a controller running, the restarted pod is caught up on its own
    edge.wait_ready(dataplane, timeout=15)
    assert served_by(plain(dataplane, host), "web")


def test_two_controllers_one_leader_and_a_takeover(any_edge: AnyEdge) -> None:
    edge = local(any_edge, "runs and kills two controllers")
    dataplane = edge.add_dataplane()
    first, second = edge.add_controller("a"), edge.add_controller("b")
    edge.wait_ready(dataplane)
    leases = client.CoordinationV1Api(edge.cluster.kube.api)

    def holder() -> str | None:
        lease = leases.read_namespaced_lease("portcullis-controller", edge.namespace)
        return lease.spec.holder_identity if lease.spec else None

    leader_identity = edge.eventually("a lease holder", holder, 15.0)
    by_pid = {str(c.proc.pid): c for c in (first, second) if c.proc is not None}
    leader = next(c for pid, c in by_pid.items() if leader_identity.endswith(f"-{pid}"))
    standby = second if leader is first else first
    for _ in range(5):  # stays one leader, the same one
        assert holder() == leader_identity
        time.sleep(0.5)
    # Only the leader pushes (the standby keeps its indexes warm and nothing else).
    assert PUSHED in leader.log_path.read_text(), leader.log_tail()
    assert PUSHED not in standby.log_path.read_text(), standby.log_tail()

    edge.backend("web", "http")
    killed_at = time.monotonic()
    leader.stop(signal.SIGKILL)  # no graceful release: the standby must wait the lease out
    assert standby.proc is not None
    edge.eventually("the standby holds the lease", lambda: (h := holder()) is not None and
                    h.endswith(f"-{standby.proc.pid}"), TAKEOVER_BOUND)  # type: ignore[union-attr]
    # ...and it really leads: a new Ingress reaches the data plane.
    edge.kube.apply(ingress("after", "after.e2e.test", "web", 80, edge.ingress_class), namespace=edge.namespace)
    edge.eventually("the new leader publishes", ok(lambda: served_by(
        plain(dataplane, "after.e2e.test"), "web")),
        max(CHANGE_BOUND, TAKEOVER_BOUND - (time.monotonic() - killed_at)))


def test_namespaces_and_classes_are_private_to_each_test(edge: AnyEdge) -> None:
    """The harness's isolation holds: an Ingress of another class in the same namespace is not served."""
    dataplane = ready_edge(edge)
    edge.backend("web", "http")
    other = f"someone-else-{uuid.uuid4().hex[:6]}"
    edge.kube.apply([ingress("theirs", "theirs.e2e.test", "web", 80, other),
                     ingress("ours", "ours.e2e.test", "web", 80, edge.ingress_class)], namespace=edge.namespace)
    edge.eventually("ours served", ok(lambda: served_by(plain(dataplane, "ours.e2e.test"),
                                                        "web")), CHANGE_BOUND)
    assert plain(dataplane, "theirs.e2e.test").status == 404


# ---------------------------------------------------------------------------- topology changes


def test_every_data_plane_gets_the_snapshot_including_one_added_later(any_edge: AnyEdge) -> None:
    edge = local(any_edge, "starts data planes")
    first = ready_edge(edge)
    edge.backend("web", "http")
    host = "fleet.e2e.test"
    edge.kube.apply(ingress("fleet", host, "web", 80, edge.ingress_class), namespace=edge.namespace)
    edge.eventually("first data plane serves", ok(lambda: served_by(plain(first, host), "web")), CHANGE_BOUND)

    second = edge.add_dataplane()  # listed in the admin Service's EndpointSlice, as a new pod would be
    edge.wait_ready(second, timeout=10)
    edge.eventually("the added data plane serves too", ok(lambda: served_by(plain(second, host), "web")),
                    CHANGE_BOUND)
    assert served_by(plain(first, host), "web")


def test_endpoint_slice_changes_move_traffic_between_backends(any_edge: AnyEdge) -> None:
    edge = local(any_edge, "rewrites EndpointSlices by hand, as the endpoint controller would")
    dataplane = ready_edge(edge)
    one = edge.backend("web", "http", name="one")
    two = edge.backend("web-two", "http", name="two")  # a second pod; its own Service only to start it
    host = "moves.e2e.test"
    edge.kube.apply(ingress("moves", host, "web", 80, edge.ingress_class), namespace=edge.namespace)
    edge.eventually("served by pod one", ok(lambda: served_by(plain(dataplane, host), "one")), CHANGE_BOUND)

    both = selectorless_service("web", [one.address, two.address], 80, 8080)
    edge.kube.apply(both[1], namespace=edge.namespace)
    seen: set[str] = set()

    def both_serve() -> bool:
        seen.add(plain(dataplane, host).json()["server"])
        return seen == {"one", "two"}

    edge.eventually("round-robin over both pods", ok(both_serve), CHANGE_BOUND)

    edge.kube.apply(selectorless_service("web", [two.address], 80, 8080)[1], namespace=edge.namespace)
    edge.eventually("pod one drained from the pool", ok(
        lambda: all(plain(dataplane, host).json()["server"] == "two" for _ in range(4))), CHANGE_BOUND)
