"""Python in the image: the locked dependency wheels, the project's own wheel, and their installation.

Every wheel is pinned by version and sha256 (``requirements.lock`` for the image, ``build-tools.lock`` for the pip
and setuptools that install and build), chosen for one explicit target (CPython 3.11, manylinux up to glibc 2.36,
x86_64: Debian bookworm's) rather than for whatever machine builds, and cached by hash under
``~/.cache/portcullis/image/wheels``: a second build, or another machine, installs the same files. The tools run
under Debian's ``/usr/bin/python3.11`` (the interpreter the image runs), so the C extensions are compiled with the
flags and headers of that interpreter and pip's choices are made for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.image.oci import sha256_file

HOST_PYTHON = "/usr/bin/python3.11"
DIST_PACKAGES = "usr/local/lib/python3.11/dist-packages"
# The target, not the building machine: Debian bookworm's glibc is 2.36.
PLATFORMS: tuple[str, ...] = (*(f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)), "manylinux2014_x86_64")
TARGET: tuple[str, ...] = (*(arg for p in PLATFORMS for arg in ("--platform", p)),
                           "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")
# Inputs of the project wheel (what setuptools reads), copied to a fixed path before building; LICENSE is
# pyproject's `license-files`, carried in the wheel (setuptools warns, and will refuse, when it is missing).
PROJECT_FILES = ("pyproject.toml", "setup.py", "README.md", "LICENSE")
PROJECT_PACKAGES = ("controller", "dataplane")
EXTENSIONS = ("dataplane/http/_headparser", "dataplane/http2/_session")
SCRIPT = """#!/usr/bin/python3.11
# The portcullis console script (pyproject's [project.scripts]); the kernel runs this file, no shell involved.
import sys

from controller.cli import main

sys.exit(main())
"""

Log = Callable[[str], None]


@dataclass(frozen=True)
class Requirement:
    name: str
    version: str
    sha256: str

    def line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


def read_lock(path: Path) -> list[Requirement]:
    """``name==version --hash=sha256:...`` lines (continuations joined, comments skipped)."""
    text = path.read_text().replace("\\\n", " ")
    reqs = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            spec, *options = line.split()
            name, _, version = spec.partition("==")
            (sha,) = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=sha256:")]
            reqs.append(Requirement(name, version, sha))
    return reqs


def pip_env(tools: Path | None = None) -> dict[str, str]:
    """An environment where no user or machine pip configuration changes what pip does."""
    env = {"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir(), "LANG": "C.UTF-8", "PIP_CONFIG_FILE": os.devnull,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1", "PYTHONNOUSERSITE": "1"}
    if tools is not None:
        env["PYTHONPATH"] = str(tools)
    return env


def ensure(reqs: Sequence[Requirement], cache: Path, log: Log) -> list[Path]:
    """The locked wheel files, each at ``cache/<sha256>/<file name>``; missing ones downloaded by pip and checked."""
    missing = [r for r in reqs if not _cached(cache, r)]
    if missing:
        log(f"downloading {len(missing)} wheels")
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            lock = Path(tmp) / "missing.txt"
            lock.write_text("".join(r.line() + "\n" for r in missing))
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "--require-hashes", *TARGET, "--dest", tmp, "-r", str(lock)],
                           check=True, env={**pip_env(), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
            for name in os.listdir(tmp):
                if name.endswith(".whl"):
                    path = Path(tmp) / name
                    (cache / sha256_file(path)).mkdir(exist_ok=True)
                    path.rename(cache / sha256_file(path) / name)
    found = []
    for r in reqs:
        cached = _cached(cache, r)
        if cached is None:
            raise SystemExit(f"{r.name}=={r.version}: no wheel with the locked sha256 {r.sha256}")
        found.append(cached)
    return found


def _cached(cache: Path, req: Requirement) -> Path | None:
    directory = cache / req.sha256
    wheels = sorted(directory.glob("*.whl")) if directory.is_dir() else []
    return wheels[0] if wheels else None


def unpack_tools(wheels: Sequence[Path], dest: Path) -> Path:
    """pip, setuptools and wheel are pure-Python wheels: unzipped side by side they run from ``PYTHONPATH``."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(dest)
    return dest


