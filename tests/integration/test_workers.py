"""``portcullis dataplane --workers 2`` as real processes: both workers serve, a push reaches both, a killed worker
comes back with the current snapshot, metrics are the sum of the workers', SIGTERM drains a live connection."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from dataplane import push_body
from dataplane.snapshot import Snapshot
from dataplane.workers import reserve_ports
from tests.integration.conftest import TOKEN
from tests.integration.http_fixtures import EchoBackend, free_port, pool, snapshot, vhost
from tests.integration.processes import PORTCULLIS, ROOT, stop
from tests.waiting import eventually

WORKER_SERIES = re.compile(r'^portcullis_worker_connections_total\{worker="(\d+)"\} ([0-9.e+]+)$', re.M)


@dataclass
class Pod:
    proc: subprocess.Popen[bytes]
    http: int
    admin: int
    state_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    yield from run_pod(tmp_path)


def run_pod(tmp_path: Path) -> Generator[Pod, None, None]:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    http, admin = free_port(), free_port()
    state = tmp_path / "state.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [*PORTCULLIS, "dataplane", "--workers", "2", "--bind", "127.0.0.1", "--https-port", "0", "--http-port",
         str(http), "--admin-port", str(admin), "--admin-token-file", str(token), "--drain-timeout", "10",
         "--state-file", str(state), "--log-level", "warning"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield Pod(proc, http, admin, state)
    finally:
        stop(proc, 20)


def hosts(backend: EchoBackend, names: list[str], generation: int) -> Snapshot:
    snap = snapshot([vhost(n, ("/", "Prefix", "p")) for n in names], [pool("p", backend.endpoint)])
    return Snapshot.from_dict({**snap.to_dict(), "generation": generation}).canonical()


async def started(pod: Pod, session: aiohttp.ClientSession) -> None:
    async def live() -> bool:
        assert pod.proc.poll() is None, f"data plane exited with {pod.proc.returncode}"
        try:
            async with session.get(pod.url + "/livez") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False
    await eventually(live, 60, what="admin API listening")


async def push(pod: Pod, session: aiohttp.ClientSession, snap: Snapshot) -> tuple[int, dict[str, object]]:
    async with session.put(pod.url + "/snapshot", data=snap.to_json(),
                           headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        return r.status, await r.json()


async def metrics(pod: Pod, session: aiohttp.ClientSession) -> str:
    async with session.get(pod.url + "/metrics") as r:
        assert r.status == 200
        return await r.text()


def per_worker(text: str) -> dict[str, float]:
    return {w: float(v) for w, v in WORKER_SERIES.findall(text)}


def sample(text: str, series: str) -> float:
    match = re.search("^" + re.escape(series) + r" ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def get(port: int, host: str, path: str = "/") -> int:
    """One request on a new connection; the status code."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status = await asyncio.wait_for(reader.readline(), 10)
        await asyncio.wait_for(reader.read(), 10)
        return int(status.split()[1])
    finally:
        writer.close()


async def readyz(pod: Pod, session: aiohttp.ClientSession) -> int:
    async with session.get(pod.url + "/readyz") as r:
        return r.status


