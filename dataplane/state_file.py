"""The last applied snapshot on a pod-local volume (``--state-file``), so a restarted process serves at once.

Why: a data-plane container that restarts (crash, OOM kill, liveness failure) while no controller can push
(apiserver down, controllers restarting) would otherwise answer 404 to every host and fail ``/readyz`` for the
whole outage. The file holds what this pod served a moment ago, nothing older.

The file holds private keys, so: the chart mounts it on an ``emptyDir`` with ``medium: Memory`` (tmpfs: never
on a node's disk, gone with the pod, readable only by this pod's containers); it is created with mode 0600 and
replaced atomically (write a temporary file, ``os.replace``), so a crash mid-write leaves the previous one.
A file that does not parse or whose checksum does not match is ignored (and said so): the data plane then
starts empty, as it would without one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from dataplane.gc_pause import parse_snapshot
from dataplane.snapshot import Snapshot, SnapshotFormatError

log = logging.getLogger(__name__)


def save(path: str, snapshot: Snapshot) -> None:
    """Atomically replace ``path`` with ``snapshot`` (mode 0600). Errors are logged, never raised: failing to
    keep a copy must not fail a push that was applied."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(snapshot.to_json().encode())
        os.chmod(temporary, 0o600)  # O_CREAT's mode only applies to a new file
        os.replace(temporary, target)
    except OSError as exc:
        log.warning("could not keep the snapshot in the state file", extra={"path": path, "error": str(exc)})
        with contextlib.suppress(OSError):
            temporary.unlink()


def load(path: str) -> Snapshot | None:
    """The snapshot kept in ``path``, or None (no file, or one that is unreadable, malformed or tampered with)."""
    try:
        body = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("state file unreadable; starting empty", extra={"path": path, "error": str(exc)})
        return None
    try:
        snapshot = parse_snapshot(body)
    except (SnapshotFormatError, RecursionError) as exc:
        log.warning("state file is not a snapshot; starting empty", extra={"path": path, "error": str(exc)[:200]})
        return None
    return snapshot
