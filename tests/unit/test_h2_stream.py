"""``H2ServerProtocol`` and ``StreamTransport`` driven through a fake transport, an h2 client as the peer.

The client is a real ``h2`` client connection (its bytes are what a browser would send and its events
are what it would see); every backend is a real ``UpstreamConnection`` on a recording transport put in
the pool's idle list, so a test decides what each backend answers and when. No network.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes

from dataplane.http.connection import ConnectionInfo
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import TableRef, build_http_table
from dataplane.http.upstream import Upstream, UpstreamConnection
from dataplane.http2.guard import H2Limits
from dataplane.http2.server import H2ServerProtocol
from dataplane.metrics import Metrics
from dataplane.snapshot import Endpoint
from tests.integration.http_fixtures import pool, snapshot, vhost
from tests.unit.test_http_protocol import FakeTransport
from tests.virtual_clock import virtual_clock

EP = Endpoint("127.0.0.1", 9)  # never connected to: the backends are fakes put in the idle list


class Wire(FakeTransport):
    """The client's TLS transport as the protocol sees it (pause/resume of writing is the test's)."""

    server: H2ServerProtocol | None = None  # whose output ``take`` flushes first

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8443)}.get(name, default)

    def take(self) -> bytes:
        """What the server wrote by the end of this loop iteration: the tests drive the loop by hand, so the
        flush the streams' output scheduled (``call_soon``) is run here (its own test runs the real loop)."""
        if self.server is not None and self.server._flush_pending:
            self.server._flush()
        return super().take()


@dataclass
class Backend:
    conn: UpstreamConnection
    transport: FakeTransport

    def request(self) -> bytes:
        return b"".join(self.transport.writes)

    def respond(self, data: bytes) -> None:
        self.conn.data_received(data)


@dataclass
class Rig:
    server: H2ServerProtocol
    wire: Wire
    client: H2Connection
    upstream: Upstream
    metrics: Metrics
    backends: list[Backend] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def backend(self) -> Backend:
        """A fresh idle backend connection for the next request."""
        transport = FakeTransport()
        conn = UpstreamConnection(self.upstream, EP, asyncio.get_running_loop())
        conn.connection_made(transport)  # type: ignore[arg-type]
        self.upstream.put_idle(conn)
        b = Backend(conn, transport)
        self.backends.append(b)
        return b

    def to_server(self) -> None:
        data = self.client.data_to_send()
        if data:
            self.server.data_received(data)
        self.from_server()

    def from_server(self) -> list[Event]:
        data = self.wire.take()
        new = self.client.receive_data(data) if data else []
        self.events += new
        out = self.client.data_to_send()
        if out and not self.wire.closed:
            self.server.data_received(out)
            return new + self.from_server()
        return new

    def get(self, path: str = "/", extra: list[tuple[bytes, bytes]] | None = None, end: bool = True,
            method: bytes = b"GET") -> int:
        sid = self.client.get_next_available_stream_id()
        headers = [(b":method", method), (b":scheme", b"https"), (b":authority", b"app.test"),
                   (b":path", path.encode()), *(extra or [])]
        self.client.send_headers(sid, headers, end_stream=end)
        self.to_server()
        return sid

    def of(self, sid: int, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and getattr(e, "stream_id", None) == sid]

    def body(self, sid: int) -> bytes:
        return b"".join(e.data for e in self.of(sid, DataReceived))

    def status(self, sid: int) -> bytes:
        (resp,) = self.of(sid, ResponseReceived)
        return dict(resp.headers)[b":status"]  # type: ignore[no-any-return]


async def make_rig(settings: HTTPSettings | None = None, window: int = 65535, scheme: str = "https",
                   handshake: bool = True) -> Rig:
    settings = settings or HTTPSettings()
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", EP)])
    metrics = Metrics()
    table = build_http_table(snap, None, metrics, settings)
    server = H2ServerProtocol(TableRef(table), ConnectionInfo(scheme), metrics)  # type: ignore[arg-type]
    wire = Wire()
    wire.server = server
    server.connection_made(wire)  # type: ignore[arg-type]
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                          normalize_outbound_headers=False))
    client.initiate_connection()
    if window != 65535:
        client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
    upstream = table.upstreams["p"]
    assert isinstance(upstream, Upstream)
    rig = Rig(server, wire, client, upstream, metrics)
    if handshake:  # else the client's preface waits in its buffer for the test's first flight
        rig.to_server()
    return rig


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = await make_rig()
    yield r
    r.upstream.close_idle()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello"


