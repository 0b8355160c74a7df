"""Debian bookworm packages -> the image's root filesystem: a distroless tree with Python and nothing to run it with.

The tree holds the shared libraries and the interpreter the data plane and the controller import, and no dpkg, apt,
shell or compiler: nothing in a running pod can install or start another program, and a scanner sees only the
packages named in ``PACKAGES`` (their control files are kept in ``/var/lib/dpkg/status.d/``, as distroless does).
Packages are taken at the versions pinned in ``debs.lock`` (``apt-get download``, checked against the pinned
sha256, cached in ``~/.cache/portcullis/image/debs``) and unpacked with ``dpkg-deb -x``; maintainer scripts never
run, so what they would have made (users, the CA bundle, the ``python`` name) is written here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.image.oci import sha256_file

# Why each package is in the image. Dependencies Debian declares but nothing here loads (readline, ncurses, gdbm,
# sqlite, libnsl, libuuid, libcrypt for python's optional modules) stay out, and the modules that would need them
# are removed (PRUNE): `missing_libraries` fails the build if any kept shared object lacks a library.
PACKAGES: dict[str, str] = {
    "base-files": "/etc/os-release (scanners identify Debian 12), the standard directories",
    "netbase": "/etc/services and /etc/protocols for getservbyname/getprotobyname",
    "ca-certificates": "Mozilla's roots, bundled into /etc/ssl/certs/ca-certificates.crt here",
    "libc6": "glibc and the dynamic loader",
    "libgcc-s1": "unwinding for thread cancellation (glibc dlopens it)",
    "zlib1g": "python3.11 itself, zlib",
    "libexpat1": "python3.11 itself (pyexpat)",
    "libssl3": "ssl, hashlib, and dataplane/openssl.py's ctypes calls into libssl",
    "libffi8": "ctypes (dataplane/openssl.py)",
    "libbz2-1.0": "bz2",
    "liblzma5": "lzma",
    "libnghttp2-14": "the HTTP/2 server session (dataplane/http2/_session.c)",
    "libpython3.11-minimal": "the core standard library",
    "libpython3.11-stdlib": "the rest of the standard library (asyncio, ssl, ctypes, email, ...)",
    "python3.11-minimal": "/usr/bin/python3.11",
}

PYTHON = "/usr/bin/python3.11"
LIB_DYNLOAD = "usr/lib/python3.11/lib-dynload"
# Removed after unpacking: documentation, programs that need a shell, iconv modules Python never loads, the
# standard library's tests, and the extension modules whose libraries are not in PACKAGES (plus CPython's own
# test modules). /usr/share/doc/*/copyright stays: the licence texts travel with the binaries.
PRUNE: tuple[str, ...] = (
    "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian", "usr/share/binfmts",
    "usr/lib/binfmt.d", "usr/lib/x86_64-linux-gnu/gconv", "usr/sbin/update-ca-certificates",
    "etc/ca-certificates/update.d", "etc/update-motd.d",
    "usr/lib/python3.11/test", "usr/lib/python3.11/pydoc_data",
    *(f"{LIB_DYNLOAD}/{module}.cpython-311-x86_64-linux-gnu.so" for module in (
        "_crypt", "_curses", "_curses_panel", "_dbm", "_sqlite3", "_uuid", "nis", "readline",
        "_ctypes_test", "_testbuffer", "_testcapi", "_testclinic", "_testimportmultiple", "_testinternalcapi",
        "_testmultiphase", "_xxsubinterpreters", "_xxtestfuzz", "xxlimited", "xxlimited_35",
    )),
)
NONROOT = 65532
PASSWD = f"""root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin
"""
GROUP = f"""root:x:0:
nobody:x:65534:
nonroot:x:{NONROOT}:
"""
# Without this file glibc asks DNS before /etc/hosts.
NSSWITCH = """passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
ethers: files
rpc: files
"""
SYMLINKS: dict[str, str] = {
    "usr/bin/python": "python3.11",  # the chart's preStop hook runs `python -c ...`
    "usr/bin/python3": "python3.11",
    # OpenSSL looks under its OPENSSLDIR (/usr/lib/ssl); Debian's openssl package makes these links.
    "usr/lib/ssl/certs": "/etc/ssl/certs",
    "usr/lib/ssl/cert.pem": "/etc/ssl/certs/ca-certificates.crt",
}
# Modes and owners the normalised layer writer keeps (everything else: 0755/0644, root).
MODES: dict[str, int] = {"tmp": 0o1777, "var/tmp": 0o1777, "root": 0o700, "home/nonroot": 0o700}
OWNERS: dict[str, tuple[int, int]] = {"home/nonroot": (NONROOT, NONROOT)}

Log = Callable[[str], None]


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    sha256: str


def read_lock(path: Path) -> list[Deb]:
    debs = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, version, sha256 = line.split()
            debs.append(Deb(package, version, sha256))
    missing = set(PACKAGES) - {d.package for d in debs}
    extra = {d.package for d in debs} - set(PACKAGES)
    if missing or extra:
        raise SystemExit(f"{path} does not match rootfs.PACKAGES (missing {sorted(missing)}, extra {sorted(extra)});"
                         " regenerate it: python deploy/image/lock.py debs")
    return debs


def apt_download(spec: str, dest: Path) -> Path:
    """``apt-get download spec`` into an empty temporary directory under ``dest``; the one file it wrote.

    A machine whose package lists were never fetched (a fresh container) gets one ``apt-get update`` and a retry.
    """
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            done = subprocess.run(["apt-get", "download", "-q", spec], cwd=tmp, capture_output=True, text=True)
            if done.returncode == 0:
                (name,) = os.listdir(tmp)
                return Path(shutil.move(os.path.join(tmp, name), dest / name))
        if attempt == 1 and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise SystemExit(f"apt-get download {spec} failed (if the version is gone from the archive, refresh the lock:"
                     f" python deploy/image/lock.py debs):\n{done.stderr}")


def fetch(debs: Sequence[Deb], cache: Path, log: Log) -> list[Path]:
    """The pinned .deb files, from the cache or ``apt-get download``; each checked against its pinned sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for deb in debs:
        found = cache / f"{deb.sha256}.deb"
        if not found.exists():
            log(f"downloading {deb.package}={deb.version}")
            downloaded = apt_download(f"{deb.package}={deb.version}", cache)
            actual = sha256_file(downloaded)
            if actual != deb.sha256:
                downloaded.unlink()
                raise SystemExit(f"{deb.package}={deb.version}: sha256 {actual}, the lock says {deb.sha256}")
            downloaded.rename(found)
        paths.append(found)
    return paths


