"""Talking to the cluster under test with the official Python client: apply YAML (server-side apply, so a test can
re-apply a changed object), delete, and wait for a condition with a bound on time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

FIELD_MANAGER = "portcullis-e2e"
T = TypeVar("T")


def api_client(kubeconfig: Path) -> client.ApiClient:
    """A client bound to one kubeconfig file (never the process-wide default configuration)."""
    made: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig))
    return made


def documents(source: str | Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """YAML text (multi-document, kind: List) or already-parsed objects, as a flat list of dicts."""
    raw: Iterable[Any]
    if isinstance(source, str):
        raw = yaml.safe_load_all(source)
    elif isinstance(source, Mapping):
        raw = [source]
    else:
        raw = source
    out: list[dict[str, Any]] = []
    for doc in raw:
        if not doc:
            continue
        if doc.get("kind") == "List":
            out.extend(documents(doc.get("items") or []))
        else:
            out.append(dict(doc))
    return out


class Kube:
    """The few verbs the e2e tests need, over the dynamic client (any kind, discovery cached)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.dynamic = DynamicClient(api)  # type: ignore[no-untyped-call]

    def resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def apply(self, source: str | Mapping[str, Any] | Iterable[Mapping[str, Any]],
              namespace: str | None = None, dry_run: bool = False) -> list[Any]:
        """Server-side apply every document; ``namespace`` fills in namespaced objects that name none.
        ``dry_run``: full admission (webhooks included), nothing stored."""
        applied = []
        for doc in documents(source):
            res = self.resource(doc["apiVersion"], doc["kind"])
            meta = doc.setdefault("metadata", {})
            if res.namespaced and not meta.get("namespace"):
                if namespace is None:
                    raise ValueError(f"{doc['kind']}/{meta.get('name')} needs a namespace")
                meta["namespace"] = namespace
            applied.append(res.server_side_apply(body=doc, name=meta["name"], namespace=meta.get("namespace"),
                                                 field_manager=FIELD_MANAGER, force_conflicts=True,
                                                 dry_run="All" if dry_run else None))
        return applied

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Any | None:
        try:
            return self.resource(api_version, kind).get(name=name, namespace=namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        try:
            self.resource(api_version, kind).delete(name=name, namespace=namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def delete_all(self, source: str | Mapping[str, Any] | Iterable[Mapping[str, Any]],
                   namespace: str | None = None) -> None:
        for doc in documents(source):
            meta = doc.get("metadata", {})
            self.delete(doc["apiVersion"], doc["kind"], meta["name"], meta.get("namespace") or namespace)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy, at most ``timeout`` seconds; the failure names ``what``
    and the last exception the probe raised, so a timeout explains itself."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # reported below if the wait times out
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"{what}: not within {timeout}s{detail}")
        time.sleep(interval)


@dataclass(frozen=True)
class Cluster:
    """Where the tests run. ``local_rig``: netns pods exist and processes on this host are part of the cluster."""

    kubeconfig: Path
    kube: Kube
    local_rig: bool
    state_dir: Path | None

    def log_tail(self, component: str = "kube-apiserver", lines: int = 40) -> str:
        if self.state_dir is None:
            return "(external cluster: no rig logs)"
        path = self.state_dir / "logs" / f"{component}.log"
        if not path.exists():
            return f"(no log at {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