async def test_settings_are_announced(rig: Rig) -> None:
    remote = rig.client.remote_settings
    assert remote.max_concurrent_streams == 128
    assert remote.max_header_list_size == HTTPSettings().max_header_bytes
    assert remote.header_table_size == 4096 and remote.initial_window_size == 65535
    assert rig.client.outbound_flow_control_window == 1024 * 1024  # the connection window was raised


async def test_get_is_one_http1_exchange(rig: Rig) -> None:
    b = rig.backend()
    sid = rig.get("/a/../b?x=1", [(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"accept", b"*/*")])
    wire = b.request()
    assert wire.startswith(b"GET /b?x=1 HTTP/1.1\r\n")
    assert b"\r\nHost: app.test\r\n" in wire and b"\r\ncookie: a=1; b=2\r\n" in wire
    assert b"X-Forwarded-Proto: https" in wire
    b.respond(OK)
    rig.from_server()
    assert rig.status(sid) == b"200" and rig.body(sid) == b"hello"
    (resp,) = rig.of(sid, ResponseReceived)
    names = [n for n, _ in resp.headers]
    assert b"connection" not in names and (b"x-up", b"1") in resp.headers
    assert rig.of(sid, StreamEnded) and not rig.of(sid, StreamReset)
    assert rig.upstream.take_idle(EP) is b.conn  # the backend connection went back to the pool
    assert rig.metrics.h2_streams_open._value.get() == 0


async def test_request_body_without_length_is_chunked_to_the_backend(rig: Rig) -> None:
    b = rig.backend()
    sid = rig.get("/up", end=False, method=b"POST")
    rig.client.send_data(sid, b"abc")
    rig.to_server()
    rig.client.send_data(sid, b"", end_stream=True)
    rig.to_server()
    wire = b.request()
    assert b"Transfer-Encoding: chunked" in wire and wire.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    b.respond(OK)
    rig.from_server()
    assert rig.body(sid) == b"hello" and not rig.of(sid, StreamReset)


async def test_response_waits_for_the_client_window_and_pauses_the_backend() -> None:
    rig = await make_rig(window=1000)
    b = rig.backend()
    sid = rig.get("/big")
    body = bytes(range(256)) * 800  # 200 KiB
    b.respond(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:100_000])
    rig.from_server()
    assert len(rig.body(sid)) == 1000  # the stream window
    assert b.transport.paused  # 99 KB waiting for the client: the backend read stopped
    st = rig.server._streams[sid]
    assert st.get_write_buffer_size() == 99_000
    rig.client.increment_flow_control_window(95_000, stream_id=sid)
    rig.client.increment_flow_control_window(95_000)  # and the connection's
    rig.to_server()
    assert len(rig.body(sid)) == 96_000 and not b.transport.paused  # below the low-water mark: resumed
    b.respond(body[100_000:])
    for _ in range(20):
        rig.client.increment_flow_control_window(60_000, stream_id=sid)
        rig.client.increment_flow_control_window(60_000)
        rig.to_server()
        if rig.of(sid, StreamEnded):
            break
    assert rig.body(sid) == body and rig.of(sid, StreamEnded)


