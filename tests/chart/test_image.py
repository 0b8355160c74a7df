"""The image the builder makes (deploy/image/build.py, `make image`) is the one the chart assumes: its entry point is
the `portcullis` console script, it runs as the chart's non-root user, exposes the chart's ports, carries the
`python` the preStop hook calls, and is named what the chart pulls by default.

The configuration is read from the builder itself (no build here: the e2e tier builds and runs the image)."""

from __future__ import annotations

import tomllib

import yaml

from deploy.image import build, rootfs, wheels
from tests.chart.rendering import CHART_DIR, ROOT, container, pod_spec, render

CONFIG = build.image_config("portcullis")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def image_env() -> dict[str, str]:
    return dict(e.split("=", 1) for e in CONFIG.env)


def test_entry_point_is_the_console_script_and_the_chart_picks_the_component() -> None:
    assert list(CONFIG.entrypoint) == ["portcullis"]
    assert list(CONFIG.cmd) == ["dataplane"]
    module, _, function = PYPROJECT["project"]["scripts"]["portcullis"].partition(":")
    assert (module, function) == ("controller.cli", "main")
    assert wheels.SCRIPT.startswith("#!/usr/bin/python3.11\n"), "the kernel runs the script: no shell in the image"
    assert f"from {module} import {function}" in wheels.SCRIPT
    m = render()
    for component in ("controller", "dataplane"):
        c = container(m.workload(component))
        assert "command" not in c, "the chart keeps the image's entry point"
        assert c["args"][0] == component


def test_runs_as_the_non_root_user_the_chart_declares() -> None:
    uid, _, gid = CONFIG.user.partition(":")
    for component in ("controller", "dataplane"):
        pod = pod_spec(render().workload(component))["securityContext"]
        assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"]) and int(uid) != 0
    assert f"nonroot:x:{uid}:{gid}:" in rootfs.PASSWD


def test_exposed_ports_are_the_chart_container_ports() -> None:
    m = render()
    ports = {p["containerPort"] for w in m.workloads() for p in container(w)["ports"]}
    assert set(CONFIG.exposed_ports) == ports == {8443, 8080, 9901, 8081}


def test_the_prestop_hook_finds_python_on_the_image_path() -> None:
    hook = container(render().workload("dataplane"))["lifecycle"]["preStop"]["exec"]["command"]
    program = hook[0]
    path = image_env()["PATH"].split(":")
    in_image = set(rootfs.SYMLINKS) | {rootfs.PYTHON.lstrip("/")}
    assert any(f"{d.lstrip('/')}/{program}" in in_image for d in path), f"{program} is not on the image's PATH"
    assert rootfs.SYMLINKS[f"usr/bin/{program}"] == "python3.11"


def test_no_library_path_tricks() -> None:
    """The HTTP/2 extension's libnghttp2 comes from Debian's package at the loader's default path: neither the
    image nor the chart points the loader anywhere (the old image kept a copy under /opt/portcullis)."""
    assert "libnghttp2-14" in rootfs.PACKAGES
    assert "LD_LIBRARY_PATH" not in image_env()
    for w in render().workloads():
        assert all(e["name"] != "LD_LIBRARY_PATH" for e in container(w).get("env", []))
    assert not any("/opt/portcullis" in p.read_text() for p in CHART_DIR.rglob("*") if p.is_file())


def test_the_chart_default_image_is_the_name_the_archive_carries() -> None:
    """`ctr -n k8s.io images import` registers the archive under this name, the one the kubelet asks for."""
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    assert app_version == PYPROJECT["project"]["version"]
    image = container(render().workload("dataplane"))["image"]
    assert image == f"portcullis:{app_version}"
    assert build.image_name("portcullis") == f"docker.io/library/{image}"


def test_the_image_builds_every_package_pyproject_installs() -> None:
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in include} == set(wheels.PROJECT_PACKAGES)
    sources = wheels.project_sources(ROOT)
    assert {"pyproject.toml", "setup.py", "README.md"} <= set(sources)
    assert {ext + ".c" for ext in wheels.EXTENSIONS} <= set(sources)
