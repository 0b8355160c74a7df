"""Compressed and delta pushes against a real data plane's admin API on 127.0.0.1, checked with real TLS
handshakes: a bomb, a corrupt body or a delta on the wrong base is a clear 4xx and the old snapshot keeps
serving; a publisher whose delta is refused pushes the full snapshot."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from controller.publisher import Publisher, PushConfig
from dataplane.push_body import compress, make_delta
from dataplane.runtime import DataPlane
from dataplane.snapshot import Certificate, Snapshot
from tests.integration.conftest import TOKEN, certificate, common_name, server_certificate, terminate_host
from tests.pki import CA
from tests.waiting import eventually

HOSTS = ("a.example.com", "b.example.com", "c.example.com", "d.example.com")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), auto_decompress=False) as session:
        yield session


@pytest.fixture(scope="module")
def certs() -> dict[str, Certificate]:
    ca = CA("Push Encoding CA")
    return {h: certificate(ca.issue(h), h) for h in HOSTS}


def snap(certs: dict[str, Certificate], hosts: tuple[str, ...], generation: int) -> Snapshot:
    return Snapshot(generation=generation, certificates=tuple(certs[h] for h in hosts),
                    tls_hosts=tuple(terminate_host(h, certs[h]) for h in hosts)).canonical()


def url(dp: DataPlane) -> str:
    return f"http://127.0.0.1:{dp.admin_port}/snapshot"


def headers(encoding: str | None = None) -> dict[str, str]:
    out = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    if encoding:
        out["Content-Encoding"] = encoding
    return out


async def served(dp: DataPlane, host: str) -> str:
    return common_name(await server_certificate(dp.https_port, host))


async def test_gzip_push_applies_and_bad_bodies_keep_the_old_snapshot(
        dataplane: DataPlane, http: aiohttp.ClientSession, certs: dict[str, Certificate]) -> None:
    first = snap(certs, ("a.example.com",), 1)
    async with http.put(url(dataplane), data=compress(first.to_json().encode()), headers=headers("gzip")) as r:
        assert r.status == 200, await r.text()
    assert dataplane.checksum == first.checksum and await served(dataplane, "a.example.com") == "a.example.com"

    later = snap(certs, ("b.example.com",), 2).to_json().encode()
    limit = dataplane.config.admin_max_body
    bomb = compress(b" " * (limit + 1))  # valid JSON padding: only its inflated size is wrong
    assert len(bomb) < limit // 500
    cases = [
        (bomb, "gzip", 413, "inflates past"),
        (zlib.compress(b" " * (limit + 1)), "deflate", 413, "inflates past"),
        (compress(later)[:-30], "gzip", 400, "truncated"),
        (compress(later)[:20] + b"\xff" * 64 + compress(later)[84:], "gzip", 400, "corrupt"),
        (later, "zstd", 415, "not supported"),
    ]
    for body, encoding, status, words in cases:
        async with http.put(url(dataplane), data=body, headers=headers(encoding)) as r:
            assert r.status == status, (encoding, await r.text())
            assert words in " ".join((await r.json())["errors"])
    assert dataplane.checksum == first.checksum and dataplane.generation == 1
    assert await served(dataplane, "a.example.com") == "a.example.com"


async def test_delta_rebuilds_the_rendered_snapshot_or_is_refused(
        dataplane: DataPlane, http: aiohttp.ClientSession, certs: dict[str, Certificate]) -> None:
    base = snap(certs, ("a.example.com", "b.example.com"), 1)
    assert dataplane.apply(base) == []
    target = snap(certs, ("a.example.com", "c.example.com"), 2)

    # Built on a snapshot this data plane does not serve: 412, nothing changes.
    other = snap(certs, ("b.example.com",), 1)
    async with http.patch(url(dataplane), json=make_delta(other, target), headers=headers()) as r:
        assert r.status == 412 and (await r.json())["checksum"] == base.checksum
    # A delta that does not rebuild the checksum it claims (tampered in transit): 422, nothing changes.
    tampered = make_delta(base, target)
    tampered["snapshot"]["tls_hosts"][0]["host"] = "evil.example.com"
    async with http.patch(url(dataplane), json=tampered, headers=headers()) as r:
        assert r.status == 422 and "checksum" in " ".join((await r.json())["errors"])
    assert dataplane.checksum == base.checksum and await served(dataplane, "b.example.com") == "b.example.com"

    delta = compress(json.dumps(make_delta(base, target)).encode())
    async with http.patch(url(dataplane), data=delta, headers=headers("gzip")) as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {"generation": 2, "checksum": target.checksum}
    assert dataplane.checksum == target.checksum
    assert await served(dataplane, "c.example.com") == "c.example.com"
    sent = json.loads(zlib.decompress(delta, 16 + zlib.MAX_WBITS))
    assert [c["id"] for c in sent["snapshot"]["certificates"]] == [certs["c.example.com"].id]  # a's stayed home


async def test_publisher_sends_deltas_and_falls_back_to_a_full_push(
        dataplane: DataPlane, certs: dict[str, Certificate]) -> None:
    base = snap(certs, ("a.example.com", "b.example.com"), 0)
    target = snap(certs, ("a.example.com", "b.example.com", "c.example.com"), 0)
    async with Publisher(PushConfig(port=dataplane.admin_port, token=TOKEN, resync=0.1)) as publisher:
        publisher.update(["127.0.0.1"], base)
        await eventually(lambda: dataplane.checksum == base.checksum)
        worker = publisher.workers["127.0.0.1"]
        await eventually(lambda: worker.acked is base)
        publisher.update(["127.0.0.1"], target)
        # the worker's own record of the push, not only the data plane's: it notes the bytes after the answer
        await eventually(lambda: dataplane.checksum == target.checksum and worker.acked is target)
        full, delta = worker.pushed_bytes
        assert delta < full  # only c's certificate and the routing travel, gzipped
        assert await served(dataplane, "c.example.com") == "c.example.com"

        # The worker believes the data plane holds a certificate it does not (as after a missed push):
        # the data plane refuses the delta (412) and the worker pushes the full snapshot at once.
        worker.acked = replace(target, certificates=(*target.certificates, certs["d.example.com"]))
        final = snap(certs, ("a.example.com", "d.example.com"), 0)
        publisher.update(["127.0.0.1"], final)
        await eventually(lambda: dataplane.checksum == final.checksum and worker.acked is final)
        assert len(worker.pushed_bytes) == 3
        assert worker.pushed_bytes[-1] > delta  # the refused delta plus the full snapshot
        assert await served(dataplane, "d.example.com") == "d.example.com"


async def test_a_snapshot_wanted_during_a_push_is_pushed_right_after_it(
        dataplane: DataPlane, certs: dict[str, Certificate]) -> None:
    first = snap(certs, ("a.example.com",), 0)
    second = snap(certs, ("a.example.com", "b.example.com"), 0)
    async with Publisher(PushConfig(port=dataplane.admin_port, token=TOKEN, resync=60)) as publisher:
        publisher.update(["127.0.0.1"], first)
        worker = publisher.workers["127.0.0.1"]
        send, entered, gate = worker._send, asyncio.Event(), asyncio.Event()

        async def held(method: str, body: bytes) -> tuple[int, str]:
            entered.set()
            await gate.wait()
            return await send(method, body)

        worker._send = held  # type: ignore[method-assign]
        await asyncio.wait_for(entered.wait(), 10)
        publisher.update(["127.0.0.1"], second)  # arrives while the first push is in flight
        started = asyncio.get_running_loop().time()
        await publisher.wait_synced(0.3)  # not in sync: returns at its timeout
        assert asyncio.get_running_loop().time() - started >= 0.25
        gate.set()
        await eventually(lambda: dataplane.checksum == second.checksum, timeout=5)  # not after resync (60 s)
        await asyncio.wait_for(publisher.wait_synced(60), 5)  # in sync: returns when the push is confirmed
        assert publisher.in_sync() == {"127.0.0.1": True}