async def test_chunked_response_trailers_become_trailing_headers(rig: Rig) -> None:
    b = rig.backend()
    sid = rig.get("/svc.Echo/Say", [(b"content-type", b"application/grpc"), (b"te", b"trailers")], end=False,
                  method=b"POST")
    rig.client.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
    rig.to_server()
    b.respond(b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\n\x00\x00\x00\x00\x00\r\n")
    proto = rig.server._streams[sid].proto
    assert proto is not None  # what an HTTP/2 backend's trailing HEADERS give the engine
    proto.upstream_trailers([(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
    b.respond(b"0\r\n\r\n")
    rig.from_server()
    assert rig.body(sid) == b"\x00" * 5
    (trailers,) = rig.of(sid, TrailersReceived)
    assert dict(trailers.headers) == {b"grpc-status": b"0", b"grpc-message": b"ok"}


async def test_grpc_error_page_becomes_trailers_only(rig: Rig) -> None:
    sid = rig.get("/nohost", [(b"content-type", b"application/grpc")], method=b"POST")
    rig.from_server()  # no backend needed: the route is there, but no idle/connectable backend at port 9
    for _ in range(100):
        if rig.of(sid, ResponseReceived):
            break
        await asyncio.sleep(0.02)
        rig.from_server()
    (resp,) = rig.of(sid, ResponseReceived)
    fields = dict(resp.headers)
    assert fields[b":status"] == b"200" and fields[b"content-type"] == b"application/grpc"
    assert fields[b"grpc-status"] == b"14"  # 502/503 -> UNAVAILABLE
    assert rig.of(sid, StreamEnded) and not rig.of(sid, DataReceived)


async def test_grpc_deadline_answers_deadline_exceeded(rig: Rig) -> None:
    b = rig.backend()
    with virtual_clock() as clock:
        sid = rig.get("/svc.Slow/Call", [(b"content-type", b"application/grpc"), (b"grpc-timeout", b"30S")])
        assert b.request()
        await clock.advance(25)
        rig.from_server()
        assert not rig.of(sid, ResponseReceived)  # the deadline is still ahead
        await clock.advance(10)
        rig.from_server()
    (resp,) = rig.of(sid, ResponseReceived)
    assert dict(resp.headers)[b"grpc-status"] == b"4"
    assert b.transport.closed  # the backend exchange was dropped


async def test_client_reset_drops_the_backend_exchange(rig: Rig) -> None:
    b = rig.backend()
    sid = rig.get("/slow")
    rig.client.reset_stream(sid, ErrorCodes.CANCEL)
    rig.to_server()
    assert b.transport.closed
    assert rig.metrics.h2_streams_open._value.get() == 0
    assert not rig.wire.closed  # the connection lives on
    b2 = rig.backend()
    sid2 = rig.get("/next")
    b2.respond(OK)
    rig.from_server()
    assert rig.body(sid2) == b"hello"


async def test_streams_over_the_cap_are_refused_and_the_connection_survives() -> None:
    # The client's first flight opens 3 streams before it could read our SETTINGS (cap 2): the third is
    # refused (REFUSED_STREAM: not processed, safe to retry) and the connection serves the other two.
    rig = await make_rig(HTTPSettings(h2=H2Limits(max_concurrent_streams=2)), handshake=False)
    backends = [rig.backend(), rig.backend()]
    sids = []
    for i in range(3):  # one flight: preface, SETTINGS, three HEADERS
        sid = rig.client.get_next_available_stream_id()
        rig.client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"app.test"),
                                      (b":path", b"/%d" % i)], end_stream=True)
        sids.append(sid)
    rig.to_server()
    s1, s2, s3 = sids
    (reset,) = rig.of(s3, StreamReset)
    assert reset.error_code == ErrorCodes.REFUSED_STREAM and not rig.wire.closed
    for b in backends:
        b.respond(OK)
    rig.from_server()
    assert rig.body(s1) == rig.body(s2) == b"hello"
    rig.backend()
    s4 = rig.get("/4")
    rig.backends[-1].respond(OK)
    rig.from_server()
    assert rig.body(s4) == b"hello"


async def test_a_client_ignoring_the_acknowledged_cap_is_a_connection_error() -> None:
    # Once the client acknowledged the cap, a stream beyond it is a protocol violation (RFC 9113 5.1.2 allows a
    # stream error; nghttp2 ends the connection, RFC 9113 5.4.1).
    rig = await make_rig(HTTPSettings(h2=H2Limits(max_concurrent_streams=2)))
    rig.backend(), rig.backend()
    rig.client.remote_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS] = deque([10])  # ignores the cap
    rig.get("/1"), rig.get("/2"), rig.get("/3")
    codes = [e.error_code for e in rig.events if isinstance(e, ConnectionTerminated)]
    assert codes == [ErrorCodes.PROTOCOL_ERROR] and rig.wire.closed


