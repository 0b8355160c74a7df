"""HTTP/2 to backends, without a network: ``HTTPProtocol`` on a recording client transport, its backend
an ``H2BackendConnection`` on a recording transport, and the backend itself an ``h2`` server
connection object in memory. Every byte between the proxy and the "backend" is real HTTP/2 framing
(HPACK, flow control, stream states), so the tests check what a real backend would receive.
Also: response trailers written into a chunked HTTP/1.1 response (``HTTPProtocol.upstream_trailers``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, Event, RequestReceived, StreamEnded, StreamReset, WindowUpdated
from h2.settings import SettingCodes

from dataplane.http.connection import ConnectionInfo, HTTPProtocol
from dataplane.http.framing import last_chunk
from dataplane.http.parser import ResponseHead
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import build_http_table
from dataplane.http2.upstream import H2BackendConnection, H2Stream, H2Upstream, h2_request_fields
from dataplane.metrics import Metrics
from dataplane.snapshot import Endpoint
from tests.integration.http_fixtures import pool, snapshot, vhost
from tests.unit.test_http_protocol import FakeTransport, make_rig
from tests.virtual_clock import virtual_clock
from tests.waiting import eventually

EP = Endpoint("127.0.0.1", 9)  # never connected to: the backend connection runs on a fake transport


# --- trailers into chunked HTTP/1.1 responses ------------------------------------------------------


def test_last_chunk_keeps_valid_trailers_and_drops_unsafe_ones() -> None:
    assert last_chunk([]) == b"0\r\n\r\n"
    out = last_chunk([(b"grpc-status", b"0"), (b"grpc-message", b"all good"), (b"bad name", b"x"),
                      (b"x-split", b"a\r\nInjected: yes"), (b"x-nul", b"a\x00b"), (b"content-length", b"5"),
                      (b"transfer-encoding", b"chunked")])
    assert out == b"0\r\ngrpc-status: 0\r\ngrpc-message: all good\r\n\r\n"


async def test_trailers_end_a_chunked_response_and_are_dropped_from_a_length_one() -> None:
    rig = await make_rig(HTTPSettings())
    rig.send(b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n")
    rig.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    rig.proto.upstream_trailers([(b"grpc-status", b"7"), (b"x-bad", b"a\nb")])  # as an h2 backend would
    rig.respond(b"0\r\n\r\n")
    out = rig.client.take()
    assert out.endswith(b"5\r\nhello\r\n0\r\ngrpc-status: 7\r\n\r\n"), out
    rig.send(b"GET /b HTTP/1.1\r\nHost: app.test\r\n\r\n")
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    rig.proto.upstream_trailers([(b"grpc-status", b"0")])
    rig.respond(b"ok")
    out = rig.client.take()
    assert out.endswith(b"\r\n\r\nok") and b"grpc-status" not in out
    # the next chunked response does not inherit the earlier trailers
    rig.send(b"GET /c HTTP/1.1\r\nHost: app.test\r\n\r\n")
    rig.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n")
    assert rig.client.take().endswith(b"1\r\nx\r\n0\r\n\r\n")
    rig.upstream.close_idle()


# --- request head translation ----------------------------------------------------------------------


def test_request_head_becomes_h2_fields_without_connection_specific_ones() -> None:
    head = (b"POST /p?q=1 HTTP/1.1\r\nHost: app.test:8080\r\nContent-Type: text/plain\r\nKeep-Alive: 5\r\n"
            b"X-Request-ID: r1\r\nContent-Length: 3\r\n\r\n")
    fields, upgrade, body = h2_request_fields(head, https=True)
    assert fields[:4] == [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/p?q=1"),
                          (b":authority", b"app.test:8080")]
    assert (b"content-type", b"text/plain") in fields and (b"content-length", b"3") in fields
    assert (b"te", b"trailers") in fields and not upgrade and body is not None
    assert all(name not in (b"host", b"keep-alive", b"connection") for name, _ in fields)
    _, upgrade, body = h2_request_fields(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", https=False)
    assert upgrade and body is None


# --- the in-memory rig: HTTPProtocol -> H2BackendConnection -> h2 server object -----------------------


@dataclass
class H2Rig:
    upstream: H2Upstream
    conn: H2BackendConnection
    wire: FakeTransport  # what the proxy wrote to the backend
    server: H2Connection
    metrics: Metrics
    table: Any
    events: list[Event] = field(default_factory=list)

    def pump(self) -> list[Event]:
        """Deliver proxy -> backend bytes, then backend -> proxy bytes, until both sides are quiet."""
        new: list[Event] = []
        for _ in range(20):
            data = self.wire.take()
            if data:
                got = self.server.receive_data(data)
                new += got
            out = self.server.data_to_send()
            if out:
                self.conn.data_received(out)
            if not data and not out:
                break
        self.events += new
        return new

    def client(self) -> tuple[HTTPProtocol, FakeTransport]:
        proto = HTTPProtocol(self.table, ConnectionInfo("http"), self.metrics)
        transport = FakeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        return proto, transport

    def reply(self, sid: int, status: int = 200, body: bytes = b"", trailers: list[tuple[bytes, bytes]] | None = None,
              length: bool = True) -> None:
        headers = [(b":status", b"%d" % status)]
        if length:
            headers.append((b"content-length", b"%d" % len(body)))
        self.server.send_headers(sid, headers, end_stream=not body and not trailers)
        if body:
            self.server.send_data(sid, body, end_stream=not trailers)
        if trailers:
            self.server.send_headers(sid, trailers, end_stream=True)
        self.pump()


async def make_h2_rig(max_streams: int = 100, settings: HTTPSettings | None = None) -> H2Rig:
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", EP, protocol="h2")])
    metrics = Metrics()
    table = build_http_table(snap, None, metrics, settings or HTTPSettings())
    upstream = table.upstreams["p"]
    assert isinstance(upstream, H2Upstream)
    conn = H2BackendConnection(upstream, EP, asyncio.get_running_loop())
    wire = FakeTransport()
    conn.connection_made(wire)  # type: ignore[arg-type]
    upstream._conns[EP] = [conn]
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
    rig = H2Rig(upstream, conn, wire, server, metrics, table)
    rig.pump()
    return rig


@pytest.fixture
async def h2rig() -> AsyncIterator[H2Rig]:
    rig = await make_h2_rig()
    yield rig
    rig.conn.close()


def request(events: list[Event]) -> tuple[int, dict[bytes, bytes]]:
    req = next(e for e in events if isinstance(e, RequestReceived))
    assert req.stream_id is not None and req.headers is not None
    return req.stream_id, dict(req.headers)


def body_of(events: list[Event], sid: int) -> bytes:
    return b"".join(e.data or b"" for e in events if isinstance(e, DataReceived) and e.stream_id == sid)


def ended(events: list[Event], sid: int) -> bool:
    return any(isinstance(e, StreamEnded) and e.stream_id == sid for e in events)


async def test_get_travels_as_an_h2_stream_and_the_answer_as_http11(h2rig: H2Rig) -> None:
    proto, client = h2rig.client()
    proto.data_received(b"GET /x?y=1 HTTP/1.1\r\nHost: app.test\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n")
    events = h2rig.pump()
    sid, headers = request(events)
    assert headers[b":method"] == b"GET" and headers[b":path"] == b"/x?y=1" and headers[b":scheme"] == b"http"
    assert headers[b":authority"] == b"app.test" and headers[b"te"] == b"trailers"
    assert headers[b"accept"] == b"*/*" and b"connection" not in headers and b"x-request-id" in headers
    assert ended(events, sid)  # no body: END_STREAM on the HEADERS
    h2rig.reply(sid, 200, b"hello")
    out = client.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhello")
    assert b"content-length: 5" in out.lower()
    assert not h2rig.conn.streams and not h2rig.conn.reserved  # the slot went back
    # the next request reuses the same connection, on the next stream id
    proto.data_received(b"GET /two HTTP/1.1\r\nHost: app.test\r\n\r\n")
    sid2, _ = request(h2rig.pump())
    assert sid2 == sid + 2
    h2rig.reply(sid2, 204)
    assert client.take().startswith(b"HTTP/1.1 204 ")


async def test_content_length_and_chunked_bodies_arrive_unframed(h2rig: H2Rig) -> None:
    proto, client = h2rig.client()
    proto.data_received(b"POST /u HTTP/1.1\r\nHost: app.test\r\nContent-Length: 11\r\n\r\nhello")
    events = h2rig.pump()
    proto.data_received(b" world")
    events += h2rig.pump()
    sid, headers = request(events)
    assert headers[b"content-length"] == b"11"
    assert body_of(events, sid) == b"hello world" and ended(events, sid)
    h2rig.reply(sid, 200, b"ok")
    assert client.take().endswith(b"ok")
    proto.data_received(b"POST /c HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    events = h2rig.pump()
    proto.data_received(b"2\r\nde\r\n0\r\n\r\n")
    events += h2rig.pump()
    sid, headers = request(events)
    assert b"transfer-encoding" not in headers and b"content-length" not in headers
    assert body_of(events, sid) == b"abcde" and ended(events, sid)
    h2rig.reply(sid, 200, b"ok")
    assert client.take().endswith(b"ok")


async def test_response_trailers_reach_an_http11_client_as_chunked_trailers(h2rig: H2Rig) -> None:
    proto, client = h2rig.client()
    proto.data_received(b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi")
    sid, _ = request(h2rig.pump())
    h2rig.reply(sid, 200, b"payload", [(b"grpc-status", b"5"), (b"grpc-message", b"not found")], length=False)
    out = client.take()
    assert b"transfer-encoding: chunked" in out.lower()
    assert out.endswith(b"7\r\npayload\r\n0\r\ngrpc-status: 5\r\ngrpc-message: not found\r\n\r\n"), out


async def test_a_trailers_only_grpc_answer_becomes_an_empty_chunked_body_with_trailers(h2rig: H2Rig) -> None:
    proto, client = h2rig.client()
    proto.data_received(b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi")
    sid, _ = request(h2rig.pump())
    h2rig.server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                    (b"grpc-status", b"5"), (b"grpc-message", b"gone")], end_stream=True)
    h2rig.pump()
    out = client.take()
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"content-type: application/grpc" in head and b"grpc-status" not in head
    assert body == b"0\r\ngrpc-status: 5\r\ngrpc-message: gone\r\n\r\n", out


async def test_a_reset_stream_is_a_502_and_the_connection_stays_usable(h2rig: H2Rig) -> None:
    proto, client = h2rig.client()
    proto.data_received(b"GET /r HTTP/1.1\r\nHost: app.test\r\n\r\n")
    sid, _ = request(h2rig.pump())
    h2rig.server.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
    h2rig.pump()
    assert client.take().startswith(b"HTTP/1.1 502 ")
    assert h2rig.metrics.registry.get_sample_value(
        "portcullis_upstream_failures_total", {"pool": "p", "reason": "reset"}) == 1
    assert not h2rig.conn.closed and h2rig.upstream.take_idle(EP) is not None


async def test_an_upgrade_request_is_refused_with_502(h2rig: H2Rig) -> None:
    proto, client = h2rig.client()
    proto.data_received(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    await eventually(lambda: client.writes, what="the refusal")  # reported on a later loop turn
    out = client.take()
    assert out.startswith(b"HTTP/1.1 502 ") and b"upgrade is not supported to an HTTP/2 backend" in out
    assert not any(isinstance(e, RequestReceived) for e in h2rig.pump())


async def test_streams_are_limited_by_the_backends_max_concurrent_streams() -> None:
    rig = await make_h2_rig(max_streams=2)
    a, b = rig.upstream.take_idle(EP), rig.upstream.take_idle(EP)
    assert a is not None and b is not None and rig.upstream.take_idle(EP) is None
    a.close()  # a reserved slot given back
    assert rig.upstream.take_idle(EP) is not None
    rig.conn.close()


class Sink:
    def __init__(self) -> None:
        self.head: ResponseHead | None = None
        self.body = b""
        self.done = False
        self.lost: tuple[int, str] | None = None
        self.trailers: list[tuple[bytes, bytes]] = []

    def upstream_head(self, resp: ResponseHead) -> None:
        self.head = resp

    def upstream_body(self, data: bytes) -> None:
        self.body += data

    def upstream_done(self) -> None:
        self.done = True

    def upstream_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.trailers = fields

    def upstream_lost(self, status: int, reason: str, message: str) -> None:
        self.lost = (status, reason)

    def upstream_tunnel(self, data: bytes) -> None:
        raise AssertionError("no tunnels over h2")

    def upstream_flush(self) -> None:
        pass

    def upstream_pause_writing(self) -> None:
        pass

    def upstream_resume_writing(self) -> None:
        pass


GET = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n"


def started(rig: H2Rig, head: bytes = GET) -> tuple[H2Stream, Sink]:
    stream = rig.upstream.take_idle(EP)
    assert stream is not None
    sink = Sink()
    stream.start(sink, head, False)
    return stream, sink


async def test_goaway_loses_unprocessed_streams_retry_safely_and_lets_the_rest_finish(h2rig: H2Rig) -> None:
    first, sink1 = started(h2rig)
    second, sink2 = started(h2rig)
    h2rig.pump()
    h2rig.server.close_connection(last_stream_id=first.stream_id)
    h2rig.pump()
    assert sink2.lost == (502, "closed") and not second.got_bytes  # HTTPProtocol may retry it elsewhere
    assert sink1.lost is None
    assert h2rig.upstream.take_idle(EP) is None  # no new streams on a connection that is going away
    h2rig.server.state_machine.state = ConnectionState.SERVER_OPEN  # h2 would refuse to finish stream 1 too
    h2rig.server.send_headers(first.stream_id, [(b":status", b"200")])
    h2rig.server.send_data(first.stream_id, b"late", end_stream=True)
    h2rig.pump()
    assert sink1.head is not None and sink1.head.status == 200 and sink1.body == b"late" and sink1.done
    first.release(True)
    assert h2rig.conn.closed and h2rig.wire.closed  # the last stream ended: the connection closes


async def test_reading_paused_holds_the_window_update_until_resumed(h2rig: H2Rig) -> None:
    stream, sink = started(h2rig)
    h2rig.pump()
    stream.pause_reading()
    h2rig.server.send_headers(stream.stream_id, [(b":status", b"200")])
    for _ in range(10):  # more than half the stream window (256 KiB): h2 would send an update now
        h2rig.server.send_data(stream.stream_id, b"x" * 15000)
    events = h2rig.pump()
    assert not any(isinstance(e, WindowUpdated) and e.stream_id == stream.stream_id for e in events)
    stream.resume_reading()
    events = h2rig.pump()
    assert any(isinstance(e, WindowUpdated) and e.stream_id == stream.stream_id for e in events)
    assert len(sink.body) == 150000
    stream.abort()
    events = h2rig.pump()
    assert any(isinstance(e, StreamReset) and e.stream_id == stream.stream_id and e.error_code == ErrorCodes.CANCEL
               for e in events)


async def test_a_large_request_body_waits_for_the_backends_window() -> None:
    rig = await make_h2_rig()
    paused: list[str] = []
    stream, sink = started(rig, b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 200000\r\n\r\n")
    sink.upstream_pause_writing = lambda: paused.append("pause")  # type: ignore[method-assign]
    sink.upstream_resume_writing = lambda: paused.append("resume")  # type: ignore[method-assign]
    stream.write(b"y" * 200000)
    events = rig.pump()
    sid = stream.stream_id
    got = len(body_of(events, sid))
    assert got == 65535 and paused == ["pause"]  # the default stream window; the rest is held
    rig.server.acknowledge_received_data(got, sid)
    events = rig.pump()
    rig.server.acknowledge_received_data(len(body_of(events, sid)), sid)
    events += rig.pump()
    rig.server.acknowledge_received_data(len(body_of(events, sid)) - len(body_of(events[:0], sid)), sid)
    events += rig.pump()
    total = got + len(body_of(events, sid))
    assert total == 200000 and ended(rig.events, sid) and paused == ["pause", "resume"]
    stream.abort()
    rig.conn.close()


async def test_an_idle_connection_closes_after_the_idle_timeout() -> None:
    with virtual_clock() as clock:
        rig = await make_h2_rig(settings=HTTPSettings(upstream_idle_timeout=30.0))
        stream, _ = started(rig)
        await clock.advance(40)  # past the idle timeout, within the read timeout (60 s)
        assert not rig.conn.closed  # a stream is open: not idle
        stream.abort()
        await clock.advance(25)
        assert not rig.conn.closed  # idle, not yet for the whole timeout
        await clock.advance(10)
        assert rig.conn.closed and rig.wire.closed and not rig.upstream._conns.get(EP)


async def test_the_read_timeout_is_a_504() -> None:
    with virtual_clock() as clock:
        rig = await make_h2_rig()
        object.__setattr__(rig.upstream, "spec", pool("p", EP, protocol="h2", read_timeout=30.0))
        _, sink = started(rig)
        rig.pump()
        await clock.advance(25)
        assert sink.lost is None
        await clock.advance(10)
        assert sink.lost == (504, "read_timeout")
        assert any(isinstance(e, StreamReset) for e in rig.pump())
        rig.conn.close()


async def test_a_get_lost_to_goaway_is_retried_on_a_fresh_connection(h2rig: H2Rig) -> None:
    first, _ = h2rig.client()
    second, client = h2rig.client()
    first.data_received(b"GET /1 HTTP/1.1\r\nHost: app.test\r\n\r\n")
    second.data_received(b"GET /2 HTTP/1.1\r\nHost: app.test\r\n\r\n")
    events = h2rig.pump()
    sids = sorted(e.stream_id for e in events if isinstance(e, RequestReceived) and e.stream_id is not None)
    h2rig.server.close_connection(last_stream_id=sids[0])
    h2rig.pump()
    # The retry connects anew (to EP, where nothing listens): the answer is that connect's error, not the
    # GOAWAY's, and the connect was really attempted.
    await eventually(lambda: client.writes, what="an answer to the retried GET")
    out = client.take()
    assert out.startswith(b"HTTP/1.1 502 ") and b"went away" not in out, out
    assert h2rig.metrics.registry.get_sample_value(
        "portcullis_upstream_failures_total", {"pool": "p", "reason": "connect_refused"}) == 1


async def test_live_connections_carry_over_to_the_next_table_while_tls_and_protocol_stay(h2rig: H2Rig) -> None:
    from dataplane.http.upstream import Upstream

    stream, _ = started(h2rig)  # a stream in flight moves along with its connection
    changed = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", EP, protocol="h2", read_timeout=5.0)])
    table = build_http_table(changed, h2rig.table, h2rig.metrics, HTTPSettings())
    up = table.upstreams["p"]
    assert isinstance(up, H2Upstream) and up is not h2rig.upstream
    spare = up.take_idle(EP)
    assert h2rig.conn.upstream is up and spare is not None and not h2rig.upstream.take_idle(EP)
    spare.close()
    http1 = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", EP, read_timeout=5.0)])
    plain = build_http_table(http1, table, h2rig.metrics, HTTPSettings()).upstreams["p"]
    assert isinstance(plain, Upstream) and plain.take_idle(EP) is None  # an h2 connection is no HTTP/1.1 one
    stream.abort()
