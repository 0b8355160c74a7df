"""The Gateway API conformance suite's echo-basic backend, built from source instead of pulled (no registry is
reachable from the e2e node).

The source is the ``echo-basic`` package of ``sigs.k8s.io/gateway-api/conformance``, pinned with the rest of the suite
by the wrapper module ``e2e/gateway/`` (go.mod/go.sum, checked by Go against its checksum database); it is compiled
as one static, stripped binary, so the image holds that file and nothing else.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "e2e" / "gateway"
MODULE_FILES = ("e2e/gateway/go.mod", "e2e/gateway/go.sum", "e2e/gateway/tools.go")
PACKAGE = "sigs.k8s.io/gateway-api/conformance/echo-basic"
SOURCE_VERSION = "v1.6.3"
# The references the suite's own manifests (conformance/base/manifests.yaml of v1.6.3) run the backend under, without
# imagePullPolicy (so IfNotPresent): imported under exactly these, its unmodified manifests run on the node. The first
# is the image's name; the others are aliases of the same manifest. TCPRoute/UDPRoute tests (not in the HTTP, TLS or
# GRPC profiles) use v1.6.0-dev.2, and the mesh profile echo-advanced, neither built here.
NAMES = ("registry.k8s.io/gateway-api/echo-basic:v1.5.1", "registry.k8s.io/gateway-api/echo-basic:v1.6.0-dev.3")
# HTTP_PORT, H2C_PORT, HTTPS_PORT (the last only with TLS_SERVER_CERT and TLS_SERVER_PRIVKEY set).
PORTS = (3000, 3001, 8443)
DESCRIPTION = f"The Gateway API conformance backend: {PACKAGE} of {SOURCE_VERSION}, static"


def go_version() -> str:
    """The compiler is an input of the binary, so of the cache key."""
    return subprocess.run(["go", "version"], check=True, capture_output=True, text=True, cwd=MODULE).stdout.strip()


def compile_echo_basic(work: Path) -> Path:
    """``echo-basic``: ``CGO_ENABLED=0 go build -trimpath -ldflags=-s -w`` with go.sum as committed (``-mod=readonly``:
    a module missing from it fails the build instead of being added)."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "echo-basic"
    env = {**os.environ, "CGO_ENABLED": "0", "GO111MODULE": "on", "GOFLAGS": "-mod=readonly"}
    subprocess.run(["go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", str(out), PACKAGE],
                   cwd=MODULE, env=env, check=True)
    return out
