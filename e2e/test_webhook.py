"""The controller's validating webhook, called by a real API server: an Ingress of ours whose annotations the
renderer refuses is rejected at admission with the renderer's message and never stored; valid Ingresses, and
Ingresses of other classes, are admitted."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from e2e.harness import Edge
from e2e.netns import HOST_ADDR, wait_tcp
from e2e.objects import ingress
from tests.pki import CA


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST_ADDR, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def webhook(any_edge: Any) -> Iterator[Edge]:
    """A controller serving admission on the host's bridge address, registered for this test's namespace only
    (other sessions sharing the rig never reach it)."""
    any_edge.require_local("registers a webhook served by a controller the test starts")
    edge: Edge = any_edge
    ca = CA("Portcullis e2e webhook CA")
    serving = ca.issue(HOST_ADDR)
    cert_file, key_file = edge.work_dir / "webhook.crt", edge.work_dir / "webhook.key"
    cert_file.write_text(serving.cert_pem)
    key_file.write_text(serving.key_pem)
    port = _free_port()
    controller = edge.add_controller(extra=("--webhook-port", str(port), "--webhook-cert-file", str(cert_file),
                                            "--webhook-key-file", str(key_file)))
    try:
        wait_tcp(HOST_ADDR, port, timeout=20)
    except Exception:
        controller.check_running()
        raise
    name = f"portcullis-e2e-{edge.namespace}"
    edge.kube.apply({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "ingresses.portcullis.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 5,
            "clientConfig": {"url": f"https://{HOST_ADDR}:{port}/validate",
                             "caBundle": base64.b64encode(ca.cert_pem.encode()).decode()},
            "rules": [{"apiGroups": ["networking.k8s.io"], "apiVersions": ["v1"], "resources": ["ingresses"],
                       "operations": ["CREATE", "UPDATE"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": edge.namespace}},
        }],
    })
    try:
        yield edge
    finally:
        edge.kube.delete("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", name)


def test_webhook_rejects_what_the_renderer_refuses(webhook: Edge) -> None:
    edge = webhook
    edge.backend("web", "http")  # a missing Service is an error of its own; keep this test about the annotation
    bad = ingress("bad", "bad.e2e.test", "web", 80, edge.ingress_class,
                  annotations={"portcullis.io/load-balance": "fastest-please"})

    def rejected() -> ApiException | None:  # the API server picks up a new webhook configuration within moments
        try:
            edge.kube.apply(bad, namespace=edge.namespace, dry_run=True)
        except ApiException as exc:
            return exc
        return None

    edge.eventually("the webhook is consulted", rejected, 10.0)
    with pytest.raises(ApiException) as caught:
        edge.kube.apply(bad, namespace=edge.namespace)
    assert caught.value.status in (400, 422)
    message = str(caught.value.body)
    assert "load-balance" in message and "denied the request" in message
    assert edge.kube.get("networking.k8s.io/v1", "Ingress", "bad", edge.namespace) is None

    edge.kube.apply(ingress("good", "good.e2e.test", "web", 80, edge.ingress_class,
                            annotations={"portcullis.io/load-balance": "least-conn"}), namespace=edge.namespace)
    edge.kube.apply(ingress("theirs", "theirs.e2e.test", "web", 80, "someone-else",
                            annotations={"portcullis.io/load-balance": "fastest-please"}), namespace=edge.namespace)
    assert edge.kube.get("networking.k8s.io/v1", "Ingress", "good", edge.namespace) is not None
    assert edge.kube.get("networking.k8s.io/v1", "Ingress", "theirs", edge.namespace) is not None