def unpack(debs: Iterable[Path], root: Path) -> None:
    """Extract every package's files (``dpkg-deb -x``; no maintainer script runs) and keep its control file."""
    status = root / "var/lib/dpkg/status.d"
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        control = subprocess.run(["dpkg-deb", "--field", str(deb)], check=True, capture_output=True).stdout
        package = control.split(b"\n", 1)[0].removeprefix(b"Package: ").decode()
        status.mkdir(parents=True, exist_ok=True)
        (status / package).write_bytes(control)


def prune(root: Path) -> None:
    for rel in PRUNE:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    docs = root / "usr/share/doc"
    for path in sorted(docs.rglob("*"), reverse=True) if docs.exists() else []:
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.name != "copyright" or path.parent.parent != docs:
            path.unlink()


def write_system_files(root: Path) -> None:
    """What maintainer scripts and base-passwd would have made: users, name service order, the CA bundle, links."""
    etc = root / "etc"
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    (etc / "nsswitch.conf").write_text(NSSWITCH)
    for directory in ("tmp", "home/nonroot", "etc/ssl/certs", "usr/lib/ssl"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    # update-ca-certificates would concatenate every certificate ca-certificates.conf enables: all of them. The
    # bundle is what OpenSSL reads; the single certificates it was made of go.
    shared = root / "usr/share/ca-certificates"
    certs = sorted(shared.rglob("*.crt"))
    if not certs:
        raise SystemExit("ca-certificates shipped no certificates")
    (etc / "ssl/certs/ca-certificates.crt").write_bytes(b"".join(c.read_bytes().rstrip(b"\n") + b"\n" for c in certs))
    shutil.rmtree(shared)
    for link, target in SYMLINKS.items():
        (root / link).symlink_to(target)


def _elf_dynamic(path: Path) -> tuple[list[str], list[str]]:
    """The NEEDED libraries and the RUNPATH/RPATH directories of an ELF file (``readelf -d``)."""
    out = subprocess.run(["readelf", "-dW", str(path)], capture_output=True, text=True).stdout
    needed, search = [], []
    for line in out.splitlines():
        if "(NEEDED)" in line:
            needed.append(line.rsplit("[", 1)[1].rstrip("]"))
        elif "(RUNPATH)" in line or "(RPATH)" in line:
            search.extend(line.rsplit("[", 1)[1].rstrip("]").split(":"))
    return needed, search


def missing_libraries(root: Path) -> dict[str, list[str]]:
    """Shared objects and programs in the tree whose NEEDED libraries the loader would not find there.

    The loader's search is mirrored: RUNPATH/RPATH (``$ORIGIN`` is the object's directory; pip wheels ship their
    own libraries that way) and then Debian's default directories. An empty answer means every ELF file can load.
    """
    default = [root / d for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib", "lib64")]
    missing: dict[str, list[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            with path.open("rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            needed, search = _elf_dynamic(path)
            dirs = [root / d.replace("$ORIGIN", str(path.parent.relative_to(root))).lstrip("/") for d in search]
            absent = [lib for lib in needed if not any((d / lib).exists() for d in dirs + default)]
            if absent:
                missing[path.relative_to(root).as_posix()] = absent
    return missing


def chroot(root: Path, argv: Sequence[str], *, user: int | None = None, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """Run a program of the tree inside it: as root with ``chroot``, else in a user namespace (``unshare -r``)."""
    program = shutil.which("chroot") or "/usr/sbin/chroot"  # looked up on the host's PATH, not the tree's
    if os.geteuid() == 0:
        prefix = [program, *([f"--userspec={user}:{user}"] if user is not None else []), str(root)]
    else:
        prefix = [shutil.which("unshare") or "/usr/bin/unshare", "--map-root-user", program, str(root)]
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
    return subprocess.run([*prefix, *argv], env={**base, **(env or {})}, capture_output=True, text=True)


def assemble(debs: Sequence[Path], root: Path, log: Log) -> None:
    """Unpack, prune, add the system files, and prove every ELF file finds its libraries."""
    log(f"unpacking {len(debs)} Debian packages")
    unpack(debs, root)
    prune(root)
    write_system_files(root)
    if missing := missing_libraries(root):
        raise SystemExit("shared libraries missing from the image (add the package or prune the file):\n"
                         + "\n".join(f"  {path}: {', '.join(libs)}" for path, libs in sorted(missing.items())))
