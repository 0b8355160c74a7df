"""``HTTPProtocol`` driven through fake transports (uvicorn's ``tests/protocols/test_http.py`` style).

The client side is a recording transport; the backend is a real ``UpstreamConnection`` on a recording
transport, put in its pool's idle list, so both sides run the real framing code and a test decides,
byte by byte, what the backend answers and when. Nothing touches the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from dataplane.http.connection import ConnectionInfo, HTTPProtocol
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import HTTPTable, build_http_table
from dataplane.http.upstream import Upstream, UpstreamConnection
from dataplane.metrics import Metrics
from dataplane.snapshot import Endpoint
from tests.integration.http_fixtures import pool, snapshot, vhost

EP = Endpoint("127.0.0.1", 9)  # never connected to: the backend connection is the fake below


class FakeTransport:
    """Records writes (each piece as written), pause/resume, half-close and close."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.paused = False
        self.closed = False
        self.aborted = False
        self.eof = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)

    def take(self) -> bytes:
        out = b"".join(self.writes)
        self.writes.clear()
        return out

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 0


@dataclass
class Rig:
    proto: HTTPProtocol
    client: FakeTransport
    backend: FakeTransport
    conn: UpstreamConnection
    upstream: Upstream
    table: HTTPTable

    def send(self, data: bytes) -> None:
        self.proto.data_received(data)

    def respond(self, data: bytes) -> None:
        self.conn.data_received(data)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = await make_rig(HTTPSettings())
    yield r
    r.upstream.close_idle()


async def make_rig(settings: HTTPSettings) -> Rig:
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", EP)])
    metrics = Metrics()
    table = build_http_table(snap, None, metrics, settings)
    upstream = table.upstreams["p"]
    backend = FakeTransport()
    conn = UpstreamConnection(upstream, EP, asyncio.get_running_loop())
    conn.connection_made(backend)  # type: ignore[arg-type]
    upstream.put_idle(conn)
    proto = HTTPProtocol(table, ConnectionInfo("http"), metrics)
    client = FakeTransport()
    proto.connection_made(client)  # type: ignore[arg-type]
    return Rig(proto, client, backend, conn, upstream, table)


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: app.test\r\n%b\r\n" % (path.encode(), extra)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def request_lines(wire: bytes) -> list[bytes]:
    return [line for line in wire.split(b"\r\n") if line.startswith((b"GET ", b"POST "))]


# --- the common path -----------------------------------------------------------------------------


async def test_keep_alive_exchange_reuses_the_backend_connection(rig: Rig) -> None:
    for i in range(3):
        rig.send(get(f"/r{i}"))
        assert request_lines(rig.backend.take()) == [b"GET /r%d HTTP/1.1" % i]
        rig.respond(OK)
        out = rig.client.take()
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhello")
    assert not rig.client.closed and rig.upstream.connects == 0  # the one pooled connection served all three


async def test_content_length_body_is_forwarded_without_a_copy(rig: Rig) -> None:
    rig.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\n")
    rig.backend.take()
    piece = b"0123456789"
    rig.send(piece)
    assert rig.backend.writes == [piece] and rig.backend.writes[0] is piece  # the very same object


# --- the pipelining invariant --------------------------------------------------------------------


async def test_backend_never_sees_request_n_plus_1_before_response_n_is_complete(rig: Rig) -> None:
    rig.send(get("/a") + b"POST /b HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc" + get("/c"))
    assert request_lines(rig.backend.take()) == [b"GET /a HTTP/1.1"]
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")  # response /a under way
    assert rig.backend.take() == b""
    rig.respond(b"lo")  # response /a complete: now /b, with its body and nothing of /c
    wire = rig.backend.take()
    assert request_lines(wire) == [b"POST /b HTTP/1.1"] and wire.endswith(b"\r\n\r\nabc")
    rig.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
    assert rig.backend.take() == b""  # chunked response /b not finished yet
    rig.respond(b"0\r\n\r\n")
    assert request_lines(rig.backend.take()) == [b"GET /c HTTP/1.1"]
    rig.respond(OK)
    assert rig.client.take().count(b"HTTP/1.1 200 OK") == 3


