"""The admin API (contracts.md section 3): authentication, validation, staleness, health, metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from dataplane.admin import AdminConfigError, bearer_ok
from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.snapshot import Snapshot
from tests.integration.conftest import TOKEN, certificate, terminate_host
from tests.pki import CA


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def url(dp: DataPlane, path: str) -> str:
    return f"http://127.0.0.1:{dp.admin_port}{path}"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def snapshot(ca: CA, generation: int) -> Snapshot:
    web = certificate(ca.issue("web.example.com"), "web.example.com")
    return Snapshot(generation=generation, certificates=(web,),
                    tls_hosts=(terminate_host("web.example.com", web),)).canonical()


async def test_readyz_before_and_after_first_snapshot(dataplane: DataPlane, http: aiohttp.ClientSession,
                                                      ca: CA) -> None:
    async with http.get(url(dataplane, "/livez")) as r:
        assert r.status == 200
    async with http.get(url(dataplane, "/readyz")) as r:
        assert r.status == 503
    async with http.get(url(dataplane, "/snapshot"), headers=auth()) as r:
        assert r.status == 200
        assert await r.json() == {"generation": 0, "checksum": None}
    snap = snapshot(ca, 3)
    async with http.put(url(dataplane, "/snapshot"), data=snap.to_json(), headers=auth()) as r:
        assert r.status == 200
        assert await r.json() == {"generation": 3, "checksum": snap.checksum}
    async with http.get(url(dataplane, "/readyz")) as r:
        assert r.status == 200
    async with http.get(url(dataplane, "/snapshot"), headers=auth()) as r:
        assert await r.json() == {"generation": 3, "checksum": snap.checksum}


async def test_put_without_or_with_wrong_token_is_401_and_changes_nothing(
    dataplane: DataPlane, http: aiohttp.ClientSession, ca: CA
) -> None:
    body = snapshot(ca, 1).to_json()
    async with http.put(url(dataplane, "/snapshot"), data=body) as r:
        assert r.status == 401
    async with http.put(url(dataplane, "/snapshot"), data=body, headers=auth("wrong")) as r:
        assert r.status == 401
    async with http.put(url(dataplane, "/snapshot"), data=body, headers={"Authorization": TOKEN}) as r:
        assert r.status == 401
    async with http.get(url(dataplane, "/snapshot")) as r:
        assert r.status == 401
    assert not dataplane.ready and dataplane.generation == 0


async def test_invalid_snapshot_is_422_with_reasons_and_old_one_keeps_serving(
    dataplane: DataPlane, http: aiohttp.ClientSession, ca: CA
) -> None:
    good = snapshot(ca, 1)
    async with http.put(url(dataplane, "/snapshot"), data=good.to_json(), headers=auth()) as r:
        assert r.status == 200
    bad = json.loads(snapshot(ca, 2).to_json())
    bad["tls_hosts"][0]["certificate_id"] = "sha256:missing"
    bad["checksum"] = ""
    async with http.put(url(dataplane, "/snapshot"), data=json.dumps(bad), headers=auth()) as r:
        assert r.status == 422
        errors = (await r.json())["errors"]
        assert any("sha256:missing" in e for e in errors)
    async with http.put(url(dataplane, "/snapshot"), data=b"{not json", headers=auth()) as r:
        assert r.status == 422
    bad_field = {"schema": 1, "generation": 5, "tls_hosts": [{"host": "a.example.com", "bogus": 1}]}
    async with http.put(url(dataplane, "/snapshot"), data=json.dumps(bad_field), headers=auth()) as r:
        assert r.status == 422
    tampered = json.loads(snapshot(ca, 6).to_json())
    tampered["checksum"] = "sha256:" + "0" * 64
    async with http.put(url(dataplane, "/snapshot"), data=json.dumps(tampered), headers=auth()) as r:
        assert r.status == 422
    assert dataplane.checksum == good.checksum
    assert dataplane.generation == 1


async def test_stale_generation_is_409(dataplane: DataPlane, http: aiohttp.ClientSession, ca: CA) -> None:
    async with http.put(url(dataplane, "/snapshot"), data=snapshot(ca, 5).to_json(), headers=auth()) as r:
        assert r.status == 200
    async with http.put(url(dataplane, "/snapshot"), data=snapshot(ca, 4).to_json(), headers=auth()) as r:
        assert r.status == 409
        assert (await r.json())["generation"] == 5
    async with http.put(url(dataplane, "/snapshot"), data=snapshot(ca, 5).to_json(), headers=auth()) as r:
        assert r.status == 200  # the same generation again is an idempotent re-push
    assert dataplane.generation == 5


async def test_metrics_exposes_apply_results(dataplane: DataPlane, http: aiohttp.ClientSession, ca: CA) -> None:
    async with http.put(url(dataplane, "/snapshot"), data=snapshot(ca, 2).to_json(), headers=auth()) as r:
        assert r.status == 200
    async with http.get(url(dataplane, "/metrics")) as r:
        assert r.status == 200
        text = await r.text()
    assert "portcullis_snapshot_generation 2.0" in text
    assert 'portcullis_snapshot_applies_total{result="applied"} 1.0' in text
    assert "portcullis_certificate_not_after_seconds{" in text


async def test_plain_admin_on_a_public_bind_refuses_to_start() -> None:
    dp = DataPlane(DataPlaneConfig(bind="0.0.0.0", https_port=0, http_port=0, admin_port=0, admin_token=TOKEN))
    with pytest.raises(AdminConfigError, match="plain HTTP"):
        await dp.start()
    dp2 = DataPlane(DataPlaneConfig(bind="127.0.0.1", https_port=0, http_port=0, admin_port=0,
                                    admin_cert_file="/nonexistent.crt"))
    with pytest.raises(AdminConfigError, match="together"):
        await dp2.start()


def test_bearer_check() -> None:
    assert bearer_ok("Bearer abc", "abc")
    assert bearer_ok("bearer abc", "abc")
    assert not bearer_ok("Bearer abd", "abc")
    assert not bearer_ok("Basic abc", "abc")
    assert not bearer_ok(None, "abc")
    assert not bearer_ok("Bearer ", "")
    assert not bearer_ok("Bearer abc", None)


# ---------------------------------------------------------------------------- bounds (issue 10 item 7)


async def assert_serving(dp: DataPlane, http: aiohttp.ClientSession, good: Snapshot) -> None:
    assert dp.checksum == good.checksum and dp.generation == good.generation
    async with http.get(url(dp, "/readyz")) as r:
        assert r.status == 200


async def test_deep_json_is_422_not_a_traceback_and_the_old_snapshot_serves(
    dataplane: DataPlane, http: aiohttp.ClientSession, ca: CA
) -> None:
    good = snapshot(ca, 1)
    async with http.put(url(dataplane, "/snapshot"), data=good.to_json(), headers=auth()) as r:
        assert r.status == 200
    depth = 200_000
    bodies = [b"[" * depth + b"]" * depth,
              b'{"schema": 1, "generation": 2, "tls_hosts": ' + b"[" * depth + b"]" * depth + b"}",
              b'{"a":' * depth + b"1" + b"}" * depth]
    for method in ("PUT", "PATCH"):  # a full snapshot and a delta
        for body in bodies:
            async with http.request(method, url(dataplane, "/snapshot"), data=body, headers=auth()) as r:
                text = await r.text()
                assert r.status == 422, (method, text[:300])
                assert "Traceback" not in text and "nested" in text
    await assert_serving(dataplane, http, good)


@pytest.mark.parametrize("generation", [2**70, 2**53 + 1, -1, -(2**70)])
async def test_generation_outside_2_53_is_422_and_a_later_normal_push_applies(
    dataplane: DataPlane, http: aiohttp.ClientSession, ca: CA, generation: int
) -> None:
    good = snapshot(ca, 7)
    async with http.put(url(dataplane, "/snapshot"), data=good.to_json(), headers=auth()) as r:
        assert r.status == 200
    wild = json.loads(snapshot(ca, 8).to_json())
    wild["generation"] = generation
    async with http.put(url(dataplane, "/snapshot"), data=json.dumps(wild), headers=auth()) as r:
        assert r.status == 422, await r.text()
        assert "generation" in " ".join((await r.json())["errors"])
    await assert_serving(dataplane, http, good)
    following = snapshot(ca, 8)
    async with http.put(url(dataplane, "/snapshot"), data=following.to_json(), headers=auth()) as r:
        assert r.status == 200  # not 409: the wild generation left no trace
    assert dataplane.generation == 8 and dataplane.checksum == following.checksum


async def test_generation_of_the_wrong_type_is_422(dataplane: DataPlane, http: aiohttp.ClientSession,
                                                   ca: CA) -> None:
    for value in ("8", 8.5, True, None, "9" * 5000):
        wild = json.loads(snapshot(ca, 8).to_json())
        wild["generation"] = value
        async with http.put(url(dataplane, "/snapshot"), data=json.dumps(wild), headers=auth()) as r:
            assert r.status == 422, (value, await r.text())
    huge_literal = snapshot(ca, 8).to_json().replace('"generation":8', '"generation":' + "9" * 5000)
    async with http.put(url(dataplane, "/snapshot"), data=huge_literal, headers=auth()) as r:
        assert r.status == 422, await r.text()
    assert not dataplane.ready


async def test_body_over_the_admin_limit_is_413_and_the_old_snapshot_serves(http: aiohttp.ClientSession,
                                                                            ca: CA) -> None:
    good = snapshot(ca, 1)
    limit = len(good.to_json()) + 1024
    dp = DataPlane(DataPlaneConfig(bind="127.0.0.1", https_port=0, http_port=0, admin_port=0, admin_token=TOKEN,
                                   admin_max_body=limit))
    await dp.start()
    try:
        async with http.put(url(dp, "/snapshot"), data=good.to_json(), headers=auth()) as r:
            assert r.status == 200
        padded = json.loads(snapshot(ca, 2).to_json())
        padded["padding"] = "x" * limit
        async with http.put(url(dp, "/snapshot"), data=json.dumps(padded), headers=auth()) as r:
            assert r.status == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
            for _ in range(limit // 1000 + 2):
                yield b" " * 1000

        async with http.put(url(dp, "/snapshot"), data=chunks(), headers=auth()) as r:
            assert r.status == 413
        await assert_serving(dp, http, good)
    finally:
        await dp.stop(drain_timeout=0)


async def test_if_none_match_star_fills_only_an_empty_data_plane(dataplane: DataPlane,
                                                                 http: aiohttp.ClientSession, ca: CA) -> None:
    """What a controller that is not leading sends: it may fill an empty data plane, never overwrite one."""
    fill = {**auth(), "If-None-Match": "*"}
    first = snapshot(ca, 3)
    async with http.put(url(dataplane, "/snapshot"), data=first.to_json(), headers=fill) as r:
        assert r.status == 200
    async with http.put(url(dataplane, "/snapshot"), data=snapshot(ca, 9).to_json(), headers=fill) as r:
        assert r.status == 412
        assert (await r.json())["checksum"] == first.checksum
    async with http.put(url(dataplane, "/snapshot"), data=snapshot(ca, 9).to_json(),
                        headers={"If-None-Match": "*"}) as r:
        assert r.status == 401  # no token, no state
    await assert_serving(dataplane, http, first)
