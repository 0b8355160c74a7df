"""Private keys inside ``tls.crt`` ("fullchain + key" bundles) or ``ca.crt`` never reach render output (issue 10
item 6): only CERTIFICATE blocks (and X509 CRL in CA bundles) are kept, with a Warning naming the Secret and key,
and the host still serves its certificate to a real client.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from controller.model import Inputs
from controller.render import RenderConfig, render
from dataplane import pem
from dataplane.runtime import DataPlane, DataPlaneConfig
from tests.integration.conftest import TOKEN, client_context
from tests.pki import CA
from tests.unit import objects as k

HOST = "bundle.example.com"


def world(ca: CA) -> tuple[list[dict[str, Any]], str, str]:
    leaf, client_ca = ca.issue(HOST), CA("Client CA")
    fullchain_and_key = leaf.cert_pem + ca.cert_pem + leaf.key_pem  # what some tools write as "tls.crt"
    secret = k.tls_secret("bundle", fullchain_and_key, leaf.key_pem)
    cas = k.ca_secret("cas", client_ca.cert_pem + CA("Stray").issue(client=True).key_pem)  # a key pasted in ca.crt
    ingress = k.ingress("shop", host=HOST, tls_secret="bundle", annotations={
        "portcullis.io/client-auth-secret": "cas", "portcullis.io/client-auth": "optional"})
    return [ingress, secret, cas, k.service("web"), k.endpoints("web", "127.0.0.1")], leaf.cert_pem, ca.cert_pem


def test_keep_blocks_drops_keys_and_blocks_that_hide_keys() -> None:
    key = "-----BEGIN PRIVATE KEY-----\nS0VZ\n-----END PRIVATE KEY-----\n"
    cert = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n"
    crl = "-----BEGIN X509 CRL-----\nQ1JM\n-----END X509 CRL-----\n"
    hidden = "-----BEGIN CERTIFICATE-----\n" + key + "-----END CERTIFICATE-----\n"
    kept, dropped = pem.keep_blocks(("junk\n" + cert + key + hidden + crl).encode(), pem.CERTIFICATE_LABELS)
    assert kept == cert.encode() and dropped == ("PRIVATE KEY", "CERTIFICATE", "PRIVATE KEY", "X509 CRL")
    kept, dropped = pem.keep_blocks((cert + crl + "-----BEGIN RSA PRIVATE KEY-----\nS0VZ\n").encode(), pem.CA_LABELS)
    assert kept == (cert + crl).encode() and dropped == ("RSA PRIVATE KEY",)


def test_render_warns_and_keeps_only_certificates() -> None:
    objects, leaf_pem, ca_pem = world(CA())
    inputs, problems = Inputs.from_objects(objects)
    snapshot, render_problems = render(inputs, RenderConfig())
    warnings = [p for p in problems + render_problems if p.reason == "SecretBlocksRemoved"]
    assert sorted((p.severity, p.message.split(" holds")[0]) for p in warnings) == [
        ("Warning", "Secret shop/bundle key tls.crt"), ("Warning", "Secret shop/cas key ca.crt")]
    assert all("PRIVATE KEY" in p.message for p in warnings)
    assert "PRIVATE KEY-----" not in snapshot.to_json(redact_keys=True)
    (cert,) = snapshot.certificates
    assert cert.cert_pem == leaf_pem + ca_pem and "PRIVATE KEY" not in cert.cert_pem
    assert "PRIVATE KEY" not in snapshot.ca_bundles[0].pem


def test_portcullis_render_prints_no_private_key(tmp_path: Path) -> None:
    objects, _, _ = world(CA())
    (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(objects))
    done = subprocess.run([sys.executable, "-m", "controller.cli", "render", "-f", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "PRIVATE KEY-----" not in done.stdout + done.stderr  # the warnings name the block type, never a block
    assert json.loads(done.stdout)["certificates"], done.stderr
    assert "SecretBlocksRemoved" in done.stdout + done.stderr


async def test_the_host_still_serves_its_certificate() -> None:
    ca = CA()
    objects, leaf_pem, _ = world(ca)
    inputs, _ = Inputs.from_objects(objects)
    snapshot, _ = render(inputs, RenderConfig())
    dp = DataPlane(DataPlaneConfig(bind="127.0.0.1", https_port=0, http_port=0, admin_port=0, admin_token=TOKEN))
    await dp.start()
    try:
        assert dp.apply(snapshot.canonical()) == []
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", dp.https_port, ssl=client_context(ca.cert_pem), server_hostname=HOST), 10)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert ssl.DER_cert_to_PEM_cert(der).split() == leaf_pem.split()
        writer.close()
    finally:
        await dp.stop(drain_timeout=0)
