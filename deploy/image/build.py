"""Build a Portcullis image as one OCI archive, without Docker or any daemon: ``make image`` and the e2e tier run this.

    python deploy/image/build.py {portcullis,e2e-backend,pause,echo-basic} [--out FILE]

prints ``NAME=``, ``DIGEST=`` (the manifest digest a registry shows), ``SIZE=`` (bytes of the archive) and
``ARCHIVE=`` lines on stdout; progress goes to stderr. The archive loads with ``docker load -i``, ``podman load -i``,
``ctr -n k8s.io images import`` and ``kind load image-archive``, and ``skopeo copy oci-archive:FILE docker://...``
pushes it.

Images are functions of their inputs (the lock files, the pinned Debian packages, the project's sources, this
builder, the host compiler and headers that compile the C extensions): built twice, they have the same digest. An
archive built from identical inputs is reused from ``~/.cache/portcullis/images`` instead of built again. Builds
run as root (``chroot`` into the tree to compile .pyc files and prove every import works with the image's own
interpreter; without root, a user namespace) and one at a time (the tree lives at a fixed path, see ``WORK``).

Layers: Debian (shared by both Python images), the locked dependencies, the application (small, changes with
every commit), and for ``e2e-backend`` the e2e backend's sources; ``pause`` and ``echo-basic`` (the Gateway API
conformance backend, Go, from ``e2e/gateway/``) are one static binary each.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.image import echo_basic, oci, pause, rootfs, wheels

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path.home() / ".cache/portcullis"
# Fixed, not a fresh temporary directory: the compiler records the directory it builds in, and a path that changed
# per build would change the extensions' bytes. The lock beside it makes concurrent builds take turns.
WORK = Path("/tmp/portcullis-image-build")
KINDS = ("portcullis", "e2e-backend", "pause", "echo-basic")
FALLBACK_EPOCH = 315532800  # 1980-01-01, when neither SOURCE_DATE_EPOCH nor git says otherwise
# https, http, admin (push API, /readyz, /metrics) of the data plane; /healthz of the controller.
PORTS = (8443, 8080, 9901, 8081)
ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE=1",
       "PYTHONUNBUFFERED=1")
USER = f"{rootfs.NONROOT}:{rootfs.NONROOT}"  # numeric, so the kubelet can verify runAsNonRoot without a lookup
E2E_FILES = ("e2e/__init__.py", "e2e/backend.py", "examples/__init__.py", "examples/backends.py")
E2E_HOME = "opt/e2e"
PYTHON_DIRS = ("/usr/lib/python3.11", f"/{wheels.DIST_PACKAGES}")
HOST_PACKAGES = ("gcc-12", "libc6-dev", "python3.11-dev", "libnghttp2-dev")  # what compiles into the image
# Run as the image's user with the image's interpreter: every module of both packages imports (so no library,
# standard module or .pyc is missing), the C extensions load, libssl is reachable through ctypes, the CA bundle is
# where OpenSSL looks.
IMPORT_CHECK = """
import importlib, os, pkgutil, ssl, sys
names = ["dataplane.http._headparser", "dataplane.http2._session", "kopf", "kubernetes", "cryptography.x509",
         "aiohttp", "prometheus_client", "uvloop", "yaml", "h2.connection"]
