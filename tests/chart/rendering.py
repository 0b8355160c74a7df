"""Render the Helm chart with the real Helm engine (helm-python-sdk embeds Helm's Go library) into objects.

Tests assert on parsed objects, not on YAML text, so a template can be reformatted freely while every
property the tests name stays pinned.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "portcullis"
RELEASE = "portcullis"
NAMESPACE = "portcullis"

Obj = dict[str, Any]


@functools.cache
def chart() -> helm_python.Chart:
    """One loaded chart per test session (loading parses every template)."""
    return helm_python.Chart.load(CHART_DIR)


def scenarios() -> dict[str, Obj]:
    """The values files under ci/ (the scenarios `helm lint`/chart-testing also run), by file stem."""
    return {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted((CHART_DIR / "ci").glob("*.yaml"))}


def all_value_sets() -> dict[str, Obj]:
    return {"default": {}, **scenarios()}


def documents(rendered: Mapping[str, str]) -> list[Obj]:
    """Every non-empty YAML document of a render, in template-path order (Helm's own install order differs)."""
    out: list[Obj] = []
    for path in sorted(rendered):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                out.append(doc)
    return out


@dataclass(frozen=True)
class Manifest:
    objects: list[Obj]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name
                 and (namespace is None or o["metadata"].get("namespace") == namespace)]
        assert len(found) == 1, f"expected one {kind} {name!r} (namespace {namespace}), found {len(found)}"
        return found[0]

    def maybe(self, kind: str, name: str) -> Obj | None:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found[0] if found else None

    def workloads(self) -> list[Obj]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "DaemonSet")]

    def workload(self, component: str) -> Obj:
        found = [w for w in self.workloads()
                 if w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        assert len(found) == 1, f"expected one {component} workload, found {len(found)}"
        return found[0]


def render(values: Obj | None = None, *, namespace: str = NAMESPACE, name: str = RELEASE) -> Manifest:
    rendered = chart().render(values or {}, name=name, namespace=namespace, is_install=True)
    return Manifest(documents(rendered))


def container(workload: Obj) -> Obj:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def pod_spec(workload: Obj) -> Obj:
    return dict(workload["spec"]["template"]["spec"])


def mounted_secret_files(workload: Obj) -> dict[str, tuple[str, str]]:
    """Path inside the container -> (Secret name, key), for every file projected from a Secret volume."""
    spec = pod_spec(workload)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files: dict[str, tuple[str, str]] = {}
    for mount in container(workload).get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if not secret:
            continue
        for item in secret["items"]:
            files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


def walk(node: Any) -> Iterator[Any]:
    """Every dict and list node of a parsed object, depth first."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
