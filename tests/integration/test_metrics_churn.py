"""Per-host and per-pool series follow the applied snapshot: a host or pool that leaves it leaves ``/metrics``, in one
process (the admin API) and under ``--workers N`` (prometheus-client's multiprocess files, summed by the supervisor)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from dataplane.runtime import DataPlane
from dataplane.snapshot import Endpoint, Pool, Route, Snapshot, VirtualHost
from dataplane.workers import PoolMetrics
from tests.integration.conftest import TOKEN
from tests.integration.http_fixtures import free_port


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def snapshot(generation: int, *names: str) -> Snapshot:
    """One host per name, its own pool at a port nothing listens on (each request counts a connect failure), and
    ``limit-rps`` 1 (burst 5: the sixth request at once counts a 429)."""
    pools = tuple(Pool(f"team/{n}:80", (Endpoint("127.0.0.1", free_port()),), connect_timeout=2.0) for n in names)
    vhosts = tuple(VirtualHost(f"{n}.test", (Route("/", "Prefix", f"team/{n}:80", source=f"Ingress team/{n}",
                                                    limit_rps=1),)) for n in names)
    return Snapshot(generation=generation, pools=pools, virtual_hosts=vhosts)


async def push(http: aiohttp.ClientSession, dp: DataPlane, snap: Snapshot) -> None:
    async with http.put(f"http://127.0.0.1:{dp.admin_port}/snapshot", data=snap.to_json(),
                        headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200, await r.text()


async def statuses(port: int, host: str, n: int) -> list[int]:
    """``n`` requests to ``host`` on one keep-alive connection (a new one after a response that closes)."""
    out: list[int] = []
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        out.append(int(head.split(b" ", 2)[1]))
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        if b"connection: close" in head.lower():
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    return out


async def metrics(http: aiohttp.ClientSession, dp: DataPlane) -> list[str]:
    async with http.get(f"http://127.0.0.1:{dp.admin_port}/metrics") as r:
        assert r.status == 200
        return [line for line in (await r.text()).splitlines() if not line.startswith("#")]


def naming(lines: list[str], name: str) -> set[str]:
    """The metric names of the series labelled with host ``name``.test or its pool."""
    return {line.split("{", 1)[0] for line in lines
            if f'host="{name}.test"' in line or f'pool="team/{name}:80"' in line}


PER_HOST = {"portcullis_http_requests_total", "portcullis_http_request_duration_seconds_count",
            "portcullis_http_requests_limited_total", "portcullis_upstream_failures_total"}
# No backend answers here, so no response-head time is observed (the multiprocess test covers that series).
SEEN = PER_HOST - {"portcullis_http_request_duration_seconds_count"}


async def test_removed_hosts_and_pools_leave_metrics(dataplane: DataPlane, http: aiohttp.ClientSession) -> None:
    await push(http, dataplane, snapshot(1, "gone", "stays"))
    for name in ("gone", "stays"):
        got = await statuses(dataplane.http_port, f"{name}.test", 6)
        assert got[0] == 502 and got[-1] == 429, got  # then 503: the refused endpoint is marked down
    before = await metrics(http, dataplane)
    assert naming(before, "gone") >= SEEN and naming(before, "stays") >= SEEN

    await push(http, dataplane, snapshot(2, "stays"))
    after = await metrics(http, dataplane)
    assert naming(after, "gone") == set()
    assert naming(after, "stays") == naming(before, "stays")

    await push(http, dataplane, snapshot(3, "gone", "stays"))  # back: counted afresh, from its next request
    assert naming(await metrics(http, dataplane), "gone") == set()
    assert await statuses(dataplane.http_port, "gone.test", 1) == [502]
    assert {"portcullis_http_requests_total", "portcullis_upstream_failures_total"} <= naming(
        await metrics(http, dataplane), "gone")


WORKER = textwrap.dedent("""
    import warnings
    warnings.simplefilter("error")  # retain_series must not let prometheus-client's multiprocess warning out
    from dataplane.metrics import Metrics
    m = Metrics()
    for host in ("gone.test", "stays.test"):
        m.requests.labels(host, "5xx", "http/1.1").inc()
        m.request_duration.labels(host).observe(0.01)
        m.requests_limited.labels(host).inc()
    for pool in ("team/gone:80", "team/stays:80"):
        m.upstream_failures.labels(pool, "connect").inc()
    print(m.retain_series({"stays.test", "(none)"}, {"team/stays:80"}))
""")


def test_workers_removed_series_are_left_out_of_the_sum(tmp_path: Path) -> None:
    """A worker's files keep what it removed (the library cannot delete an entry); the supervisor's sum leaves the
    labels the applied snapshot no longer has out, and keeps everything else."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4"]  # one series of each of the four per-host/per-pool metrics

    supervisor = PoolMetrics(str(tmp_path))
    summed = [line for line in supervisor.render().decode().splitlines() if not line.startswith("#")]
    assert naming(summed, "gone") >= PER_HOST  # nothing applied through this supervisor yet: nothing left out

    supervisor.retain_series({"stays.test", "(none)"}, {"team/stays:80"})
    summed = [line for line in supervisor.render().decode().splitlines() if not line.startswith("#")]
    assert naming(summed, "gone") == set()
    assert naming(summed, "stays") >= PER_HOST
