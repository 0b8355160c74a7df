"""Kubernetes manifests from files and folders, for ``portcullis render`` and ``portcullis local``.

The cluster path never comes through here (kopf hands the controller parsed objects); this is the
local path, so its one job is to turn whatever the user points at into plain object dicts, or to
say clearly which file is unreadable and why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import yaml

YAML_SUFFIXES = (".yaml", ".yml", ".json")
# libyaml's loader parses the same documents into the same objects about ten times faster than the pure-Python
# one (a 2,000-Ingress file: seconds of ``portcullis render`` otherwise); PyYAML built without libyaml lacks it.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(Exception):
    """Input that cannot be read at all (missing path, invalid YAML): exit status 2, no traceback."""


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Files as given, folders walked recursively for YAML/JSON files, in a stable order."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(YAML_SUFFIXES))
        elif os.path.exists(path):
            files.append(path)
        else:
            raise ManifestError(f"{path}: no such file or directory")
    return files


def load_paths(paths: Sequence[str]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in expand_paths(paths):
        objects.extend(load_file(path))
    return objects


def load_file(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from exc
    try:
        documents = list(yaml.load_all(text, Loader=_LOADER))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: invalid YAML: {exc}") from exc
    objects: list[dict[str, Any]] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ManifestError(f"{path}: document {index + 1} is not a mapping")
        objects.extend(_flatten(document))
    return objects


def _flatten(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``kind: List`` (what ``kubectl get -o yaml`` prints) holds its objects under ``items``."""
    if isinstance(document.get("kind"), str) and document["kind"].endswith("List") and "items" in document:
        for item in document.get("items") or ():
            if isinstance(item, dict):
                yield from _flatten(item)
    else:
        yield document