async def test_malformed_request_is_a_stream_error(rig: Rig) -> None:
    b = rig.backend()
    sid = rig.get("relative")  # :path must be origin-form (h2 itself lets it through)
    (reset,) = rig.of(sid, StreamReset)
    assert reset.error_code == ErrorCodes.PROTOCOL_ERROR and not rig.wire.closed
    assert b.request() == b""


async def test_connection_specific_field_is_a_protocol_error(rig: Rig) -> None:
    b = rig.backend()
    rig.get("/", [(b"connection", b"keep-alive")])  # h2 refuses it: a connection error is allowed too
    codes = [e.error_code for e in rig.events if isinstance(e, (StreamReset, ConnectionTerminated))]
    assert codes == [ErrorCodes.PROTOCOL_ERROR] and b.request() == b""


async def test_connect_is_answered_501(rig: Rig) -> None:
    sid = rig.client.get_next_available_stream_id()
    rig.client.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"app.test:443")])
    rig.to_server()
    assert rig.status(sid) == b"501"


async def test_drain_sends_goaway_finishes_open_streams_then_closes(rig: Rig) -> None:
    b = rig.backend()
    sid = rig.get("/a")
    rig.server.drain()
    rig.from_server()
    (goaway,) = [e for e in rig.events if isinstance(e, ConnectionTerminated)]
    assert goaway.error_code == ErrorCodes.NO_ERROR and goaway.last_stream_id == sid
    assert not rig.wire.closed
    # h2's client state machine ends everything at a GOAWAY; real clients (curl, browsers) finish open streams
    rig.client.state_machine.state = ConnectionState.CLIENT_OPEN
    b.respond(OK)
    rig.from_server()
    assert rig.body(sid) == b"hello" and rig.wire.closed


async def test_idle_connection_gets_goaway() -> None:
    with virtual_clock() as clock:
        rig = await make_rig(replace(HTTPSettings(), keepalive_timeout=30.0))
        await clock.advance(25)
        assert not rig.wire.closed
        await clock.advance(10)
    rig.from_server()
    assert rig.wire.closed
    assert [e.error_code for e in rig.events if isinstance(e, ConnectionTerminated)] == [ErrorCodes.NO_ERROR]


async def test_missing_preface_closes() -> None:
    settings = replace(HTTPSettings(), header_timeout=30.0)
    metrics = Metrics()
    table = build_http_table(snapshot([], []), None, metrics, settings)
    server = H2ServerProtocol(TableRef(table), ConnectionInfo("https"), metrics)
    wire = Wire()
    with virtual_clock() as clock:
        server.connection_made(wire)  # type: ignore[arg-type]
        await clock.advance(25)
        assert not wire.closed
        await clock.advance(10)
    assert wire.closed


async def test_ping_flood_is_goaway_enhance_your_calm(rig: Rig) -> None:
    for i in range(200):
        rig.client.ping(b"%08d" % i)
    rig.to_server()
    assert rig.wire.closed
    codes = [e.error_code for e in rig.events if isinstance(e, ConnectionTerminated)]
    assert codes == [ErrorCodes.ENHANCE_YOUR_CALM]
    assert rig.metrics.h2_violations.labels("ping_flood")._value.get() == 1


async def test_connection_and_stream_metrics(rig: Rig) -> None:
    assert rig.metrics.h2_connections_total._value.get() == 1
    rig.backend()
    rig.get("/open")
    assert rig.metrics.h2_streams_open._value.get() == 1
    rig.server.connection_lost(None)
    assert rig.metrics.h2_streams_open._value.get() == 0


async def test_a_finished_stream_is_freed_without_the_cyclic_gc(rig: Rig) -> None:
    # The stream and its engine reference each other while the exchange runs; the cycle is broken when
    # the engine is done, so a busy connection leaves no per-stream garbage for the cyclic collector.
    b = rig.backend()
    sid = rig.get("/a")
    (st,) = rig.server._streams.values()
    assert st.proto is not None
    engine = weakref.ref(st.proto)  # StreamTransport has slots and no weak reference: it goes with the engine
    del st
    gc.disable()
    try:
        b.respond(OK)
        rig.from_server()
        assert rig.body(sid) == b"hello" and rig.of(sid, StreamEnded)
        assert engine() is None and not rig.server._streams
    finally:
        gc.enable()
