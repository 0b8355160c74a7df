"""Deterministic OCI image archives with nothing but the standard library.

The same tree and the same configuration give the same bytes, so the image digest is a function of the inputs:
a registry, a cluster or a second machine can tell whether an image changed by comparing one string. Everything a
tar or gzip stream would otherwise take from the machine is fixed here: entry order (sorted paths), owners (root,
unless a path is named in ``owners``), permission bits (0755/0644 by the file's executable bit, unless named in
``modes``), times (every entry carries ``mtime``; no pax atime/ctime), the gzip header (no file name, mtime 0) and
JSON (sorted keys, no spaces).

One archive serves every consumer: it is an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256``) for
``skopeo``, ``podman load`` and ``ctr images import``, and it also holds a Docker ``manifest.json`` naming the same
blobs for ``docker load`` and ``kind load image-archive``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# The annotation containerd's importer names the image after (else `ctr import` invents `import-<date>` names).
CONTAINERD_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"
# zlib's output is stable for one level and one zlib version; 6 is zlib's default and twice as fast as 9.
GZIP_LEVEL = 6


def canonical_json(value: Any) -> bytes:
    """The one serialisation of a JSON document: its digest is what registries and runtimes compare."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Layer:
    """A gzip-compressed layer tar on disk: ``digest`` names the compressed blob, ``diff_id`` the tar inside it."""

    path: Path
    digest: str
    diff_id: str
    size: int
    comment: str = ""


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (the ``config`` object; the rest is derived from the layers)."""

    entrypoint: Sequence[str]
    cmd: Sequence[str] = ()
    user: str = ""
    env: Sequence[str] = ()
    working_dir: str = ""
    exposed_ports: Sequence[int] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Archive:
    """What was written: ``digest`` is the manifest's, the one a registry shows after a push."""

    path: Path
    name: str
    digest: str
    size: int
    config_digest: str
    layers: tuple[Layer, ...]


class _HashingWriter(io.BufferedIOBase):
    """A write-only stream that counts and hashes what passes through it on its way to ``sink``."""

    def __init__(self, sink: IO[bytes] | io.BufferedIOBase) -> None:
        super().__init__()
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        self.hash.update(view)
        self.size += len(view)
        self.sink.write(view)
        return len(view)

    def flush(self) -> None:
        self.sink.flush()


