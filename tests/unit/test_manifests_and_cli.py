"""Reading manifests, projecting odd objects, and the ``portcullis render`` command's contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.manifests import ManifestError, load_paths
from controller.model import Inputs, project
from tests.unit import objects as k


def test_multi_document_list_kinds_and_folders(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([k.service("web"), None, k.ingress("one")]))
    (tmp_path / "sub" / "b.yml").write_text(yaml.safe_dump({"kind": "List", "items": [k.ingress("two"),
                                                                                   k.endpoints("web", "10.0.0.1")]}))
    (tmp_path / "notes.txt").write_text("not yaml: [")
    kinds = [(o["kind"], o["metadata"]["name"]) for o in load_paths([str(tmp_path)])]
    assert kinds == [("Service", "web"), ("Ingress", "one"), ("Ingress", "two"), ("EndpointSlice", "web-abc")]


@pytest.mark.parametrize(("content", "message"), [("a: [", "invalid YAML"), ("- 1\n- 2", "not a mapping")])
def test_unreadable_manifests_raise_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ManifestError, match=message):
        load_paths([str(path)])
    with pytest.raises(ManifestError, match="no such file"):
        load_paths([str(tmp_path / "missing.yaml")])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["Ingress", "Secret", "Service", "EndpointSlice", "IngressClass"]),
       metadata=json_values, spec=json_values, extra=json_values)
def test_projection_never_raises_on_odd_objects(kind: str, metadata: Any, spec: Any, extra: Any) -> None:
    obj = {"kind": kind, "metadata": metadata, "spec": spec, "data": extra, "endpoints": extra, "ports": extra}
    view = project(obj)
    assert view is not None
    Inputs.from_objects([obj])


def test_malformed_ingress_becomes_problems_not_exceptions() -> None:
    bad = k.ingress("shop")
    bad["spec"]["rules"][0]["http"]["paths"][0]["backend"] = {"service": {"name": "web", "port": {}}}
    bad["spec"]["tls"] = "yes"
    inputs, problems = Inputs.from_objects([bad, {"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "%%"}}])
    fields = {p.field for p in problems}
    assert {"spec.rules[0].http.paths[0].backend.service.port", "spec.tls", "data[k]"} <= fields
    assert len(inputs.ingresses) == 1 and len(inputs.secrets) == 1


def _render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", "render", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_render_command_prints_redacted_snapshot_and_exit_codes(tmp_path: Path) -> None:
    ok = _render("-f", "deploy/examples")
    assert ok.returncode == 0, ok.stderr
    snapshot = json.loads(ok.stdout)
    assert snapshot["certificates"] and all(c["key_pem"].startswith("<redacted sha256:")
                                            for c in snapshot["certificates"])
    assert "PRIVATE KEY" not in ok.stdout and ok.stderr == ""

    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(k.ingress("shop", annotations={"portcullis.io/tls-mode": "sideways"})))
    failed = _render("-f", str(broken))
    assert failed.returncode == 1
    assert "Error: Ingress shop/shop metadata.annotations[portcullis.io/tls-mode]" in failed.stderr
    assert "'sideways'" in failed.stderr

    (tmp_path / "unreadable.yaml").write_text("a: [")
    unreadable = _render("-f", str(tmp_path / "unreadable.yaml"))
    assert unreadable.returncode == 2 and "invalid YAML" in unreadable.stderr and "Traceback" not in unreadable.stderr


def test_render_annotations_table_lists_every_contract_annotation() -> None:
    table = _render("--annotations").stdout
    for name in ("tls-mode", "insecure-policy", "hsts", "backend-ca-secret", "backend-server-name", "backend-verify",
                 "backend-client-secret", "client-auth-secret", "client-auth", "client-cert-headers",
                 "proxy-protocol", "tls-min-version", "load-balance", "connect-timeout", "read-timeout"):
        assert f"`portcullis.io/{name}`" in table
    assert "nginx.ingress.kubernetes.io/auth-tls-pass-certificate-to-upstream" in table
