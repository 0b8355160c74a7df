"""deploy/portcullis.yaml is the chart with default values, and scripts/make-push-secret supplies its one Secret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.chart.rendering import ROOT, Manifest, mounted_secret_files, render
from tests.chart.test_credentials import client_context, handshake, secret_files, server_context

PLAIN = ROOT / "deploy" / "portcullis.yaml"


def plain() -> Manifest:
    return Manifest([d for d in yaml.safe_load_all(PLAIN.read_text()) if d])


def test_plain_manifests_are_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "render-manifests"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_plain_manifests_match_the_chart_without_secrets_or_helm_labels() -> None:
    m = plain()
    assert m.objects[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "portcullis"}}
    assert m.of_kind("Secret") == []
    assert "helm.sh/chart" not in PLAIN.read_text()
    chart = render()
    expected = sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in chart.objects
                      if o["kind"] != "Secret")
    actual = sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in m.objects[1:])
    assert actual == expected
    assert m.workload("dataplane")["spec"]["template"]["spec"] == chart.workload("dataplane")["spec"]["template"][
        "spec"]


def test_make_push_secret_supplies_what_the_plain_manifests_mount(tmp_path: Path) -> None:
    result = subprocess.run([str(ROOT / "scripts" / "make-push-secret")], capture_output=True, text=True,
                            timeout=60, check=True)
    secret = yaml.safe_load(result.stdout)
    m = plain()
    wanted = {ref for w in m.workloads() for ref in mounted_secret_files(w).values()}
    assert wanted == {("portcullis-push", key) for key in ("token", "ca.crt", "tls.crt", "tls.key")}
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == ("portcullis-push", "portcullis")
    files = secret_files(secret, tmp_path)
    assert set(files) == {"token", "ca.crt", "tls.crt", "tls.key"}
    assert len(files["token"].read_text()) == 48
    handshake(server_context(files), client_context(files), "portcullis-dataplane")