def tree_paths(root: Path) -> list[str]:
    """Every path under ``root`` (relative, POSIX), directories included, not following symlinks."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for name in dirnames + filenames:
            out.append((rel / name).as_posix())
    return sorted(out)


def with_parents(paths: Iterable[str]) -> list[str]:
    """``paths`` plus every directory above them, sorted so a directory always precedes what it holds.

    Each layer carries the directories it writes into, so it applies on any runtime whether or not a lower layer
    made them, and with the same owner and mode as the lower layer's entry.
    """
    out: set[str] = set()
    for path in paths:
        parts = path.split("/")
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(out)


def tar_info(root: Path, rel: str, *, mtime: int, modes: Mapping[str, int], owners: Mapping[str, tuple[int, int]]
             ) -> tarfile.TarInfo:
    """The normalised header of ``root/rel``: only its type, size, link target and executable bit survive."""
    st = os.lstat(root / rel)
    info = tarfile.TarInfo(rel)
    info.mtime = mtime
    info.uid, info.gid = owners.get(rel, (0, 0))
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.mode = modes.get(rel, 0o755)
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(root / rel)
        info.mode = 0o777
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
        info.mode = modes.get(rel, 0o755 if st.st_mode & 0o111 else 0o644)
    else:
        raise ValueError(f"{rel}: only directories, regular files and symlinks belong in an image layer")
    return info


def write_layer(root: Path, paths: Iterable[str], dest: Path, *, mtime: int, modes: Mapping[str, int] | None = None,
                owners: Mapping[str, tuple[int, int]] | None = None, comment: str = "") -> Layer:
    """Write ``paths`` (relative to ``root``, parents added) as one gzip layer at ``dest``; hashes in one pass."""
    modes = modes or {}
    owners = owners or {}
    with dest.open("wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=GZIP_LEVEL) as gz:
            uncompressed = _HashingWriter(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for rel in with_parents(paths):
                    info = tar_info(root, rel, mtime=mtime, modes=modes, owners=owners)
                    if info.isreg():
                        with (root / rel).open("rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
    return Layer(dest, "sha256:" + compressed.hash.hexdigest(), "sha256:" + uncompressed.hash.hexdigest(),
                 compressed.size, comment)


def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def config_document(config: ImageConfig, layers: Sequence[Layer], *, created: int) -> dict[str, Any]:
    runtime: dict[str, Any] = {"Entrypoint": list(config.entrypoint)}
    if config.cmd:
        runtime["Cmd"] = list(config.cmd)
    if config.user:
        runtime["User"] = config.user
    if config.env:
        runtime["Env"] = list(config.env)
    if config.working_dir:
        runtime["WorkingDir"] = config.working_dir
    if config.exposed_ports:
        runtime["ExposedPorts"] = {f"{port}/tcp": {} for port in sorted(config.exposed_ports)}
    if config.labels:
        runtime["Labels"] = dict(config.labels)
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": rfc3339(created),
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": rfc3339(created), "created_by": layer.comment or "deploy/image"} for layer in layers],
    }


def familiar(name: str) -> str:
    """``docker.io/library/portcullis:0.1.0`` as Docker writes it in ``manifest.json``: ``portcullis:0.1.0``."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _blob_name(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_archive(dest: Path, name: str, config: ImageConfig, layers: Sequence[Layer], *, created: int,
                  aliases: Sequence[str] = ()) -> Archive:
    """Write the image as one tar at ``dest`` (atomically: a reader never sees half an archive).

    ``name`` is the full reference (``docker.io/library/portcullis:0.1.0``): it goes into the index both as
    containerd's image name and as the OCI ref name (podman takes the image's name from the latter, so a bare tag
    there would load as ``localhost/0.1.0``), and into ``manifest.json``'s RepoTags in Docker's short form.
    ``aliases`` are more references to the same manifest (one index entry each), for an image that must be found
    under several names.
    """
    config_bytes = canonical_json(config_document(config, layers, created=created))
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest_bytes = canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size} for layer in layers],
    })
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    index_bytes = canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {CONTAINERD_NAME: ref, REF_NAME: ref},
        } for ref in (name, *aliases)],
    })
    docker_manifest = canonical_json([{
        "Config": _blob_name(config_digest),
        "RepoTags": [familiar(ref) for ref in (name, *aliases)],
        "Layers": [_blob_name(layer.digest) for layer in layers],
    }])
    blobs: dict[str, bytes | Path] = {_blob_name(config_digest): config_bytes,
                                      _blob_name(manifest_digest): manifest_bytes}
    for layer in layers:
        blobs[_blob_name(layer.digest)] = layer.path
    files: dict[str, bytes | Path] = {**blobs, "index.json": index_bytes, "manifest.json": docker_manifest,
                                      "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"})}

    partial = dest.with_name(dest.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, created
            tar.addfile(info)
        for member in sorted(files):
            content = files[member]
            if isinstance(content, bytes):
                _add_bytes(tar, member, content, created)
            else:
                info = tarfile.TarInfo(member)
                info.size, info.mtime, info.mode = content.stat().st_size, created, 0o644
                with content.open("rb") as f:
                    tar.addfile(info, f)
    os.replace(partial, dest)
    return Archive(dest, name, manifest_digest, dest.stat().st_size, config_digest, tuple(layers))


def read_digest(archive: Path) -> tuple[str, str]:
    """The image name and manifest digest recorded in an archive's ``index.json`` (for a cached archive)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ValueError(f"{archive}: no index.json")
        descriptor = json.load(member)["manifests"][0]
    return str(descriptor["annotations"][CONTAINERD_NAME]), str(descriptor["digest"])
