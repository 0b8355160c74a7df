"""The image archive writer (deploy/image/oci.py): the same tree gives the same bytes, and every digest, size and
reference inside the archive agrees with the blobs, so docker, podman, skopeo and containerd all accept it.

The full image build (Debian packages, wheels, chroot checks) runs in the e2e tier; these tests need no network."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from deploy.image import oci

EPOCH = 1_700_000_000
NAME = "docker.io/library/portcullis:0.1.0"
CONFIG = oci.ImageConfig(entrypoint=["portcullis"], cmd=["dataplane"], user="65532:65532",
                         env=["PATH=/usr/bin"], working_dir="/tmp", exposed_ports=[8443, 8080],
                         labels={"org.opencontainers.image.version": "0.1.0"})


def make_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/usr/bin/python3.11\n")
    (root / "usr/bin/tool").chmod(0o700)
    (root / "usr/bin/alias").symlink_to("tool")
    (root / "etc").mkdir()
    (root / "etc/secret").write_text("not really")
    (root / "etc/secret").chmod(0o600)
    (root / "tmp").mkdir(mode=0o700)
    (root / "home/nonroot").mkdir(parents=True)
    (root / "a-b").write_bytes(b"sorts between a and a/ in byte order")


def layer(root: Path, dest: Path, paths: list[str] | None = None) -> oci.Layer:
    return oci.write_layer(root, paths if paths is not None else oci.tree_paths(root), dest, mtime=EPOCH,
                           modes={"tmp": 0o1777}, owners={"home/nonroot": (65532, 65532)}, comment="test layer")


def members(blob: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return tar.getmembers()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_layer_is_the_same_bytes_whatever_the_file_times(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    first = layer(root, tmp_path / "1.tar.gz")
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (1, 1))
    second = layer(root, tmp_path / "2.tar.gz")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert (first.digest, first.diff_id, first.size) == (second.digest, second.diff_id, second.size)


def test_layer_digest_diff_id_and_size_describe_the_blob(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    result = layer(root, tmp_path / "l.tar.gz")
    blob = result.path.read_bytes()
    assert result.digest == sha256(blob) and result.size == len(blob)
    assert result.diff_id == sha256(gzip.decompress(blob))
    # The gzip header names no file and carries no time (RFC 1952: FLG bit 3 is FNAME, bytes 4-7 MTIME).
    assert blob[3] & 0x08 == 0 and blob[4:8] == b"\0\0\0\0"


def test_layer_entries_are_sorted_normalised_and_owned_by_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    entries = members(gzip.decompress(layer(root, tmp_path / "l.tar.gz").path.read_bytes()))
    names = [m.name for m in entries]
    assert names == sorted(names) == oci.tree_paths(root)
    by_name = {m.name: m for m in entries}
    assert all(m.mtime == EPOCH for m in entries)
    assert all(not m.pax_headers for m in entries), "no pax atime/ctime (or anything else) per entry"
    assert all((m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in entries if m.name != "home/nonroot")
    assert (by_name["home/nonroot"].uid, by_name["home/nonroot"].gid) == (65532, 65532)
    assert by_name["usr/bin/tool"].mode == 0o755, "an executable bit makes 0755"
    assert by_name["etc/secret"].mode == 0o644, "anything else is 0644"
    assert by_name["usr"].mode == 0o755 and by_name["tmp"].mode == 0o1777
    assert by_name["usr/bin/alias"].issym() and by_name["usr/bin/alias"].linkname == "tool"


def test_a_layer_carries_the_directories_above_its_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    entries = members(gzip.decompress(layer(root, tmp_path / "l.tar.gz", ["usr/bin/tool"]).path.read_bytes()))
    assert [(m.name, m.isdir()) for m in entries] == [("usr", True), ("usr/bin", True), ("usr/bin/tool", False)]


def test_only_files_directories_and_symlinks_go_into_a_layer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo")
    with pytest.raises(ValueError, match="fifo"):
        layer(root, tmp_path / "l.tar.gz")


def write_image(tmp_path: Path, out: str) -> oci.Archive:
    root = tmp_path / "root"
    if not root.exists():
        make_tree(root)
    (tmp_path / out).mkdir()
    base = layer(root, tmp_path / out / "0.tar.gz", ["etc/secret", "usr/bin/tool"])
    top = layer(root, tmp_path / out / "1.tar.gz", ["tmp", "home/nonroot"])
    return oci.write_archive(tmp_path / f"{out}.oci.tar", NAME, CONFIG, [base, top], created=EPOCH)


def read_archive(path: Path) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    with tarfile.open(path) as tar:
        infos = tar.getmembers()
        files = {}
        for m in infos:
            f = tar.extractfile(m) if m.isreg() else None
            if f is not None:
                files[m.name] = f.read()
    return infos, files


def test_an_archive_is_the_same_bytes_twice(tmp_path: Path) -> None:
    first, second = write_image(tmp_path, "a"), write_image(tmp_path, "b")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.digest == second.digest and first.size == first.path.stat().st_size


def blob(files: dict[str, bytes], digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    data = files[f"blobs/{algorithm}/{hexdigest}"]
    assert sha256(data) == digest, "a blob's name is its digest"
    return data


def test_index_manifest_config_and_blobs_agree(tmp_path: Path) -> None:
    archive = write_image(tmp_path, "a")
    _, files = read_archive(archive.path)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == oci.MEDIA_INDEX
    (descriptor,) = index["manifests"]
    assert descriptor["digest"] == archive.digest and descriptor["mediaType"] == oci.MEDIA_MANIFEST
    assert descriptor["annotations"] == {oci.CONTAINERD_NAME: NAME, oci.REF_NAME: NAME}
    assert descriptor["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest_bytes = blob(files, descriptor["digest"])
    assert descriptor["size"] == len(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == oci.MEDIA_MANIFEST
    assert manifest["config"]["mediaType"] == oci.MEDIA_CONFIG
    config_bytes = blob(files, manifest["config"]["digest"])
    assert manifest["config"]["size"] == len(config_bytes) and manifest["config"]["digest"] == archive.config_digest
    config: dict[str, Any] = json.loads(config_bytes)
    layers = manifest["layers"]
    assert [d["mediaType"] for d in layers] == [oci.MEDIA_LAYER] * 2
    for descriptor_, diff_id in zip(layers, config["rootfs"]["diff_ids"], strict=True):
        data = blob(files, descriptor_["digest"])
        assert descriptor_["size"] == len(data) and diff_id == sha256(gzip.decompress(data))
    assert config["rootfs"]["type"] == "layers" and len(config["history"]) == 2
    assert (config["architecture"], config["os"], config["created"]) == ("amd64", "linux", "2023-11-14T22:13:20Z")
    assert config["config"] == {
        "Entrypoint": ["portcullis"], "Cmd": ["dataplane"], "User": "65532:65532", "Env": ["PATH=/usr/bin"],
        "WorkingDir": "/tmp", "ExposedPorts": {"8080/tcp": {}, "8443/tcp": {}},
        "Labels": {"org.opencontainers.image.version": "0.1.0"},
    }
    assert manifest_bytes == oci.canonical_json(manifest), "canonical JSON: sorted keys, no spaces"


def test_the_docker_manifest_names_the_same_blobs(tmp_path: Path) -> None:
    archive = write_image(tmp_path, "a")
    _, files = read_archive(archive.path)
    (docker,) = json.loads(files["manifest.json"])
    manifest = json.loads(blob(files, archive.digest))
    assert docker["RepoTags"] == ["portcullis:0.1.0"]
    assert docker["Config"] == "blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:")
    assert docker["Layers"] == ["blobs/sha256/" + d["digest"].removeprefix("sha256:") for d in manifest["layers"]]
    assert all(name in files for name in [docker["Config"], *docker["Layers"]])


def test_aliases_name_the_same_manifest_in_the_index_and_the_docker_manifest(tmp_path: Path) -> None:
    # echo-basic is imported under every reference the Gateway API conformance manifests use: one manifest, one
    # index entry per name (containerd's import names an image per entry), the image's own name first.
    root = tmp_path / "root"
    make_tree(root)
    only = layer(root, tmp_path / "0.tar.gz", ["usr/bin/tool"])
    alias = "registry.example/echo:v2"
    archive = oci.write_archive(tmp_path / "a.oci.tar", NAME, CONFIG, [only], created=EPOCH, aliases=[alias])
    _, files = read_archive(archive.path)
    entries = json.loads(files["index.json"])["manifests"]
    assert [e["annotations"] for e in entries] == [{oci.CONTAINERD_NAME: n, oci.REF_NAME: n} for n in (NAME, alias)]
    assert {e["digest"] for e in entries} == {archive.digest}
    (docker,) = json.loads(files["manifest.json"])
    assert docker["RepoTags"] == ["portcullis:0.1.0", alias]
    assert oci.read_digest(archive.path) == (NAME, archive.digest)


def test_archive_entries_are_sorted_root_owned_and_dated(tmp_path: Path) -> None:
    archive = write_image(tmp_path, "a")
    infos, files = read_archive(archive.path)
    names = [m.name for m in infos]
    assert names == sorted(names) and names[:2] == ["blobs", "blobs/sha256"]
    assert {"index.json", "manifest.json", "oci-layout"} <= set(files)
    assert len([n for n in files if n.startswith("blobs/")]) == 4, "config, manifest, two layers"
    assert all((m.uid, m.gid, m.mtime) == (0, 0, EPOCH) for m in infos)
    assert oci.read_digest(archive.path) == (NAME, archive.digest)


@pytest.mark.parametrize(("name", "short"), [
    ("docker.io/library/portcullis:0.1.0", "portcullis:0.1.0"),
    ("docker.io/acme/portcullis:1", "acme/portcullis:1"),
    ("portcullis.local/pause:3.9", "portcullis.local/pause:3.9"),
])
def test_docker_short_names(name: str, short: str) -> None:
    assert oci.familiar(name) == short
