"""The project builds the external tools its tests drive: scripts/install-h2spec (run by `make system-deps`).

Real runs of the script: without Go it must stop with the exact command it needed; with Go it builds a working
h2spec into the directory given (from the module cache `make system-deps` filled, so no network on reruns), and a
rerun is a no-op.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.integration.processes import ROOT

SCRIPT = ROOT / "scripts" / "install-h2spec"


def _path_without(*tools: str) -> str:
    """The PATH minus every directory holding one of ``tools`` (so the script cannot find them)."""
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any((Path(d) / tool).exists() for tool in tools)]
    return os.pathsep.join(keep)


def _run(bin_dir: Path, path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path, "PORTCULLIS_BIN_DIR": str(bin_dir)}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)


def test_without_go_fails_loudly_with_the_command(tmp_path: Path) -> None:
    res = _run(tmp_path / "bin", _path_without("go", "h2spec"))
    assert res.returncode == 1, res
    assert "'go' is not on the PATH" in res.stderr, res.stderr
    assert "go install github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible" in res.stderr, res.stderr
    assert not (tmp_path / "bin" / "h2spec").exists()


def test_builds_a_working_h2spec_and_a_rerun_is_a_no_op(tmp_path: Path) -> None:
    go = shutil.which("go")
    assert go is not None, "Go is needed to build h2spec (see scripts/install-h2spec)"
    path = os.pathsep.join([str(Path(go).parent), _path_without("h2spec")])
    bin_dir = tmp_path / "bin"
    first = _run(bin_dir, path)
    assert first.returncode == 0, first.stderr
    h2spec = bin_dir / "h2spec"
    assert os.access(h2spec, os.X_OK)
    help_text = subprocess.run([str(h2spec), "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "Conformance testing tool for HTTP/2" in help_text
    built = h2spec.stat().st_mtime_ns
    again = _run(bin_dir, path)
    assert again.returncode == 0, again.stderr
    assert h2spec.stat().st_mtime_ns == built


def test_an_h2spec_on_the_path_is_used_as_is(tmp_path: Path) -> None:
    on_path = tmp_path / "path"
    on_path.mkdir()
    fake = on_path / "h2spec"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    res = _run(tmp_path / "bin", os.pathsep.join([str(on_path), _path_without("go", "h2spec")]))
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "bin").exists()
