"""HTTP/1.1 clients through the HTTP engine to backends that speak HTTP/2 (``Pool.protocol == "h2"``).

The backend is a small HTTP/2 server on the ``h2`` library over real sockets (cleartext h2c with prior
knowledge, or TLS with ALPN ``h2``), so every request really crosses an HTTP/2 connection: HPACK,
flow control (a 1 MiB response is larger than any initial window), trailers and RST_STREAM.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset, WindowUpdated

from dataplane import pem
from dataplane.snapshot import Endpoint, TLSHost, UpstreamTLS
from tests.integration.http_fixtures import (
    LOCAL,
    Client,
    ca_bundle,
    client_context,
    free_port,
    pool,
    proxy,
    server_context,
    snapshot,
    vhost,
)
from tests.integration.http_fixtures import EchoBackend as H2Backend  # the same record, whatever it speaks
from tests.pki import CA

LOOPS = ("asyncio", "uvloop")  # production runs uvloop, whose transports differ in detail
BACKEND_NAME = "h2-web.demo.svc"
MIB = 1024 * 1024


def pattern(n: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


# --- the HTTP/2 backend ------------------------------------------------------------------------


class _H2Server(asyncio.Protocol):
    """Answers by path: ``/bytes/N`` N bytes; ``/trailers`` a body then trailers; ``/reset`` RST_STREAM;
    anything else a JSON record of what arrived (headers, body length and hash)."""

    def __init__(self, backend: H2Backend) -> None:
        self.backend = backend
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.out: dict[int, tuple[bytearray, list[tuple[bytes, bytes]] | None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.backend.connections += 1
        self.h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, RequestReceived) and event.stream_id is not None:
                self.heads[event.stream_id] = dict(event.headers or [])
                self.bodies[event.stream_id] = bytearray()
                if self.heads[event.stream_id][b":path"] == b"/reset":
                    self.h2.reset_stream(event.stream_id, ErrorCodes.INTERNAL_ERROR)
                    del self.heads[event.stream_id]
            elif isinstance(event, DataReceived) and event.stream_id in self.bodies:
                self.bodies[event.stream_id] += event.data or b""
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            elif isinstance(event, StreamEnded) and event.stream_id in self.heads:
                self._respond(event.stream_id)
            elif isinstance(event, StreamReset) and event.stream_id is not None:
                self.out.pop(event.stream_id, None)
            elif isinstance(event, WindowUpdated):
                pass
        self._send_pending()
        self._flush()

    def _respond(self, sid: int) -> None:
        head = self.heads.pop(sid)
        body = bytes(self.bodies.pop(sid))
        path = head[b":path"].decode()
        record = {
            "headers": {k.decode(): v.decode("latin-1") for k, v in head.items()},
            "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        self.backend.requests.append(record)
        if path.startswith("/bytes/"):
            data = pattern(int(path.split("/")[2]))
            self.h2.send_headers(sid, [(b":status", b"200"), (b"content-length", b"%d" % len(data))])
            self.out[sid] = (bytearray(data), None)
        elif path == "/trailers":
            self.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
            self.out[sid] = (bytearray(b"streamed"), [(b"grpc-status", b"0"), (b"x-checksum", b"abc123")])
        else:
            data = json.dumps(record).encode()
            self.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/json"),
                                       (b"content-length", b"%d" % len(data))])
            self.out[sid] = (bytearray(data), None)

    def _send_pending(self) -> None:
        for sid, (data, trailers) in list(self.out.items()):
            while data:
                n = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size, len(data))
                if n <= 0:
                    break
                self.h2.send_data(sid, bytes(data[:n]))
                del data[:n]
            if not data:
                del self.out[sid]
                if trailers:
                    self.h2.send_headers(sid, trailers, end_stream=True)
                else:
                    self.h2.end_stream(sid)

    def _flush(self) -> None:
        out = self.h2.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)


async def start_h2(ssl_context: ssl.SSLContext | None = None) -> H2Backend:
    backend = H2Backend()
    loop = asyncio.get_running_loop()
    backend.server = await loop.create_server(lambda: _H2Server(backend), LOCAL, 0, ssl=ssl_context)
    backend.port = backend.server.sockets[0].getsockname()[1]
    return backend


def h2_server_context(issued: Any, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pem.load_key_pair(ctx, issued.cert_pem, issued.key_pem)
    ctx.set_alpn_protocols(alpn)
    return ctx


@pytest.fixture
async def h2c() -> Any:
    backend = await start_h2()
    yield backend
    backend.close()


def h2_snapshot(*endpoints: Endpoint, tls: UpstreamTLS | None = None, cas: tuple[Any, ...] = (),
                tls_hosts: tuple[TLSHost, ...] = ()) -> Any:
    return snapshot([vhost("app.test", ("/", "Prefix", "h2"))],
                    [pool("h2", *endpoints, tls=tls, protocol="h2")], tls_hosts=tls_hosts, cas=cas)


async def raw_exchange(port: int, request: bytes, ctx: ssl.SSLContext | None = None) -> bytes:
    """Send one request with ``Connection: close`` and read everything until the proxy closes."""
    reader, writer = await asyncio.open_connection(LOCAL, port, ssl=ctx, server_hostname="app.test" if ctx else None)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    return data


# --- tests ------------------------------------------------------------------------------------------


async def test_get_and_posts_reach_an_h2c_backend_on_one_multiplexed_connection(h2c: H2Backend) -> None:
    async with proxy(h2_snapshot(h2c.endpoint)) as px:
        clients = [await Client.open(px.port) for _ in range(3)]
        r = await clients[0].get("/hello?x=1")
        assert r.status == 200
        seen = r.json()["headers"]
        assert seen[":method"] == "GET" and seen[":path"] == "/hello?x=1" and seen[":scheme"] == "http"
        assert seen[":authority"] == "app.test" and seen["te"] == "trailers" and "x-forwarded-for" in seen
        body = pattern(300_000)
        await clients[1].send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n%b"
                              % (len(body), body))
        r = await clients[1].response()
        assert r.json()["body_len"] == len(body)
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert r.json()["headers"]["content-length"] == str(len(body))
        await clients[2].send(b"POST /chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        r = await clients[2].response()
        assert r.json()["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
        assert "transfer-encoding" not in r.json()["headers"]
        # three client connections, concurrent requests: one backend connection
        results = await asyncio.gather(*(c.get(f"/c/{i}") for i, c in enumerate(clients)))
        assert [x.status for x in results] == [200, 200, 200]
        assert h2c.connections == 1 and px.table.upstreams["h2"].connects == 1
        for c in clients:
            await c.close()


async def test_a_one_mib_response_crosses_the_flow_control_windows(h2c: H2Backend) -> None:
    async with proxy(h2_snapshot(h2c.endpoint)) as px:
        client = await Client.open(px.port)
        r = await client.get(f"/bytes/{MIB}")
        assert r.status == 200 and r.header("content-length") == str(MIB) and r.body == pattern(MIB)
        await client.close()


async def test_trailers_reach_an_http11_client_in_the_last_chunk(h2c: H2Backend) -> None:
    async with proxy(h2_snapshot(h2c.endpoint)) as px:
        out = await raw_exchange(px.port, b"GET /trailers HTTP/1.1\r\nHost: app.test\r\nTE: trailers\r\n"
                                          b"Connection: close\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    assert body == b"8\r\nstreamed\r\n0\r\ngrpc-status: 0\r\nx-checksum: abc123\r\n\r\n", body


async def test_a_stream_reset_by_the_backend_is_a_502(h2c: H2Backend) -> None:
    async with proxy(h2_snapshot(h2c.endpoint)) as px:
        client = await Client.open(px.port)
        r = await client.get("/reset")
        assert r.status == 502 and b"reset" in r.body
        assert px.metric("portcullis_upstream_failures_total", pool="h2", reason="reset") == 1
        other = await Client.open(px.port)
        assert (await other.get("/after")).status == 200  # the connection survived the reset of one stream
        assert h2c.connections == 1
        await other.close()
        await client.close()


async def test_a_dead_endpoint_is_502_and_a_pool_without_endpoints_503() -> None:
    async with proxy(h2_snapshot(Endpoint(LOCAL, free_port()))) as px:
        client = await Client.open(px.port)
        r = await client.get("/")
        assert r.status == 502 and b"refused" in r.body
        assert px.metric("portcullis_upstream_failures_total", pool="h2", reason="connect_refused") >= 1
    async with proxy(h2_snapshot()) as px:
        client = await Client.open(px.port)
        assert (await client.get("/")).status == 503


async def test_offload_front_to_h2c_backend(h2c: H2Backend) -> None:
    front_ca = CA("Front CA")
    row = TLSHost("app.test", "terminate")
    snap = snapshot([vhost("app.test", ("/", "Prefix", "h2"), tls=True)], [pool("h2", h2c.endpoint, protocol="h2")],
                    tls_hosts=(row,))
    async with proxy(snap, "https", server_context(front_ca.issue("app.test")), tls_host=row) as px:
        client = await Client.open(px.port, client_context(front_ca), "app.test")
        r = await client.get("/secure")
        assert r.status == 200 and r.json()["headers"]["x-forwarded-proto"] == "https"
        assert r.json()["headers"][":scheme"] == "http"  # the hop to the backend is cleartext
        await client.close()


async def test_tls_backend_with_alpn_h2_is_verified_and_a_bad_certificate_is_a_502() -> None:
    ca, other = CA("Backend CA"), CA("Unrelated CA")
    backend = await start_h2(h2_server_context(ca.issue(BACKEND_NAME), ["h2"]))
    try:
        tls = UpstreamTLS(BACKEND_NAME, ca_bundle(ca).id)
        async with proxy(h2_snapshot(backend.endpoint, tls=tls, cas=(ca_bundle(ca),))) as px:
            client = await Client.open(px.port)
            r = await client.get("/tls")
            assert r.status == 200 and r.json()["headers"][":scheme"] == "https"
            assert (await client.get(f"/bytes/{MIB}")).body == pattern(MIB)
            await client.close()
        bad = UpstreamTLS(BACKEND_NAME, ca_bundle(other).id)
        async with proxy(h2_snapshot(backend.endpoint, tls=bad, cas=(ca_bundle(other),))) as px:
            client = await Client.open(px.port)
            r = await client.get("/tls")
            assert r.status == 502 and b"verification failed" in r.body
            assert px.metric("portcullis_upstream_failures_total", pool="h2", reason="tls_verify") >= 1
            await client.close()
    finally:
        backend.close()


async def test_a_tls_backend_that_does_not_select_h2_is_a_502() -> None:
    ca = CA("Backend CA")
    backend = await start_h2(h2_server_context(ca.issue(BACKEND_NAME), ["http/1.1"]))
    try:
        tls = UpstreamTLS(BACKEND_NAME, ca_bundle(ca).id)
        async with proxy(h2_snapshot(backend.endpoint, tls=tls, cas=(ca_bundle(ca),))) as px:
            client = await Client.open(px.port)
            r = await client.get("/")
            assert r.status == 502 and b"backend did not negotiate HTTP/2" in r.body
            await client.close()
    finally:
        backend.close()
