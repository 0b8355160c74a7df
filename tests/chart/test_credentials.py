"""The generated push-channel and webhook credentials work: real TLS handshakes with the rendered material."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from controller.model import Inputs
from controller.render import RenderConfig
from controller.webhook import make_app
from tests.chart.rendering import NAMESPACE, Obj, container, mounted_secret_files, render, scenarios
from tests.chart.test_workloads import parse


def secret_files(secret: Obj, directory: Path) -> dict[str, Path]:
    out = {}
    for key, value in secret["data"].items():
        path = directory / key
        path.write_bytes(base64.b64decode(value))
        out[key] = path
    return out


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_name: str) -> None:
    """A complete TLS handshake over memory BIOs: no sockets, but the real OpenSSL verification."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=server_name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not complete")


def server_context(files: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files["tls.crt"], files["tls.key"])
    return ctx


def client_context(files: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files["ca.crt"]))


def test_push_secret_lets_the_controller_verify_the_data_plane(tmp_path: Path) -> None:
    m = render()
    secret = m.get("Secret", "portcullis-push", NAMESPACE)
    assert set(secret["data"]) == {"token", "ca.crt", "tls.crt", "tls.key"}
    files = secret_files(secret, tmp_path)
    token = files["token"].read_text()
    assert len(token) == 48 and token.isalnum()

    cert = x509.load_pem_x509_certificate(files["tls.crt"].read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["portcullis-dataplane"]
    ca = x509.load_pem_x509_certificate(files["ca.crt"].read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    cert.verify_directly_issued_by(ca)

    # Exactly what the controller does: trust ca.crt, verify the name given by --push-server-name.
    server_name = parse("controller", container(m.workload("controller"))["args"]).push_server_name
    handshake(server_context(files), client_context(files), server_name)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_context(files), client_context(files), "portcullis-dataplane.example")


def test_offline_renders_generate_fresh_material_each_time() -> None:
    first = render().get("Secret", "portcullis-push")["data"]
    second = render().get("Secret", "portcullis-push")["data"]
    assert first["token"] != second["token"]
    assert first["ca.crt"] != second["ca.crt"]


def test_existing_secret_is_used_and_nothing_is_generated() -> None:
    m = render(scenarios()["minimal-existing-secret-values"])
    assert m.of_kind("Secret") == []
    for workload in m.workloads():
        assert {name for name, _ in mounted_secret_files(workload).values()} == {"portcullis-push-byo"}


def test_webhook_certificate_ca_bundle_service_and_route_fit_together(tmp_path: Path) -> None:
    m = render(scenarios()["ha-webhook-monitoring-values"])
    config = m.get("ValidatingWebhookConfiguration", "portcullis-webhook")
    (hook,) = config["webhooks"]
    client = hook["clientConfig"]
    secret = m.get("Secret", "portcullis-webhook-cert", NAMESPACE)
    assert client["caBundle"] == secret["data"]["ca.crt"]
    files = secret_files(secret, tmp_path)
    host = f"{client['service']['name']}.{client['service']['namespace']}.svc"
    handshake(server_context(files), client_context(files), host)  # how the API server calls the webhook

    controller = m.workload("controller")
    args = parse("controller", container(controller)["args"])
    mounted = mounted_secret_files(controller)
    assert mounted[args.webhook_cert_file] == ("portcullis-webhook-cert", "tls.crt")
    assert mounted[args.webhook_key_file] == ("portcullis-webhook-cert", "tls.key")
    svc = m.get("Service", client["service"]["name"], NAMESPACE)
    (port,) = svc["spec"]["ports"]
    assert port["port"] == client["service"]["port"]
    ports = {p["name"]: p["containerPort"] for p in container(controller)["ports"]}
    assert ports[port["targetPort"]] == args.webhook_port

    app = make_app(lambda: Inputs.from_objects([])[0], RenderConfig)
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    assert ("POST", client["service"]["path"]) in routes
    assert hook["rules"] == [{"apiGroups": ["networking.k8s.io"], "apiVersions": ["v1"],
                              "operations": ["CREATE", "UPDATE"], "resources": ["ingresses"],
                              "scope": "Namespaced"}]
    assert hook["sideEffects"] == "None" and hook["admissionReviewVersions"] == ["v1"]


def test_webhook_only_covers_watched_namespaces() -> None:
    m = render({**scenarios()["namespaced-values"], "webhook": {"enabled": True}})
    (hook,) = m.get("ValidatingWebhookConfiguration", "portcullis-webhook")["webhooks"]
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["portcullis", "team-a", "team-b"]}]
    assert render().of_kind("ValidatingWebhookConfiguration") == []
    assert "--webhook-port=0" in container(render().workload("controller"))["args"]