for package in ("controller", "dataplane"):
    names += [m.name for m in pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")]
for name in names:
    importlib.import_module(name)
from dataplane import openssl
assert openssl.set_verify_depth(ssl.create_default_context(), 4), "libssl through ctypes"
assert os.path.exists(ssl.get_default_verify_paths().cafile), "CA bundle"
no_pyc = [n for n, m in sys.modules.items() if getattr(m, "__cached__", None) and not os.path.exists(m.__cached__)]
assert not no_pyc, no_pyc
print(len(names), "modules")
"""


@dataclass(frozen=True)
class BuiltImage:
    name: str
    digest: str
    size: int
    archive: Path


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def image_name(kind: str) -> str:
    """The full reference the archive carries; the chart's default ``portcullis:<appVersion>`` means the first."""
    return {"portcullis": f"docker.io/library/portcullis:{version()}",
            "e2e-backend": f"docker.io/library/portcullis-e2e-backend:{version()}",
            "pause": f"portcullis.local/pause:{pause.TAG}",
            "echo-basic": echo_basic.NAMES[0]}[kind]


def image_aliases(kind: str) -> tuple[str, ...]:
    """More references the same image is imported under (the conformance manifests name echo-basic twice)."""
    return echo_basic.NAMES[1:] if kind == "echo-basic" else ()


def labels(title: str, *, image_version: str = "", description: str = "") -> dict[str, str]:
    # No revision label: the image would change with every commit, even one that touches nothing it holds.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {"org.opencontainers.image.title": title,
            "org.opencontainers.image.version": image_version or version(),
            "org.opencontainers.image.description": description or project["description"],
            # pyproject's `license` is an SPDX expression (PEP 639), which is what this label holds.
            "org.opencontainers.image.licenses": project["license"]}


def image_config(kind: str) -> oci.ImageConfig:
    """The runtime configuration of each image (the chart's expectations are pinned by tests/chart/test_image.py)."""
    if kind == "portcullis":
        return oci.ImageConfig(entrypoint=["portcullis"], cmd=["dataplane"], user=USER, env=ENV, working_dir="/tmp",
                               exposed_ports=PORTS, labels=labels("portcullis"))
    if kind == "e2e-backend":
        return oci.ImageConfig(entrypoint=["python3.11", "-m", "e2e.backend"], user=USER,
                               env=(*ENV, f"PYTHONPATH=/{E2E_HOME}"), working_dir="/tmp", exposed_ports=(8080,),
                               labels=labels("portcullis-e2e-backend",
                                             description="The e2e suite's echo backend (python -m e2e.backend)"))
    if kind == "pause":
        return oci.ImageConfig(entrypoint=["/pause"], user="65535:65535", env=ENV[:1], working_dir="/",
                               labels=labels("pause", image_version=pause.TAG, description=pause.DESCRIPTION))
    if kind == "echo-basic":
        return oci.ImageConfig(entrypoint=["/echo-basic"], user=USER, env=ENV[:1], working_dir="/",
                               exposed_ports=echo_basic.PORTS,
                               labels=labels("echo-basic", image_version=echo_basic.SOURCE_VERSION,
                                             description=echo_basic.DESCRIPTION))
    raise ValueError(f"unknown image {kind!r}; one of {', '.join(KINDS)}")


def input_files(kind: str) -> list[str]:
    """Every file of the repository an image is made from (relative paths)."""
    if kind == "pause":
        return [(HERE / f).relative_to(REPO).as_posix() for f in ("build.py", "oci.py", "pause.py")]
    if kind == "echo-basic":
        builder = [(HERE / f).relative_to(REPO).as_posix() for f in ("build.py", "oci.py", "echo_basic.py")]
        return builder + list(echo_basic.MODULE_FILES)
    builder = sorted(p.relative_to(REPO).as_posix() for p in HERE.iterdir()
                     if p.is_file() and p.suffix in (".py", ".lock"))
    return builder + wheels.project_sources(REPO) + (list(E2E_FILES) if kind == "e2e-backend" else [])


