"""Gateway API in the e2e tier: the standard-channel CRDs of the release the wrapper module ``e2e/gateway/`` pins,
installed from that module's ``config/crd/standard/`` (upstream's files, not copied here, so a version bump is one
line of go.mod) and the echo-basic backend the conformance suite runs (built into an image by deploy/image/build.py).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kubernetes.client.exceptions import ApiException

from e2e.kube import Kube, documents, wait_for

E2E = Path(__file__).resolve().parent
MODULE_DIR = E2E / "gateway"
GATEWAY_API = "sigs.k8s.io/gateway-api"
VERSION = "v1.6.3"  # must match go.mod; module_dir() checks what Go resolves
GROUP = "gateway.networking.k8s.io"
CRD_API = "apiextensions.k8s.io/v1"


def module_dir() -> Path:
    """The module's directory in the Go module cache, downloaded (and checked against go.sum) when missing."""
    done = subprocess.run(["go", "mod", "download", "-json", f"{GATEWAY_API}@{VERSION}"], cwd=MODULE_DIR,
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "GO111MODULE": "on"})
    info = json.loads(done.stdout) if done.stdout.strip() else {}
    if done.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {GATEWAY_API}@{VERSION} failed: {info.get('Error') or done.stderr}")
    return Path(info["Dir"])


def standard_manifests() -> list[Path]:
    """Every file of the standard channel: the CRDs and the ValidatingAdmissionPolicy that refuses downgrades."""
    found = sorted((module_dir() / "config" / "crd" / "standard").glob("*.yaml"))
    if not found:
        raise RuntimeError(f"no manifests in {GATEWAY_API}@{VERSION}'s config/crd/standard")
    return found


def established(kube: Kube, name: str) -> bool:
    crd = kube.get(CRD_API, "CustomResourceDefinition", name)
    conditions = (crd.status.conditions or []) if crd is not None and crd.status else []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@dataclass(frozen=True)
class Installed:
    """What the API server made of the standard channel: CRD names Established, and CRDs it refused (name: its
    message). Kubernetes 1.30 refuses TLSRoute: its CEL rule ``isIP()`` compiles only from 1.31."""

    established: tuple[str, ...]
    refused: dict[str, str]


def install_standard_crds(kube: Kube, timeout: float = 60) -> Installed:
    """Apply the standard channel server-side (idempotent: another session may have installed it already) and wait
    until every CRD it accepted is Established, so a test's first object of a new kind is not refused.

    A CRD the API server refuses as invalid (422) is recorded, not raised: the rest still installs, and the caller
    decides whether that API server may refuse it (see ``Installed``); anything else fails here."""
    accepted: list[str] = []
    refused: dict[str, str] = {}
    for path in standard_manifests():
        for doc in documents(path.read_text()):
            name = doc["metadata"]["name"]
            try:
                kube.apply(doc)
            except ApiException as exc:
                if exc.status != 422 or doc["kind"] != "CustomResourceDefinition":
                    raise
                refused[name] = str(json.loads(exc.body or "{}").get("message", exc.body))
                continue
            if doc["kind"] == "CustomResourceDefinition":
                accepted.append(name)
    for name in accepted:
        wait_for(f"CRD {name} Established", functools.partial(established, kube, name), timeout)
    kube.dynamic.resources.invalidate_cache()  # discovery learned nothing of the new kinds yet
    return Installed(tuple(accepted), refused)
