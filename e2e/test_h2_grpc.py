"""HTTP/2 and gRPC (issue 13) against a real API server: the real controller turns Ingress annotations into a
snapshot and the real data plane (in a netns pod) serves it to real clients. grpcio on both ends (an independent
HTTP/2 and gRPC implementation): ``portcullis.io/backend-protocol: grpc`` to an h2c backend, ingress-nginx's
``backend-protocol: GRPCS`` to a TLS one; ``portcullis.io/http2: "false"`` negotiates HTTP/1.1 with curl while a
gRPC host beside it negotiates 2; an invalid value becomes a Warning Event and the Ingress stays on HTTP/1.1; and an
open HTTP/2 connection follows the snapshot request by request (a call after the annotation is removed goes to
the backend as HTTP/1.1 on the same client connection and fails fast, as gRPC needs HTTP/2)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client

from e2e.client import Answer, https_get
from e2e.cluster_edge import ClusterEdge
from e2e.components import DataPlane
from e2e.harness import GRPC_PORT, Edge
from e2e.objects import ingress, tls_secret
from tests.integration.grpc_backends import FAIL_MESSAGE, method
from tests.pki import CA

AnyEdge = Edge | ClusterEdge
ROUTE_BOUND = 5.0  # an applied Ingress serves within this (the controller's own 3 s bound, plus gRPC reconnects)
CALL_TIMEOUT = 5.0  # every gRPC call: a hung call fails the test instead of hanging it
GRPC = {"portcullis.io/backend-protocol": "grpc"}
WHY_LOCAL = "grpcio backends in netns pods and the data plane's access log"


@pytest.fixture(scope="module")
def edge_ca() -> CA:
    return CA("Portcullis e2e HTTP/2 edge CA")


@pytest.fixture(scope="module")
def backend_ca() -> CA:
    return CA("Portcullis e2e gRPC backend CA")


def start(any_edge: AnyEdge) -> tuple[Edge, DataPlane]:
    """The rig's edge with one ready data plane and one controller."""
    any_edge.require_local(WHY_LOCAL)
    assert isinstance(any_edge, Edge)
    dataplane = any_edge.add_dataplane()
    any_edge.add_controller()
    any_edge.wait_ready(dataplane)
    return any_edge, dataplane


def terminated(edge: Edge, edge_ca: CA, name: str, host: str, service: str, port: int,
               annotations: dict[str, str] | None = None) -> None:
    """An offload Ingress for ``host`` with its own TLS Secret (a certificate of ``edge_ca``)."""
    cert = edge_ca.issue(host)
    edge.kube.apply([tls_secret(f"{name}-tls", cert.cert_pem, cert.key_pem),
                     ingress(name, host, service, port, edge.ingress_class, tls_secret=f"{name}-tls",
                             annotations=annotations)], namespace=edge.namespace)


def channel(dataplane: DataPlane, host: str, ca_pem: str) -> grpc.Channel:
    """grpcio's TLS channel to the data plane (ALPN h2, SNI and :authority ``host``, trusting the edge CA only);
    reconnects kept short so polling a route that is not there yet stays within its bound."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem.encode())
    return grpc.secure_channel(f"{dataplane.address}:{dataplane.https_port}", creds, options=[
        ("grpc.ssl_target_name_override", host), ("grpc.default_authority", host),
        ("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0),
        ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 300),
    ])


def unary(ch: grpc.Channel, payload: bytes) -> bytes:
    answer: bytes = ch.unary_unary(method("Unary"))(payload, timeout=CALL_TIMEOUT)
    return answer


def wait_grpc(edge: Edge, ch: grpc.Channel, host: str) -> None:
    """Until a unary call on ``ch`` answers (the route is up): a bounded poll on the call itself."""

    def answered() -> bool:
        try:
            return unary(ch, b"ready?") == b"ready?"
        except grpc.RpcError:
            return False

    edge.eventually(f"a gRPC call to {host} answered through the data plane", answered, ROUTE_BOUND)


def rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value


def exercise_grpc(ch: grpc.Channel) -> None:
    """Unary (a payload spanning several DATA frames), server streaming, and a backend error status with its
    percent-encoded message, all through the data plane."""
    payload = bytes(range(256)) * 1024
    assert unary(ch, payload) == payload
    streamed = list(ch.unary_stream(method("ServerStream"))(b"50", timeout=CALL_TIMEOUT))
    assert streamed == [b"msg-%d" % i for i in range(50)]
    error = rpc_error(lambda: ch.unary_unary(method("Fail"))(b"x", timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == FAIL_MESSAGE


def access_log(dataplane: DataPlane) -> list[dict[str, Any]]:
    """The data plane's JSON access records (its log file also holds text log lines)."""
    path = dataplane.pod.log_path("dataplane")
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith('{"time"'):
            records.append(json.loads(line))
    return records


