"""The Dockerfile (no Docker engine here to build it): one slim non-root image whose entry point is the
`portcullis` console script the tests run, with the identity and ports the chart assumes."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from tests.chart.rendering import ROOT, container, pod_spec, render

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def test_multi_stage_slim_and_the_runtime_has_no_build_tools() -> None:
    froms = [rest for k, rest in instructions() if k == "FROM"]
    assert len(froms) >= 2
    assert all("slim" in f for f in froms)
    runtime = final_stage()
    assert not any(k == "RUN" for k, _ in runtime), "the runtime stage installs nothing"
    assert any(k == "COPY" and rest.startswith("--from=build") for k, rest in runtime)


def test_entry_point_is_the_console_script_and_the_chart_picks_the_component() -> None:
    runtime = dict(final_stage())
    assert json.loads(runtime["ENTRYPOINT"]) == ["portcullis"]
    assert json.loads(runtime["CMD"]) == ["dataplane"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["portcullis"] == "controller.cli:main"
    m = render()
    for component in ("controller", "dataplane"):
        c = container(m.workload(component))
        assert "command" not in c, "the chart keeps the image's entry point"
        assert c["args"][0] == component
    # The preStop hook calls the venv's python, which the image puts on PATH.
    assert "PATH=/opt/portcullis/bin:$PATH" in runtime["ENV"]


def test_runs_as_the_non_root_user_the_chart_declares() -> None:
    user = dict(final_stage())["USER"]
    uid, _, gid = user.partition(":")
    pod = pod_spec(render().workload("dataplane"))["securityContext"]
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"]) and int(uid) != 0


def test_exposed_ports_are_the_chart_container_ports() -> None:
    exposed = {int(p) for p in dict(final_stage())["EXPOSE"].split()}
    m = render()
    ports = {p["containerPort"] for w in m.workloads() for p in container(w)["ports"]}
    assert exposed == ports


def test_build_context_holds_every_package_pyproject_installs() -> None:
    copied = {src for k, rest in instructions() if k == "COPY" and not rest.startswith("--from")
              for src in rest.split()[:-1]}
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    assert packages <= copied
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    assert set(allowed) == packages | {"pyproject.toml", "README.md"}
    for name in allowed:
        assert Path(ROOT / name).exists()


def test_the_http2_session_finds_libnghttp2_in_the_runtime_stage() -> None:
    """The runtime stage installs nothing, so the shared library the HTTP/2 extension links to travels in the
    venv's tree and the loader is pointed there (without it HTTP/2 would silently fall back to HTTP/1.1)."""
    steps = instructions()
    build = steps[: max(i for i, (k, _) in enumerate(steps) if k == "FROM")]
    copied = [rest for k, rest in build if k == "RUN" and "libnghttp2.so.14" in rest]
    assert copied and "/opt/portcullis/native/" in copied[0]
    assert "dataplane.http2._session" in copied[0], "the build stage imports the extension with that path"
    assert "LD_LIBRARY_PATH=/opt/portcullis/native" in dict(final_stage())["ENV"]