async def test_two_workers_both_serve_a_push_and_the_metrics_are_their_sum(
        pod: Pod, backend: EchoBackend) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await started(pod, session)
        assert await readyz(pod, session) == 503  # nothing applied yet
        status, body = await push(pod, session, hosts(backend, ["a.test"], 1))
        assert status == 200 and body["generation"] == 1
        assert await readyz(pod, session) == 200
        codes = [await get(pod.http, "a.test") for _ in range(200)]
        assert codes == [200] * 200
        text = await metrics(pod, session)
        spread = per_worker(text)
        assert set(spread) == {"0", "1"} and all(v >= 1 for v in spread.values()), spread
        assert sum(spread.values()) == 200
        # every counter is the pod's: the sum over the workers of what each served
        assert sample(text, 'portcullis_connections_total{listener="http",mode="plain"}') == 200, text
        assert sample(text, 'portcullis_http_requests_total{code_class="2xx",host="a.test",protocol="http/1.1"}') \
            == 200
        assert sample(text, 'portcullis_snapshot_applies_total{result="applied"}') == 1  # one push, one apply
        assert sample(text, "portcullis_snapshot_generation") == 1

        # a push is applied by both: a new host is served by each worker
        status, _ = await push(pod, session, hosts(backend, ["a.test", "b.test"], 2))
        assert status == 200
        before = per_worker(await metrics(pod, session))
        assert [await get(pod.http, "b.test") for _ in range(100)] == [200] * 100
        after = per_worker(await metrics(pod, session))
        assert all(after[w] > before[w] for w in ("0", "1")), (before, after)

        # the push semantics are the single process's: stale 409, invalid 422 (applied by none)
        status, body = await push(pod, session, hosts(backend, ["a.test"], 1))
        assert status == 409 and body["generation"] == 2
        bad = Snapshot.from_dict({**hosts(backend, ["c.test"], 3).to_dict(), "pools": []})
        status, body = await push(pod, session, bad)
        assert status == 422
        async with session.get(pod.url + "/snapshot", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert (await r.json())["generation"] == 2


async def test_a_killed_worker_comes_back_serving_the_current_snapshot(pod: Pod, backend: EchoBackend) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await started(pod, session)
        assert (await push(pod, session, hosts(backend, ["a.test"], 1)))[0] == 200
        assert (await push(pod, session, hosts(backend, ["a.test", "new.test"], 2)))[0] == 200
        workers = worker_pids(pod.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        await eventually(lambda: len(set(worker_pids(pod.proc.pid)) - {workers[0]}) == 2, 60, what="worker restarted")
        await eventually(lambda: _ready(pod, session), 60, what="ready again")
        # the restarted worker serves generation 2 at once: every new connection, whichever worker takes it
        before = per_worker(await metrics(pod, session))
        assert [await get(pod.http, "new.test") for _ in range(100)] == [200] * 100
        after = per_worker(await metrics(pod, session))
        assert all(after[w] > before.get(w, 0) for w in ("0", "1")), (before, after)


async def _ready(pod: Pod, session: aiohttp.ClientSession) -> bool:
    return await readyz(pod, session) == 200


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


async def test_sigterm_drains_live_connections(pod: Pod, backend: EchoBackend) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await started(pod, session)
        assert (await push(pod, session, hosts(backend, ["a.test"], 1)))[0] == 200
        slow = [asyncio.create_task(get(pod.http, "a.test", "/slow/1.5")) for _ in range(6)]
        await eventually(lambda: len(backend.requests) >= 6, 10, what="slow requests reached the backend")
        pod.proc.send_signal(signal.SIGTERM)
        assert await asyncio.gather(*slow) == [200] * 6  # in flight at SIGTERM, answered in full
        await eventually(lambda: pod.proc.poll() is not None, 20, what="the pod exited")
        assert pod.proc.returncode == 0


async def test_gzip_delta_and_if_none_match_pushes_and_the_state_file_fill_every_worker(
        tmp_path: Path, backend: EchoBackend) -> None:
    first = hosts(backend, ["a.test"], 1)
    second = hosts(backend, ["a.test", "kept.test"], 2)
    pods = run_pod(tmp_path)
    pod = next(pods)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await started(pod, session)
            auth = {"Authorization": f"Bearer {TOKEN}"}
            gzip = {**auth, "Content-Encoding": "gzip", "If-None-Match": "*"}
            async with session.put(pod.url + "/snapshot", data=push_body.compress(first.to_json().encode()),
                                   headers=gzip) as r:
                assert r.status == 200
            async with session.put(pod.url + "/snapshot", data=push_body.compress(second.to_json().encode()),
                                   headers=gzip) as r:
                assert r.status == 412  # a snapshot is applied: a non-leader's fill is refused
            delta = push_body.make_delta(first, second)
            async with session.patch(pod.url + "/snapshot", json=delta, headers=auth) as r:
                assert r.status == 200 and (await r.json())["checksum"] == second.checksum
            async with session.patch(pod.url + "/snapshot", json=delta, headers=auth) as r:
                assert r.status == 412  # its base is no longer what the workers serve
            await eventually(pod.state_file.exists, 10, what="state file written")
            assert pod.state_file.stat().st_mode & 0o077 == 0
    finally:
        pods.close()  # SIGTERM: the first pod is gone
    assert pod.proc.returncode == 0
    pods = run_pod(tmp_path)  # a restarted container, same state file, no controller pushing
    pod = next(pods)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await started(pod, session)
            assert await readyz(pod, session) == 200
            assert [await get(pod.http, "kept.test") for _ in range(100)] == [200] * 100
            spread = per_worker(await metrics(pod, session))
            assert set(spread) == {"0", "1"} and all(v >= 1 for v in spread.values()), spread
    finally:
        pods.close()


def test_listener_ports_are_reserved_distinct() -> None:
    """Two SO_REUSEPORT reservations of one port would merge the HTTPS and HTTP listeners into one
    group (plain HTTP answered by the TLS listener, 400 for every other connection): refused, and an
    automatic port never lands on an explicit one."""
    explicit = free_port()
    with pytest.raises(OSError, match="different ports"):
        reserve_ports("127.0.0.1", [explicit, explicit])
    for _ in range(50):
        socks = reserve_ports("127.0.0.1", [0, explicit])
        try:
            https, http = (s.getsockname()[1] for s in socks)
            assert http == explicit and https != explicit
        finally:
            for s in socks:
                s.close()