def project_sources(repo: Path) -> list[str]:
    """The files the project wheel is built from (relative paths, sorted): they also key the image cache."""
    files = [f for f in PROJECT_FILES if (repo / f).exists()]
    for package in PROJECT_PACKAGES:
        for dirpath, dirnames, filenames in os.walk(repo / package):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.endswith(".egg-info"))
            files.extend((Path(dirpath) / f).relative_to(repo).as_posix() for f in filenames
                         if not f.endswith((".pyc", ".so")))
    return sorted(files)


def build_project(repo: Path, src: Path, out: Path, tools: Path, *, epoch: int, log: Log) -> Path:
    """The project's wheel, C extensions included and stripped, built from a copy of the sources at ``src``.

    ``src`` is a fixed path (the compiler records the directory it ran in), the build backend is called directly
    (PEP 517 ``build_wheel``) under Debian's python3.11 with the locked setuptools, and ``-s`` makes the linker
    drop symbols and debug information. ``setup.py`` marks the extensions optional, so their absence is checked.
    """
    log("building the portcullis wheel")
    for rel in project_sources(repo):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / rel, src / rel)
    out.mkdir(parents=True, exist_ok=True)
    env = {**pip_env(tools), "SOURCE_DATE_EPOCH": str(epoch), "LDFLAGS": "-s", "PYTHONHASHSEED": "0"}
    hook = "import sys, setuptools.build_meta as backend; print(backend.build_wheel(sys.argv[1]))"
    done = subprocess.run([HOST_PYTHON, "-c", hook, str(out)], cwd=src, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"building the portcullis wheel failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    wheel = out / done.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    for ext in EXTENSIONS:
        if not any(n.startswith(ext + ".cpython-311-") and n.endswith(".so") for n in names):
            raise SystemExit(f"the wheel lacks {ext} (compiler or libnghttp2-dev missing? make build-deps):\n"
                             f"{done.stderr[-4000:]}")
    return wheel


def install(root: Path, reqs: Sequence[Requirement], wheels: Sequence[Path], project: Path, tools: Path,
            work: Path) -> None:
    """pip-install the locked wheels and the project wheel into the tree's dist-packages (no .pyc: compiled later
    in the tree), then the console script, whose shebang names the image's interpreter."""
    house = work / "wheelhouse"
    house.mkdir()
    for wheel in [*wheels, project]:
        shutil.copyfile(wheel, house / wheel.name)
    name, version = project.name.split("-")[:2]
    lock = work / "install.txt"
    lock.write_text("".join(r.line() + "\n" for r in [*reqs, Requirement(name, version, sha256_file(project))]))
    target = root / DIST_PACKAGES
    subprocess.run([HOST_PYTHON, "-m", "pip", "install", "--quiet", "--root-user-action=ignore", "--target",
                    str(target), "--no-index", "--find-links", str(house), "--no-deps", "--require-hashes",
                    "--only-binary=:all:", "--no-compile", *TARGET, "--platform", "linux_x86_64", "-r", str(lock)],
                   check=True, env=pip_env(tools))
    shutil.rmtree(target / "bin", ignore_errors=True)  # the dependencies' console scripts, unused here
    script = root / "usr/local/bin/portcullis"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(SCRIPT)
    script.chmod(0o755)


def project_paths(root: Path) -> list[str]:
    """What the project wheel and its script put in the tree (from its RECORD): the application layer."""
    target = root / DIST_PACKAGES
    (record,) = target.glob("portcullis-*.dist-info/RECORD")
    tops = {line.split(",", 1)[0].split("/", 1)[0] for line in record.read_text().splitlines() if line}
    tops.discard("..")
    return sorted([f"{DIST_PACKAGES}/{top}" for top in tops] + ["usr/local/bin/portcullis"])
