"""`helm lint` and the strict values schema: typos and wrong types fail the install with a message that names them."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python
import pytest
import yaml

from tests.chart.rendering import CHART_DIR, ROOT, all_value_sets, chart, render

WARNING = 2


@pytest.mark.parametrize("scenario", sorted(all_value_sets()))
def test_lint_is_clean_in_strict_mode(scenario: str) -> None:
    values = all_value_sets()[scenario]
    report = helm_python.lint(CHART_DIR, values, strict=True, namespace="portcullis", kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"controler": {"replicas": 2}}, "additional properties 'controler' not allowed"),
        ({"dataplane": {"replica": 3}}, "additional properties 'replica' not allowed"),
        ({"dataplane": {"service": {"extrnalTrafficPolicy": "Local"}}},
         "additional properties 'extrnalTrafficPolicy' not allowed"),
        ({"dataplane": {"replicas": "2"}}, "at '/dataplane/replicas': got string, want integer"),
        ({"ingressClass": {"default": "yes"}}, "at '/ingressClass/default': got string, want boolean"),
        ({"watchNamespaces": "team-a"}, "at '/watchNamespaces': got string, want array"),
        ({"dataplane": {"kind": "StatefulSet"}}, "at '/dataplane/kind'"),
        ({"dataplane": {"service": {"type": "External"}}}, "at '/dataplane/service/type'"),
        ({"dataplane": {"service": {"ports": {"https": 70000}}}}, "at '/dataplane/service/ports/https'"),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
        ({"defaultCertificate": "no-namespace"}, "at '/defaultCertificate'"),
        ({"controller": {"resources": {"limits": {"gpu": 1}}}}, "additional properties 'gpu' not allowed"),
        ({"dataplane": {"workers": 257}}, "at '/dataplane/workers'"),
    ],
)
def test_schema_rejects_with_the_offending_path(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as err:
        render(values)
    assert "values don't meet the specifications of the schema" in str(err.value)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"watchNamespaces": ["team-a"], "defaultCertificate": "certs/wild"},
         'defaultCertificate "certs/wild" is in namespace "certs", which the controller does not watch'),
        ({"dataplane": {"kind": "DaemonSet", "autoscaling": {"enabled": True}}},
         "dataplane.autoscaling.enabled needs dataplane.kind Deployment"),
        ({"controller": {"replicas": 2, "leaderElection": {"enabled": False}}},
         "controller.replicas > 1 needs controller.leaderElection.enabled"),
        ({"dataplane": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}}},
         "minReplicas is larger than maxReplicas"),
    ],
)
def test_combinations_the_controller_cannot_honour_fail_clearly(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as err:
        render(values)
    assert fragment in str(err.value)


def _object_schemas(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((path or "/", node))
        for key, value in node.items():
            found.extend(_object_schemas(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_object_schemas(value, f"{path}/{i}"))
    return found


def test_every_object_in_the_schema_is_closed() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert chart().schema == schema
    objects = _object_schemas(schema)
    assert len(objects) > 20
    assert [path for path, node in objects if node.get("additionalProperties") is not False] == []


def _leaf_keys(values: Any, prefix: str = "") -> list[str]:
    if isinstance(values, dict) and values:
        keys: list[str] = []
        for key, value in values.items():
            keys.extend(_leaf_keys(value, f"{prefix}.{key}" if prefix else key))
        return keys
    return [prefix]


def test_defaults_validate_and_every_value_is_documented() -> None:
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    chart().validate_schema(defaults)
    doc = (ROOT / "docs" / "helm.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", doc, re.MULTILINE))
    # Free-form maps (resources, nodeSelector, ...) are documented by their parent key.
    missing = [k for k in _leaf_keys(defaults) if k not in documented
               and not any(k.startswith(d + ".") for d in documented)]
    assert missing == []
    stale = [k for k in documented if k not in _leaf_keys(defaults)
             and not any(leaf.startswith(k + ".") for leaf in _leaf_keys(defaults))]
    assert stale == []
