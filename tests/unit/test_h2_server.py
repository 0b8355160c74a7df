"""``H2ServerProtocol``'s connection-level behaviour: snapshot swaps, stalled clients, GOAWAY in both
directions, HEAD and bodiless answers, garbage instead of a preface. Same rig as ``test_h2_stream.py``
(an h2 client as the peer, fake transports, real ``UpstreamConnection`` backends)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded
from hyperframe.frame import DataFrame, Frame, GoAwayFrame

from dataplane.http.connection import ConnectionInfo
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import TableRef, build_http_table
from dataplane.http.upstream import Upstream
from dataplane.http2.server import H2ServerProtocol
from dataplane.metrics import Metrics
from dataplane.snapshot import ClientAuth, TLSHost
from tests.integration.http_fixtures import ca_bundle, pool, snapshot, vhost
from tests.pki import CA
from tests.unit.test_h2_stream import EP, OK, Rig, Wire, make_rig
from tests.virtual_clock import virtual_clock


async def test_head_and_204_end_the_stream_with_the_headers() -> None:
    rig = await make_rig()
    b = rig.backend()
    head = rig.get("/h", method=b"HEAD")
    b.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
    empty = rig.get("/e")  # the same backend connection, back in the pool
    assert b"GET /e " in b.request()
    b.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    rig.from_server()
    for sid, status in ((head, b"200"), (empty, b"204")):
        assert rig.status(sid) == status and rig.of(sid, StreamEnded) and not rig.of(sid, DataReceived)
    (resp,) = rig.of(head, ResponseReceived)
    assert (b"content-length", b"5000") in resp.headers


def frames(data: bytes) -> list[Frame]:
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


async def test_new_stream_after_drain_is_not_processed() -> None:
    # Above the GOAWAY's last stream id a stream is ignored (RFC 9113 6.8: the client knows it was not
    # processed and retries it on a new connection); nghttp2 sends no RST_STREAM for it.
    rig = await make_rig()
    b = rig.backend()
    first = rig.get("/a")
    rig.server.drain()
    late = rig.client.get_next_available_stream_id()  # sent before the client read the GOAWAY
    rig.client.send_headers(late, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"app.test"),
                                   (b":path", b"/late")], end_stream=True)
    rig.server.data_received(rig.client.data_to_send())
    sent = frames(rig.wire.take())
    goaway = [f for f in sent if isinstance(f, GoAwayFrame)]
    assert [(g.last_stream_id, g.error_code) for g in goaway] == [(first, 0)]
    assert not [f for f in sent if f.stream_id == late]  # no answer, no reset
    assert b.request().count(b"GET ") == 1 and b"/late" not in b.request() and not rig.wire.closed
    b.respond(OK)
    sent = frames(rig.wire.take())
    assert b"".join(f.data for f in sent if isinstance(f, DataFrame)) == b"hello"
    assert rig.wire.closed  # the last open stream is done: the close


async def test_snapshot_changing_the_tls_row_drains_and_an_unchanged_one_does_not() -> None:
    row = TLSHost("app.test", "terminate")
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"), tls=True)], [pool("p", EP)], tls_hosts=(row,))
    metrics = Metrics()
    ref = TableRef(build_http_table(snap, None, metrics, HTTPSettings()))
    server = H2ServerProtocol(ref, ConnectionInfo("https", sni="app.test", tls_host=ref.table.tls_row("app.test")),
                              metrics)
    wire = Wire()
    server.connection_made(wire)  # type: ignore[arg-type]
    ref.table = build_http_table(snap, ref.table, metrics, HTTPSettings())  # same row again
    server.table_swapped()
    assert not server._draining
    changed = snapshot([vhost("app.test", ("/", "Prefix", "p"), tls=True)], [pool("p", EP)],
                       tls_hosts=(replace(row, min_version="1.3"),))
    ref.table = build_http_table(changed, ref.table, metrics, HTTPSettings())
    server.table_swapped()
    assert server._draining and wire.closed  # no open stream: GOAWAY, then the close
    assert b"\x07" in b"".join(wire.writes)  # a GOAWAY frame (type 7) was written


async def test_client_goaway_finishes_open_streams_then_closes() -> None:
    rig = await make_rig()
    b = rig.backend()
    sid = rig.get("/a")
    rig.client.close_connection()
    rig.server.data_received(rig.client.data_to_send())
    assert not rig.wire.closed
    b.respond(OK)
    sent = frames(rig.wire.take())
    assert [(f.stream_id, f.data) for f in sent if isinstance(f, DataFrame)] == [(sid, b"hello")]
    assert rig.wire.closed


async def test_client_that_accepts_nothing_is_aborted_after_client_send_timeout() -> None:
    with virtual_clock() as clock:
        rig = await make_rig(replace(HTTPSettings(), client_send_timeout=30.0), window=10)
        b = rig.backend()
        rig.get("/stuck")
        b.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000)
        rig.from_server()
        await clock.advance(25)
        assert not rig.wire.aborted  # stalled, not yet for the whole timeout
        await clock.advance(10)
        assert rig.wire.aborted
        assert rig.metrics.http_timeouts.labels("client_send")._value.get() == 1


async def test_garbage_instead_of_a_preface_is_a_connection_error() -> None:
    metrics = Metrics()
    server = H2ServerProtocol(TableRef(build_http_table(snapshot([], []), None, metrics, HTTPSettings())),
                              ConnectionInfo("https"), metrics)
    wire = Wire()
    server.connection_made(wire)  # type: ignore[arg-type]
    server.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wire.closed


async def test_responses_completed_in_one_loop_iteration_share_one_write() -> None:
    # Two backends answer in the same event-loop iteration: nothing is written while their reads are
    # handled, then one transport write (one TLS record, one send) carries both responses; the loop
    # runs for real here (Wire.take would flush by hand).
    rig = await make_rig()
    b1, b2 = rig.backend(), rig.backend()
    first, second = rig.get("/a"), rig.get("/b")
    assert b"GET /" in b1.request() and b"GET /" in b2.request()
    rig.wire.writes.clear()
    b1.respond(OK)
    b2.respond(OK)
    assert rig.wire.writes == []
    await asyncio.sleep(0)
    assert len(rig.wire.writes) == 1
    rig.from_server()
    assert rig.body(first) == rig.body(second) == b"hello"
    assert rig.of(first, StreamEnded) and rig.of(second, StreamEnded)


async def test_stream_exchange_arms_no_header_timer_and_gets_the_connection_s_client_cert_gate() -> None:
    # The head of a stream is fed whole (HTTPProtocol.stream_made): no per-stream header timer. The
    # client-certificate gate is the connection's, computed once per routing table: a required
    # certificate that was not sent is refused on every stream, before any backend is reached.
    cas = ca_bundle(CA("client CA"))
    row = TLSHost("app.test", "terminate", client_auth=ClientAuth(cas.id, "required"))
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"), tls=True)], [pool("p", EP)], tls_hosts=(row,),
                    cas=(cas,))
    metrics = Metrics()
    ref = TableRef(build_http_table(snap, None, metrics, HTTPSettings()))
    server = H2ServerProtocol(ref, ConnectionInfo("https", sni="app.test", tls_host=ref.table.tls_row("app.test")),
                              metrics)
    wire = Wire()
    wire.server = server
    server.connection_made(wire)  # type: ignore[arg-type]
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    upstream = ref.table.upstreams["p"]
    assert isinstance(upstream, Upstream)
    rig = Rig(server, wire, client, upstream, metrics)
    rig.to_server()
    refused = [rig.get(f"/r{i}") for i in range(2)]
    assert [rig.status(sid) for sid in refused] == [b"400", b"400"]
    assert server._gate_table is ref.table and upstream.connects == 0
    ok_rig = await make_rig()
    ok_rig.backend()
    ok_rig.get("/pending")  # the backend has not answered: the exchange is under way
    (st,) = ok_rig.server._streams.values()
    assert st.proto is not None and st.proto._timer is None and st.proto._state == 1  # _CL_REQUEST
