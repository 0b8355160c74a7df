"""The e2e tier's cluster: the local rig (e2e/cluster/up: etcd + kube-apiserver + kube-controller-manager on this
machine, network-namespace pods) or, when ``KUBECONFIG`` is set, that cluster (with the chart installed).

The rig is shared: several pytest sessions (engineers, CI) may use one rig at once. Each session holds a shared
flock on ``<state>/users.lock`` while it runs; at the end the last user tears the rig down, but only when a test
session started it (a rig brought up by hand stays up). Rig failures fail loudly with the component's log tail;
nothing here skips because the rig is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from e2e.cluster_edge import ClusterEdge
from e2e.gateway_api import Installed, install_standard_crds
from e2e.harness import Edge
from e2e.kube import Cluster, Kube, api_client
from e2e.netns import PodFactory
from e2e.node import Node, NodeError, build_images, node_up

E2E = Path(__file__).resolve().parent
UP, DOWN = E2E / "cluster" / "up", E2E / "cluster" / "down"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane (first run: minutes) before any test starts, so no per-test timeout covers it.
    A failed build is not reported here: the ``cluster`` fixture runs ``up`` again and fails with the build log."""
    if session.config.option.collectonly:
        return
    uses = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if (not os.environ.get("KUBECONFIG") and "cluster" in uses) or "rig" in uses:
        subprocess.run([str(UP), "--build-only"], capture_output=True, timeout=3600, check=False)
    if "node" in uses:
        # The images too (first run: a few minutes); a failure is reported by the ``node`` fixture, which builds again.
        with contextlib.suppress(Exception):
            build_images()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failing test on a rig whose API server no longer answers says so, with the API server's log tail."""
    outcome = yield
    report = outcome.get_result()
    found = getattr(item, "funcargs", {}).get("cluster")
    if not report.failed or not isinstance(found, Cluster) or not found.local_rig:
        return
    from kubernetes import client

    try:
        client.VersionApi(found.kube.api).get_code(_request_timeout=3)
    except Exception as exc:  # any failure: the rig itself is broken, which is the news
        report.sections.append(("rig: kube-apiserver does not answer",
                                f"{exc!r}\n--- kube-apiserver log tail:\n{found.log_tail(lines=60)}"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)


def _state_dir() -> Path:
    return Path(os.environ.get("PORTCULLIS_E2E_STATE", "/tmp/portcullis-e2e"))


def _flock(handle: IO[str], mode: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def _rig_up(state: Path) -> tuple[Path, bool]:
    try:
        done = subprocess.run([str(UP)], capture_output=True, text=True, timeout=2400, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"e2e/cluster/up did not finish in {exc.timeout}s:\n{exc.stderr!s}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"e2e/cluster/up failed (exit {done.returncode}):\n{done.stderr}", pytrace=False)
    fields = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    if "KUBECONFIG" not in fields:
        pytest.fail(f"e2e/cluster/up printed no KUBECONFIG:\n{done.stdout}\n{done.stderr}", pytrace=False)
    return Path(fields["KUBECONFIG"]), fields.get("RIG") == "started"


def _rig_down(state: Path) -> None:
    done = subprocess.run([str(DOWN), "--force"], capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"e2e/cluster/down failed (exit {done.returncode}):\n{done.stderr}")


def _check_reachable(cluster: Cluster) -> None:
    from kubernetes import client

    try:
        client.VersionApi(cluster.kube.api).get_code()
    except Exception as exc:  # any failure: reported with the apiserver log
        pytest.fail(f"the API server at {cluster.kubeconfig} does not answer ({exc!r}).\n"
                    f"kube-apiserver log tail:\n{cluster.log_tail()}", pytrace=False)


@contextlib.contextmanager
def _local_rig() -> Iterator[Cluster]:
    """The local rig (e2e/cluster/up), held with a shared lock; torn down by the last test session that uses it."""
    state = _state_dir()
    state.mkdir(parents=True, exist_ok=True)
    with (state / "users.lock").open("a+") as users:
        if not _flock(users, fcntl.LOCK_SH, timeout=600):
            pytest.fail("another session held the rig exclusively (tearing it down) for 10 minutes", pytrace=False)
        kubeconfig, started = _rig_up(state)
        if started:
            (state / "owned-by-tests").write_text(str(os.getpid()))
        found = Cluster(kubeconfig, Kube(api_client(kubeconfig)), local_rig=True, state_dir=state)
        _check_reachable(found)
        try:
            yield found
        finally:
            found.kube.api.close()  # type: ignore[no-untyped-call]
            keep = os.environ.get("PORTCULLIS_E2E_KEEP") == "1"
            if not keep and (state / "owned-by-tests").exists() and _flock(users, fcntl.LOCK_EX, timeout=0):
                _rig_down(state)  # we are the last user of a rig that a test session started


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    external = os.environ.get("KUBECONFIG")
    if external:
        found = Cluster(Path(external), Kube(api_client(Path(external))), local_rig=False, state_dir=None)
        _check_reachable(found)
        yield found
        return
    with _local_rig() as found:
        yield found


@pytest.fixture(scope="session")
def rig(cluster: Cluster) -> Iterator[Cluster]:
    """The local rig whatever KUBECONFIG says: the node tier runs its own node beside it, so it runs on the kind
    path too (as root, with Go), not only where ``cluster`` is the rig."""
    if cluster.local_rig:
        yield cluster
        return
    with _local_rig() as found:
        yield found


FIGURES = pytest.StashKey[list[str]]()  # measured on the node (time to first answer, requests held)


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> list[str]:
    """Lines printed in the session summary: the figures the node tier measures."""
    return request.config.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("figures measured on the rig's node")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def node(rig: Cluster, figures: list[str]) -> Node:
    """The rig's real node (kubelet, containerd, kube-proxy, kube-scheduler) with the images built here imported;
    removed with the rig (e2e/cluster/down)."""
    assert rig.state_dir is not None, "the local rig always has a state directory"
    try:
        found = node_up(rig.state_dir, build_images())
    except NodeError as exc:
        pytest.fail(str(exc), pytrace=False)
    how = "started" if found.started else "reused"
    figures.append(f"node-up: {found.seconds_to_ready:.1f} s to a Ready node ({how}, images imported)")
    return found


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Kube:
    return cluster.kube


@pytest.fixture(scope="session")
def gateway_crds(rig: Cluster) -> Installed:
    """The standard-channel Gateway API CRDs of e2e/gateway/'s release, installed (kept: cluster-scoped, shared by
    every session, and installing them again is a no-op)."""
    return install_standard_crds(rig.kube)


@contextlib.contextmanager
def _fresh_namespace(kube: Kube) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name,
                                                                     "labels": {"portcullis.io/e2e": "true"}}})
    yield name
    kube.delete("v1", "Namespace", name)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace per test, deleted (not awaited) afterwards: the namespace controller empties it."""
    with _fresh_namespace(kube) as name:
        yield name


@pytest.fixture
def rig_namespace(rig: Cluster) -> Iterator[str]:
    """``namespace`` on the local rig (the node tier's cluster)."""
    with _fresh_namespace(rig.kube) as name:
        yield name


@pytest.fixture
def pods(cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PodFactory]:
    """Network-namespace pods on the rig's bridge; every one is removed after the test, logs kept in tmp_path."""
    if not cluster.local_rig:  # only with KUBECONFIG at another cluster (the kind path); never on the rig CI runs
        pytest.skip("network-namespace pods exist only on the local rig (KUBECONFIG points at another cluster)")
    assert cluster.state_dir is not None, "the local rig always has a state directory"
    factory = PodFactory(cluster.state_dir, tmp_path / "pod-logs")
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def edge(cluster: Cluster, namespace: str, tmp_path: Path,
         request: pytest.FixtureRequest) -> Iterator[Edge | ClusterEdge]:
    """A Portcullis installation for this test: on the rig, private processes (e2e/harness.py), stopped afterwards
    (pods removed by ``pods``); on another cluster, the chart's installation (e2e/cluster_edge.py)."""
    if not cluster.local_rig:
        yield ClusterEdge(cluster, namespace, tmp_path)
        return
    installed = Edge(cluster, namespace, request.getfixturevalue("pods"), tmp_path)
    try:
        yield installed
    finally:
        installed.stop_all()


@pytest.fixture
def any_edge(edge: Edge | ClusterEdge) -> Edge | ClusterEdge:
    """``edge`` under a name that says the test narrows it itself (``require_local``)."""
    return edge
