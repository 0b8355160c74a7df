"""The rig's real node (e2e/cluster/node-up: containerd, kubelet, kube-proxy, kube-scheduler) and the images it runs,
built here by deploy/image/build.py (no registry is reachable) and imported into the node's containerd.

A session that needs pods of real images asks for the ``node`` fixture (e2e/conftest.py); the node is torn down
with the rig (e2e/cluster/down runs node-down)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.image.build import BuiltImage, build

E2E = Path(__file__).resolve().parent
NODE_UP = E2E / "cluster" / "node-up"  # node-down runs with the rig's down (e2e/cluster/down)
IMAGES = ("pause", "portcullis", "e2e-backend", "echo-basic")


class NodeError(RuntimeError):
    """The node could not be brought up; the message carries the failing component's log tail."""


@dataclass(frozen=True)
class Node:
    name: str
    pod_cidr: str
    images: dict[str, BuiltImage]
    started: bool
    seconds_to_ready: float
    state_dir: Path

    @property
    def portcullis_image(self) -> BuiltImage:
        return self.images["portcullis"]

    @property
    def backend_image(self) -> BuiltImage:
        return self.images["e2e-backend"]

    def log_tail(self, component: str, lines: int = 40) -> str:
        path = self.state_dir / "logs" / f"{component}.log"
        if not path.exists():
            return f"(no log at {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def build_images() -> dict[str, BuiltImage]:
    """Every image the node runs, from the one recipe users get too (cached by the hash of its inputs)."""
    return {kind: build(kind, None) for kind in IMAGES}


def node_up(state_dir: Path, images: dict[str, BuiltImage]) -> Node:
    started = time.monotonic()
    archives = [str(images[kind].archive) for kind in IMAGES]
    try:
        done = subprocess.run([str(NODE_UP), *archives], capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NodeError(f"e2e/cluster/node-up did not finish in {exc.timeout}s:\n{exc.stderr!s}") from None
    if done.returncode != 0:
        raise NodeError(f"e2e/cluster/node-up failed (exit {done.returncode}):\n{done.stderr}")
    fields = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return Node(fields["NODE_NAME"], fields["POD_CIDR"], images, fields.get("NODE") == "started",
                time.monotonic() - started, state_dir)
