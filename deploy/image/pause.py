"""The pod sandbox ("pause") image for the e2e cluster, built from Kubernetes' own source instead of pulled.

``pause.c`` comes from the ``k8s.io/kubernetes`` Go module the e2e cluster is built from (the Go module cache, whose
content Go checks against its checksum database) and is pinned here by sha256 as well; it is compiled as one static,
stripped binary, with the flags of Kubernetes' ``build/pause/Makefile``, so the image holds that file and nothing else.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

KUBERNETES = "k8s.io/kubernetes@v1.30.14"
SOURCE = "build/pause/linux/pause.c"
SHA256 = "14a3fe21ab5f8e62937a2b453e76f3b94b0d3c7c04c3d09bc37195f54c1695ea"
TAG = "3.9"  # the pause version Kubernetes 1.30 ships (build/pause/Makefile TAG)
DESCRIPTION = f"The pod sandbox of the e2e cluster: {SOURCE} of {KUBERNETES}, static"


def source() -> bytes:
    """``pause.c`` from the module cache, downloading the module (outside any go.mod) when it is not there."""
    modcache = subprocess.run(["go", "env", "GOMODCACHE"], check=True, capture_output=True, text=True).stdout.strip()
    path = Path(modcache) / KUBERNETES / SOURCE
    if not path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["go", "mod", "download", KUBERNETES], cwd=tmp, check=True,
                           env={**os.environ, "GO111MODULE": "on", "GOFLAGS": "-mod=mod"})
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise SystemExit(f"{path}: sha256 {hashlib.sha256(data).hexdigest()}, pinned {SHA256}")
    return data


def compile_pause(work: Path) -> Path:
    """``/pause``: ``gcc -Os -static`` in a fixed directory (relative source name), stripped."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "pause.c").write_bytes(source())
    subprocess.run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{TAG}", "-o", "pause", "pause.c"],
                   cwd=work, check=True)
    subprocess.run(["strip", "--strip-all", "pause"], cwd=work, check=True)
    return work / "pause"
