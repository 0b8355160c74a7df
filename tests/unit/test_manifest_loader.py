"""Manifests are parsed by libyaml when PyYAML has it, into exactly what the pure-Python safe loader gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller import manifests
from controller.manifests import ManifestError, load_file

MANIFEST = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: app
  namespace: team
  creationTimestamp: 2026-01-01T00:00:00Z
  labels: &labels {app: web, tier: "1"}
  annotations:
    portcullis.io/limit-rps: "5"
    portcullis.io/read-timeout: 30
    nginx.ingress.kubernetes.io/ssl-redirect: false
    note: |
      two
      lines
spec:
  selector: *labels
  rules:
  - host: app.example.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
# an empty document
---
kind: List
items:
- {kind: Service, metadata: {name: web, namespace: team}, spec: {ports: [{port: 0x50}]}}
- {kind: Secret, data: {tls.crt: ~, ratio: 1.5e3, octal: 0o17, yes_is_text: yes, date: 2026-02-03}}
"""


def test_libyaml_loader_is_used_when_present() -> None:
    assert manifests._LOADER is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


def test_same_objects_as_the_pure_python_safe_loader(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(MANIFEST)
    pure = [d for d in yaml.load_all(MANIFEST, Loader=yaml.SafeLoader) if d is not None]
    flat = [pure[0], *pure[1]["items"]]
    assert repr(load_file(str(path))) == repr(flat)  # repr: True and 1, 80 and 80.0 would compare equal


@pytest.mark.parametrize("text", ["a: [1, 2", "a: b: c", "!!python/object:os.system {}"])
def test_invalid_or_unsafe_yaml_is_a_manifest_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError, match=r"bad\.yaml: invalid YAML"):
        load_file(str(path))
