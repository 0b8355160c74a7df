"""gRPC end to end: a grpcio client -> the data plane (offload host, TLS with ALPN h2) -> a grpcio
backend, plaintext (h2c) or over TLS (reencrypt). Both ends are grpcio, an independent HTTP/2 and
gRPC implementation: messages, streaming both ways, status and message in trailers, deadlines
(``grpc-timeout``) and the data plane's own errors mapped to gRPC statuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest

from dataplane.runtime import DataPlane
from dataplane.snapshot import CABundle, Endpoint, Pool, Route, Snapshot, UpstreamTLS, VirtualHost, content_id
from tests.integration.conftest import certificate, running_dataplane, terminate_host
from tests.integration.grpc_backends import FAIL_MESSAGE, GRPCBackend, method, start_grpc
from tests.pki import CA

HOST = "grpc.test"
BACKEND_NAME = "grpc-backend.demo.svc"


@pytest.fixture(scope="module")
def pki() -> dict[str, CA]:
    return {"front": CA("gRPC Front CA"), "backend": CA("gRPC Backend CA")}


def grpc_snapshot(pki: dict[str, CA], *endpoints: Endpoint, tls: bool = False, generation: int = 1) -> Snapshot:
    front = certificate(pki["front"].issue(HOST), HOST)
    bundle = CABundle(content_id(pki["backend"].cert_pem), pki["backend"].cert_pem)
    upstream_tls = UpstreamTLS(BACKEND_NAME, bundle.id) if tls else None
    pool = Pool("demo/grpc:50051", tuple(endpoints), upstream_tls, protocol="h2",
                unavailable="" if endpoints else "no ready endpoints for demo/grpc")
    return Snapshot(
        generation=generation,
        certificates=(front,),
        ca_bundles=(bundle,),
        pools=(pool,),
        tls_hosts=(terminate_host(HOST, front),),
        virtual_hosts=(VirtualHost(HOST, (Route("/", "Prefix", pool.id),), tls=True),),
    ).canonical()


@pytest.fixture
async def plane() -> AsyncIterator[DataPlane]:
    async with running_dataplane(drain_timeout=0.5) as dp:
        yield dp


@pytest.fixture
async def backend() -> AsyncIterator[GRPCBackend]:
    server = await start_grpc()
    try:
        yield server
    finally:
        await server.stop()


def channel(dp: DataPlane, pki: dict[str, CA]) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=pki["front"].cert_pem.encode())
    return grpc.aio.secure_channel(f"127.0.0.1:{dp.https_port}", creds, options=[
        ("grpc.ssl_target_name_override", HOST), ("grpc.default_authority", HOST),
    ])


async def test_unary_streaming_bidi_status_and_deadline_through_offload(
    plane: DataPlane, backend: GRPCBackend, pki: dict[str, CA]
) -> None:
    assert plane.apply(grpc_snapshot(pki, backend.endpoint)) == []
    async with channel(plane, pki) as ch:
        unary = ch.unary_unary(method("Unary"))
        payload = bytes(range(256)) * 4000  # ~1 MiB: several DATA frames and window updates both ways
        assert await unary(payload, timeout=10) == payload
        assert await unary(b"", timeout=10) == b""

        stream = ch.unary_stream(method("ServerStream"))
        got = [m async for m in stream(b"100", timeout=10)]
        assert got == [b"msg-%d" % i for i in range(100)]

        bidi = ch.stream_stream(method("Bidi"))
        call = bidi(timeout=10)
        for i in range(50):  # strict round trips: each answer arrives before the next request goes
            await call.write(b"ping-%d" % i)
            assert await call.read() == b"ping-%d" % i
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK

        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ch.unary_unary(method("Fail"))(b"x", timeout=10)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == FAIL_MESSAGE  # grpc-message, percent-encoded, intact end to end

        started = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await ch.unary_unary(method("Sleep"))(b"5", timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert asyncio.get_running_loop().time() - started < 3
        for _ in range(300):  # the cancel reaches the backend as RST_STREAM: its handler is cancelled
            if backend.calls.cancelled:
                break
            await asyncio.sleep(0.01)
        assert backend.calls.cancelled == 1
        assert await unary(b"still fine", timeout=10) == b"still fine"  # the connections survived it


async def test_concurrent_calls_share_one_backend_connection(
    plane: DataPlane, backend: GRPCBackend, pki: dict[str, CA]
) -> None:
    assert plane.apply(grpc_snapshot(pki, backend.endpoint)) == []
    async with channel(plane, pki) as ch:
        unary = ch.unary_unary(method("Unary"))
        answers = await asyncio.gather(*(unary(b"n%d" % i, timeout=10) for i in range(40)))
        assert answers == [b"n%d" % i for i in range(40)]
    upstream = plane._table_ref.table.upstreams["demo/grpc:50051"]  # the engine's pool: no public view of it
    assert upstream.connects == 1  # 40 concurrent calls, multiplexed on one backend connection


async def test_reencrypt_to_a_tls_grpc_backend(plane: DataPlane, pki: dict[str, CA]) -> None:
    server = await start_grpc(tls=pki["backend"].issue(BACKEND_NAME))
    try:
        assert plane.apply(grpc_snapshot(pki, server.endpoint, tls=True)) == []
        async with channel(plane, pki) as ch:
            assert await ch.unary_unary(method("Unary"))(b"over tls", timeout=10) == b"over tls"
            got = [m async for m in ch.unary_stream(method("ServerStream"))(b"10", timeout=10)]
            assert len(got) == 10
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await ch.unary_unary(method("Fail"))(b"x", timeout=10)
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND and failed.value.details() == FAIL_MESSAGE
    finally:
        await server.stop()


async def test_a_pool_without_endpoints_is_unavailable(plane: DataPlane, pki: dict[str, CA]) -> None:
    assert plane.apply(grpc_snapshot(pki)) == []
    async with channel(plane, pki) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(method("Unary"))(b"x", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE



BUSY_CALLS = 2000  # unary calls on one channel, as fast as the client can (grpcio: ~2 WINDOW_UPDATEs per call)
BUSY_IN_FLIGHT = 64


@pytest.mark.parametrize("base", [1000, 250])  # the default, and one any box's call rate goes past
async def test_a_busy_channel_is_not_taken_for_a_window_update_flood(
    backend: GRPCBackend, pki: dict[str, CA], monkeypatch: pytest.MonkeyPatch, base: int
) -> None:
    """grpcio sends WINDOW_UPDATEs for every response it reads: a flat 1,000 a second ended a channel doing 700
    calls a second with GOAWAY ENHANCE_YOUR_CALM. Now each request frame earns an allowance (guard.py), so
    2,000 calls on one connection pass with no violation and no second connection (grpcio retries calls a
    GOAWAY refused on a new connection, so "all calls OK" alone would not show it). The spy records the checks
    made once the client went past the base rate in a second, where a flat limit would have ended it: with a
    base of 250 that happens at any call rate above ~125 a second, so the allowance is surely exercised."""
    import dataplane.http2.guard as guard

    beyond_base: list[int] = []
    over = guard._over

    def spy(count: int, limit: int, requests: int) -> bool:
        if count > limit:
            beyond_base.append(requests)
        return over(count, limit, requests)

    monkeypatch.setattr(guard, "_over", spy)
    async with running_dataplane(drain_timeout=0.5, h2_max_window_updates_per_second=base) as plane:
        assert plane.apply(grpc_snapshot(pki, backend.endpoint)) == []
        registry = plane.metrics.registry
        async with channel(plane, pki) as ch:
            unary = ch.unary_unary(method("Unary"))
            gate = asyncio.Semaphore(BUSY_IN_FLIGHT)

            async def call(i: int) -> bytes:
                async with gate:
                    return bytes(await unary(b"call-%d" % i, timeout=30))

            loop = asyncio.get_running_loop()
            started = loop.time()
            answers = await asyncio.gather(*(call(i) for i in range(BUSY_CALLS)))
            elapsed = loop.time() - started
        assert answers == [b"call-%d" % i for i in range(BUSY_CALLS)]
        print(f"\nbase {base}: {BUSY_CALLS} unary calls in {elapsed:.2f} s = {BUSY_CALLS / elapsed:,.0f}/s on one "
              f"channel; WINDOW_UPDATEs past the base rate: {len(beyond_base)}")
        violations = [(s.labels, s.value) for f in registry.collect() if f.name == "portcullis_h2_violations"
                      for s in f.samples if s.name.endswith("_total") and s.value]
        assert violations == []
        assert registry.get_sample_value("portcullis_h2_connections_total") == 1
    if base < 1000:
        assert beyond_base, "the client never went past the base rate: the test proved nothing"


def with_limits(snap: Snapshot, max_body_size: int = -1, read_timeout: float = 60.0) -> Snapshot:
    """``snap`` with every route's body limit and every pool's read timeout set."""
    pools = tuple(replace(p, read_timeout=read_timeout) for p in snap.pools)
    vhosts = tuple(replace(v, routes=tuple(replace(r, max_body_size=max_body_size) for r in v.routes))
                   for v in snap.virtual_hosts)
    return replace(snap, pools=pools, virtual_hosts=vhosts).canonical()


async def test_a_request_message_past_the_body_limit_is_resource_exhausted(
    plane: DataPlane, backend: GRPCBackend, pki: dict[str, CA]
) -> None:
    """gRPC calls meet the per-request limits of any request, as in ingress-nginx; the client learns which."""
    assert plane.apply(with_limits(grpc_snapshot(pki, backend.endpoint), max_body_size=64 * 1024)) == []
    async with channel(plane, pki) as ch:
        unary = ch.unary_unary(method("Unary"))
        assert bytes(await unary(b"x" * 1000, timeout=10)) == b"x" * 1000  # below the limit: served
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(b"x" * (256 * 1024), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.value.code(), err.value.details())
        assert "too large" in (err.value.details() or "")
        assert bytes(await unary(b"y", timeout=10)) == b"y"  # the connection still serves


async def test_a_backend_silent_past_the_read_timeout_is_unavailable(
    plane: DataPlane, backend: GRPCBackend, pki: dict[str, CA]
) -> None:
    assert plane.apply(with_limits(grpc_snapshot(pki, backend.endpoint), read_timeout=0.5)) == []
    async with channel(plane, pki) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(method("Sleep"))(b"3", timeout=10)  # the backend answers after 3 s
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (err.value.code(), err.value.details())
        assert "timed out" in (err.value.details() or "")
