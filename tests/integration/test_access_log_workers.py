"""``--workers 2`` with the access log on: both workers write to the one stdout pipe, and every line stays whole."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import aiohttp

from dataplane.access_log import MAX_FIELD
from tests.integration.conftest import TOKEN
from tests.integration.http_fixtures import EchoBackend, free_port
from tests.integration.processes import PORTCULLIS, ROOT, stop
from tests.integration.test_access_log import check_schema
from tests.integration.test_workers import Pod, get, hosts, metrics, per_worker, push, started


async def test_two_workers_write_whole_json_lines_to_one_stdout(tmp_path: Path, backend: EchoBackend) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    http, admin = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [*PORTCULLIS, "dataplane", "--workers", "2", "--bind", "127.0.0.1", "--https-port", "0", "--http-port",
         str(http), "--admin-port", str(admin), "--admin-token-file", str(token), "--log-level", "warning",
         "--access-log", "json"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    data = b""

    def read() -> bytes:
        nonlocal data
        try:
            while chunk := os.read(proc.stdout.fileno(), 65536):  # type: ignore[union-attr]
                data += chunk
        except BlockingIOError:
            pass
        return data

    try:
        pod = Pod(proc, http, admin, tmp_path / "unused-state.json")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await started(pod, session)
            status, _ = await push(pod, session, hosts(backend, ["a.test"], 1))
            assert status == 200
            long_path = "/" + "x" * 1500  # long lines make torn writes likelier if they could happen
            codes = [await get(http, "a.test", long_path if i % 2 else f"/{i}") for i in range(200)]
            assert codes == [200] * 200
            spread = per_worker(await metrics(pod, session))
            assert set(spread) == {"0", "1"} and all(v >= 1 for v in spread.values()), spread
        deadline = time.monotonic() + 20
        while read().count(b"\n") < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        lines = read().decode().splitlines()
        assert len(lines) == 200, len(lines)
        records = [check_schema(line) for line in lines]  # a torn or interleaved line would not parse
        logged_long = long_path[:MAX_FIELD] + "..."  # client-controlled fields are cut so a line stays below PIPE_BUF
        assert sorted(r["path"] for r in records) == sorted(logged_long if i % 2 else f"/{i}" for i in range(200))
        assert all(len(line) < 4096 for line in lines)
        assert all(r["status"] == 200 and r["mode"] == "http" for r in records)
    finally:
        stop(proc, 20)
        proc.stdout.close()