async def test_bytes_after_a_framed_response_make_the_backend_connection_unusable(rig: Rig) -> None:
    rig.send(get("/a"))
    rig.respond(OK + b"HTTP/1.1 200 OK\r\n")  # more than the declared length: out of step
    assert rig.backend.closed and rig.upstream.take_idle(EP) is None


# --- framing errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: app.test\n", 400),  # bare LF: refused before any blank line
        (b"GET / HTTP/1.1\r\nHost: app.test\rX", 400),  # bare CR
        (b"GET /" + b"a" * 9000, 414),  # request line over the limit, no CRLF yet
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101, 431),  # header count over the limit, head incomplete
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 33000, 431),  # header bytes over the limit
        (b"GET / HTTP/2.0\r\nHost: app.test\r\n\r\n", 505),
    ],
)
async def test_framing_errors_are_answered_and_never_forwarded(rig: Rig, wire: bytes, status: int) -> None:
    rig.send(wire)
    assert rig.client.take().startswith(b"HTTP/1.1 %d " % status)
    assert rig.client.closed
    assert rig.backend.take() == b""


async def test_leading_empty_lines_before_a_request_are_skipped(rig: Rig) -> None:
    rig.send(b"\r\n\r\n" + get("/a"))
    assert request_lines(rig.backend.take()) == [b"GET /a HTTP/1.1"]


async def test_malformed_chunked_request_body_resets_the_backend(rig: Rig) -> None:
    rig.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert rig.backend.take().endswith(b"5\r\nhello\r\n")
    rig.send(b"zz\r\n")
    assert rig.client.take().startswith(b"HTTP/1.1 400 ")
    assert rig.backend.aborted  # the backend holds a partial request: that connection is gone


async def test_response_head_over_the_limit_is_a_502() -> None:
    r = await make_rig(HTTPSettings(max_response_head=1024))
    r.send(get("/a"))
    r.respond(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2000)
    assert r.client.take().startswith(b"HTTP/1.1 502 ")
    assert r.backend.aborted


async def test_bare_lf_in_a_response_head_is_a_502_at_once(rig: Rig) -> None:
    rig.send(get("/a"))
    rig.respond(b"HTTP/1.1 200 OK\nContent-Length: 0\n")
    assert rig.client.take().startswith(b"HTTP/1.1 502 ")


async def test_until_close_response_ends_with_the_backend_close(rig: Rig) -> None:
    rig.send(get("/a"))
    rig.respond(b"HTTP/1.1 200 OK\r\n\r\nsome")
    rig.respond(b" body")
    rig.conn.connection_lost(None)
    out = rig.client.take()  # the close ends the body; an HTTP/1.1 client gets it chunked, and keeps its connection
    assert out.endswith(b"4\r\nsome\r\n5\r\n body\r\n0\r\n\r\n") and not rig.client.closed
    assert rig.upstream.take_idle(EP) is None  # a connection that closed is never pooled


async def test_backend_close_inside_a_content_length_body_is_not_a_complete_response(rig: Rig) -> None:
    rig.send(get("/a"))
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    rig.conn.connection_lost(None)
    assert rig.client.take().endswith(b"abc") and rig.client.closed  # truncated: the client sees a close


# --- flow control --------------------------------------------------------------------------------


async def test_reading_pauses_when_the_buffer_is_over_the_limit_and_resumes_after() -> None:
    r = await make_rig(HTTPSettings(max_body_buffer=1024))
    r.send(get("/a"))
    r.send(get("/b", b"X-Pad: " + b"p" * 600 + b"\r\n"))
    assert not r.client.paused
    r.send(get("/c", b"X-Pad: " + b"p" * 600 + b"\r\n"))  # the pipelined requests now exceed the limit
    assert r.client.paused
    assert request_lines(r.backend.take()) == [b"GET /a HTTP/1.1"]
    r.respond(OK)
    assert not r.client.paused
    assert request_lines(r.backend.take()) == [b"GET /b HTTP/1.1"]


async def test_a_slow_client_pauses_the_backend(rig: Rig) -> None:
    rig.send(get("/a"))
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    rig.proto.pause_writing()
    assert rig.backend.paused
    rig.proto.resume_writing()
    assert not rig.backend.paused