def source_date_epoch(files: Sequence[str]) -> int:
    """SOURCE_DATE_EPOCH, else the time of the last commit that touched the image's inputs (so a commit elsewhere
    leaves the image as it was), else a constant."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    done = subprocess.run(["git", "log", "-1", "--format=%ct", "--", *files], cwd=REPO, capture_output=True,
                          text=True)
    return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else FALLBACK_EPOCH


def host_tools() -> str:
    """The versions of what compiles into or writes the image on this machine (part of the cache key)."""
    query = subprocess.run(["dpkg-query", "-W", *HOST_PACKAGES], capture_output=True, text=True).stdout
    return f"{query}zlib {zlib.ZLIB_RUNTIME_VERSION}\npython {sys.version}\n"


def cache_key(kind: str, files: Sequence[str], epochs: Sequence[int]) -> str:
    compiler = echo_basic.go_version() if kind == "echo-basic" else ""  # only this image is Go
    digest = hashlib.sha256(f"{kind}\n{image_name(kind)}\n{epochs}\n{host_tools()}{compiler}".encode())
    for rel in files:
        digest.update(f"{rel}\n".encode())
        digest.update(hashlib.sha256((REPO / rel).read_bytes()).digest())
    return digest.hexdigest()


@contextmanager
def exclusive() -> Iterator[Path]:
    """The fixed work directory, emptied, for one build at a time."""
    lock = WORK.with_name(WORK.name + ".lock")
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir()
        try:
            yield WORK
        finally:
            shutil.rmtree(WORK, ignore_errors=True)


def chroot_checked(root: Path, argv: Sequence[str], what: str, *, user: int | None = None,
                   env: dict[str, str] | None = None) -> str:
    done = rootfs.chroot(root, argv, user=user, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed in the image tree (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def compile_pyc(root: Path, dirs: Sequence[str]) -> None:
    """.pyc files by the image's interpreter inside the tree: in-image paths, and ``unchecked-hash`` so they do not
    depend on file times (nor get rewritten: the image's user cannot, and PYTHONDONTWRITEBYTECODE says not to)."""
    chroot_checked(root, ["/usr/bin/python3.11", "-m", "compileall", "-q", "-f", "--invalidation-mode",
                          "unchecked-hash", *dirs], "compileall", env={"PYTHONHASHSEED": "0"})


def under(paths: set[str], tops: Sequence[str]) -> set[str]:
    return {p for p in paths if any(p == t or p.startswith(t + "/") for t in tops)}


def python_tree(kind: str, work: Path, base_epoch: int, epoch: int) -> list[oci.Layer]:
    """Assemble the tree of a Python image in ``work/rootfs``, check it, and write its layers.

    The layers both Python images share are dated ``base_epoch`` (the portcullis image's), so they are the same
    blobs in both; only the e2e backend's own layer carries ``epoch``.
    """
    root = work / "rootfs"
    root.mkdir()
    debs = rootfs.fetch(rootfs.read_lock(HERE / "debs.lock"), CACHE / "image/debs", log)
    rootfs.assemble(debs, root, log)
    log("compiling the standard library")
    compile_pyc(root, PYTHON_DIRS[:1])
    debian = set(oci.tree_paths(root))

    wheel_cache = CACHE / "image/wheels"
    tools = wheels.unpack_tools(wheels.ensure(wheels.read_lock(HERE / "build-tools.lock"), wheel_cache, log),
                                work / "tools")
    reqs = wheels.read_lock(HERE / "requirements.lock")
    locked = wheels.ensure(reqs, wheel_cache, log)
    project = wheels.build_project(REPO, work / "src", work / "dist", tools, epoch=base_epoch, log=log)
    log(f"installing {len(reqs)} dependencies and {project.name}")
    wheels.install(root, reqs, locked, project, tools, work)
    log("compiling the installed packages")
    compile_pyc(root, PYTHON_DIRS[1:])
    python = set(oci.tree_paths(root)) - debian
    app = under(python, wheels.project_paths(root))
    groups = [(debian, base_epoch, "Debian bookworm packages (deploy/image/debs.lock)"),
              (python - app, base_epoch, "Python dependencies (deploy/image/requirements.lock)"),
              (app, base_epoch, f"portcullis {version()}")]

    if kind == "e2e-backend":
        for rel in E2E_FILES:
            (root / E2E_HOME / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / rel, root / E2E_HOME / rel)
        compile_pyc(root, [f"/{E2E_HOME}"])
        groups.append((set(oci.tree_paths(root)) - debian - python, epoch, "the e2e backend (e2e/backend.py)"))

    log("checking the tree with its own interpreter")
    check_env = {"PYTHONDONTWRITEBYTECODE": "1"}
    chroot_checked(root, ["/usr/local/bin/portcullis", "--help"], "portcullis --help", user=rootfs.NONROOT,
                   env=check_env)
    log(chroot_checked(root, ["/usr/bin/python", "-c", IMPORT_CHECK], "the import check", user=rootfs.NONROOT,
                       env=check_env).strip() + " import")
    if kind == "e2e-backend":
        chroot_checked(root, ["/usr/bin/python3.11", "-m", "e2e.backend", "--help"], "python -m e2e.backend --help",
                       user=rootfs.NONROOT, env={**check_env, "PYTHONPATH": f"/{E2E_HOME}"})

    layers_dir = work / "layers"
    layers_dir.mkdir()
    log("writing layers")
    return [oci.write_layer(root, sorted(paths), layers_dir / f"{i}.tar.gz", mtime=mtime, modes=rootfs.MODES,
                            owners=rootfs.OWNERS, comment=comment) for i, (paths, mtime, comment) in enumerate(groups)]


def pause_tree(work: Path, epoch: int) -> list[oci.Layer]:
    root = work / "rootfs"
    binary = pause.compile_pause(work / "pause")
    version_line = subprocess.run([str(binary), "-v"], capture_output=True, text=True).stdout.strip()
    if not version_line.startswith("pause"):
        raise SystemExit(f"the pause binary does not run: {version_line!r}")
    root.mkdir()
    shutil.copyfile(binary, root / "pause")
    (root / "pause").chmod(0o755)
    return [oci.write_layer(root, ["pause"], work / "pause.tar.gz", mtime=epoch, comment=version_line)]


def echo_basic_tree(work: Path, epoch: int) -> list[oci.Layer]:
    root = work / "rootfs"
    binary = echo_basic.compile_echo_basic(work / "echo-basic")
    root.mkdir()
    shutil.copyfile(binary, root / "echo-basic")
    (root / "echo-basic").chmod(0o755)
    return [oci.write_layer(root, ["echo-basic"], work / "echo-basic.tar.gz", mtime=epoch,
                            comment=echo_basic.DESCRIPTION)]


def build(kind: str, out: Path | None = None) -> BuiltImage:
    """Build (or reuse from the cache) the image ``kind``; copy the archive to ``out`` when given."""
    config = image_config(kind)
    files = input_files(kind)
    epoch = source_date_epoch(files)
    own_base = kind in ("portcullis", "pause", "echo-basic")  # only e2e-backend shares the portcullis layers
    base_epoch = epoch if own_base else source_date_epoch(input_files("portcullis"))
    images = CACHE / "images"
    images.mkdir(parents=True, exist_ok=True)
    cached = images / f"{kind}-{cache_key(kind, files, (base_epoch, epoch))[:32]}.oci.tar"
    if cached.exists():
        log(f"{kind}: reusing {cached} (built from identical inputs)")
    else:
        with exclusive() as work:
            if not cached.exists():  # built by whoever held the lock before us
                started = time.monotonic()
                if kind == "pause":
                    layers = pause_tree(work, epoch)
                elif kind == "echo-basic":
                    layers = echo_basic_tree(work, epoch)
                else:
                    layers = python_tree(kind, work, base_epoch, epoch)
                oci.write_archive(cached, image_name(kind), config, layers, created=epoch,
                                  aliases=image_aliases(kind))
                log(f"{kind}: built in {time.monotonic() - started:.0f}s")
                _forget_older(images, kind, keep=cached)
    name, digest = oci.read_digest(cached)
    archive = cached
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        shutil.copyfile(cached, partial)
        os.replace(partial, out)
        archive = out
    return BuiltImage(name, digest, archive.stat().st_size, archive.resolve())


def _forget_older(images: Path, kind: str, *, keep: Path, count: int = 3) -> None:
    """Keep the newest few archives of a kind (a branch switch back reuses them), delete the rest."""
    older = sorted((p for p in images.glob(f"{kind}-*.oci.tar") if p != keep), key=lambda p: p.stat().st_mtime)
    for path in older[: max(0, len(older) - (count - 1))]:
        path.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/image/build.py", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--out", type=Path, help="write the archive here too (default: only the cache)")
    args = parser.parse_args(argv)
    image = build(args.kind, args.out)
    print(f"NAME={image.name}\nDIGEST={image.digest}\nSIZE={image.size}\nARCHIVE={image.archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