def logged(edge: Edge, dataplane: DataPlane, host: str, path: str, count: int) -> list[dict[str, Any]]:
    """At least ``count`` access records for ``host`` and ``path`` (the log is flushed every 50 ms: polled)."""

    def found() -> list[dict[str, Any]] | None:
        records = [r for r in access_log(dataplane) if r["host"] == host and r["path"] == path]
        return records if len(records) >= count else None

    return edge.eventually(f"{count} access record(s) for {host}{path}", found, 3.0)


def curl_http_version(dataplane: DataPlane, host: str, ca_file: Path) -> str:
    """What ``curl --http2`` negotiated with the data plane for ``host`` (``%{http_version}``: 2 or 1.1)."""
    done = subprocess.run(
        ["curl", "--http2", "-sS", "--noproxy", "*", "--max-time", "5", "--cacert", str(ca_file),
         "--resolve", f"{host}:{dataplane.https_port}:{dataplane.address}", "-o", "/dev/null",
         "-w", "%{http_version}", f"https://{host}:{dataplane.https_port}/"],
        capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 0, f"curl to {host} failed ({done.returncode}): {done.stderr}"
    return done.stdout.strip()


# ---------------------------------------------------------------------------- gRPC through the edge


def test_grpc_ingress_reaches_an_h2c_grpcio_backend(edge: AnyEdge, edge_ca: CA) -> None:
    rig, dataplane = start(edge)
    pod = rig.grpc_backend("grpc")
    host = "grpc.e2e.test"
    terminated(rig, edge_ca, "grpc", host, "grpc", GRPC_PORT, GRPC)
    with channel(dataplane, host, edge_ca.cert_pem) as ch:
        wait_grpc(rig, ch, host)
        exercise_grpc(ch)
    record = logged(rig, dataplane, host, "/test.Echo/Fail", 1)[-1]
    assert (record["http_version"], record["protocol"]) == ("HTTP/2.0", "grpc")  # gRPC over HTTP/2 (ALPN h2)...
    assert record["upstream"] == f"{pod.address}:{GRPC_PORT}"  # ...to the pod the EndpointSlice names


def test_nginx_grpcs_reaches_a_tls_grpcio_backend(edge: AnyEdge, edge_ca: CA, backend_ca: CA) -> None:
    """ingress-nginx's ``backend-protocol: GRPCS``: HTTP/2 over TLS to the backend (not verified, as there)."""
    rig, dataplane = start(edge)
    pod = rig.grpc_backend("grpcs", cert=backend_ca.issue(f"grpcs.{rig.namespace}.svc"))
    host = "grpcs.e2e.test"
    terminated(rig, edge_ca, "grpcs", host, "grpcs", GRPC_PORT,
               {"nginx.ingress.kubernetes.io/backend-protocol": "GRPCS"})
    with channel(dataplane, host, edge_ca.cert_pem) as ch:
        wait_grpc(rig, ch, host)
        exercise_grpc(ch)
    record = logged(rig, dataplane, host, "/test.Echo/Fail", 1)[-1]
    assert (record["http_version"], record["protocol"]) == ("HTTP/2.0", "grpc")
    assert record["upstream"] == f"{pod.address}:{GRPC_PORT}"
    assert record["mode"] == "reencrypt"  # TLS to the backend


# ---------------------------------------------------------------------------- what clients negotiate


def test_http2_false_host_negotiates_http1_beside_a_grpc_host(edge: AnyEdge, edge_ca: CA, tmp_path: Path) -> None:
    rig, dataplane = start(edge)
    rig.grpc_backend("grpc")
    rig.backend("web", "http")
    grpc_host, h1_host = "grpc.e2e.test", "h1.e2e.test"
    terminated(rig, edge_ca, "grpc", grpc_host, "grpc", GRPC_PORT, GRPC)
    terminated(rig, edge_ca, "h1", h1_host, "web", 80, {"portcullis.io/http2": "false"})
    ca_file = tmp_path / "edge-ca.crt"
    ca_file.write_text(edge_ca.cert_pem)
    with channel(dataplane, grpc_host, edge_ca.cert_pem) as ch:
        wait_grpc(rig, ch, grpc_host)
    rig.eventually(f"{h1_host} served", lambda: https_get(dataplane.address, dataplane.https_port, h1_host,
                                                           ca_pem=edge_ca.cert_pem).status == 200, ROUTE_BOUND)
    assert curl_http_version(dataplane, h1_host, ca_file) == "1.1"  # ALPN offered http/1.1 only
    assert curl_http_version(dataplane, grpc_host, ca_file) == "2"


def test_invalid_backend_protocol_warns_and_stays_http1(edge: AnyEdge, edge_ca: CA) -> None:
    rig, dataplane = start(edge)
    rig.backend("web", "http")
    host = "h3.e2e.test"
    terminated(rig, edge_ca, "h3", host, "web", 80, {"portcullis.io/backend-protocol": "h3"})
    core = client.CoreV1Api(rig.cluster.kube.api)

    def warning() -> Any:
        events = core.list_namespaced_event(rig.namespace, field_selector="involvedObject.name=h3").items
        return [e for e in events if e.type == "Warning" and "portcullis.io/backend-protocol" in (e.message or "")]

    found = rig.eventually("a Warning Event naming portcullis.io/backend-protocol", warning, 10.0)
    assert found[0].involved_object.kind == "Ingress"
    assert "h3" in found[0].message

    def served() -> Answer | None:
        answer = https_get(dataplane.address, dataplane.https_port, host, ca_pem=edge_ca.cert_pem)
        return answer if answer.status == 200 else None

    answer = rig.eventually(f"{host} still served", served, ROUTE_BOUND)
    assert answer.json()["server"] == "web"
    assert answer.json()["version"] == "1.1"  # forwarded as HTTP/1.1, the default the invalid value left


# ---------------------------------------------------------------------------- snapshot changes, connection open


def test_open_h2_connection_follows_the_snapshot_per_request(edge: AnyEdge, edge_ca: CA) -> None:
    """The annotation removed while a gRPC channel stays open: the next call on the same client connection is
    routed by the new snapshot (HTTP/1.1 to the grpcio backend, which cannot speak it) and answered at once."""
    rig, dataplane = start(edge)
    pod = rig.grpc_backend("grpc")
    host = "switch.e2e.test"
    terminated(rig, edge_ca, "switch", host, "grpc", GRPC_PORT, GRPC)
    with channel(dataplane, host, edge_ca.cert_pem) as ch:
        wait_grpc(rig, ch, host)
        assert unary(ch, b"before") == b"before"
        before = logged(rig, dataplane, host, "/test.Echo/Unary", 1)[-1]

        rig.kube.apply(ingress("switch", host, "grpc", GRPC_PORT, rig.ingress_class, tls_secret="switch-tls"),
                       namespace=rig.namespace)  # server-side apply: the annotation this manager set is removed

        def failed() -> tuple[grpc.StatusCode, str, float] | None:
            started = time.monotonic()
            try:
                assert unary(ch, b"after") == b"after"  # still the old snapshot
                return None
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or "", time.monotonic() - started

        code, details, took = rig.eventually("a call routed by the new snapshot", failed, ROUTE_BOUND)
        assert took < 2.0, f"the data plane took {took:.1f}s to answer ({code}: {details})"  # answered, not hung
        # The data plane's own answer (its 502 as grpc-status UNAVAILABLE, its words in grpc-message): grpcio's
        # backend reads an HTTP/1.1 request as a bad connection preface and closes the connection.
        assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
        assert details == "upstream closed the connection before the response was complete", details

        rig.kube.apply(ingress("switch", host, "grpc", GRPC_PORT, rig.ingress_class, tls_secret="switch-tls",
                               annotations=GRPC), namespace=rig.namespace)
        wait_grpc(rig, ch, host)  # and back: the same connection survived the failed stream

    def settled() -> list[dict[str, Any]] | None:
        """The records since ``before``, once they end with the success after the failures (flushed every 50 ms)."""
        mine = [r for r in access_log(dataplane) if r["host"] == host and r["time"] >= before["time"]]
        return mine if any(r["status"] != 200 for r in mine) and mine[-1]["status"] == 200 else None

    records = rig.eventually("access records of the failed calls and the success after them", settled, 3.0)
    for failure in (r for r in records if r["status"] != 200):
        assert failure["status"] == 502 and failure["upstream"] == f"{pod.address}:{GRPC_PORT}", failure
        assert failure["upstream_connect_time"] is not None, failure  # a connection to the backend (http1 pool)
        assert failure["upstream_response_time"] is None, failure  # that never answered the HTTP/1.1 request
        assert (failure["http_version"], failure["protocol"]) == ("HTTP/2.0", "grpc"), failure
    assert {r["client_port"] for r in records} == {before["client_port"]}, records  # one client connection
