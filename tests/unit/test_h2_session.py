"""``dataplane.http2._session.Session`` (libnghttp2, ``_session.c``) driven directly by an h2-library client.

Fails, never skips, when the extension was not built: without it the data plane offers clients HTTP/1.1
only (``make install`` builds it; ``scripts/install-build-deps`` installs libnghttp2's headers).
"""

from __future__ import annotations

import importlib
import tracemalloc
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.settings import SettingCodes

try:
    from dataplane.http2 import _session
except ImportError:  # reported by test_extension_is_built; the rest fail on the missing name
    _session = None  # type: ignore[assignment]

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/")]
POST = [(b":method", b"POST"), *GET[1:]]


def test_extension_is_built() -> None:
    try:
        importlib.import_module("dataplane.http2._session")
    except ImportError as exc:
        pytest.fail(f"the HTTP/2 server session (dataplane/http2/_session.c) is not built: {exc}; run `make install`")


class Pair:
    """A Session and an h2 client connected through memory; ``flush`` moves bytes both ways until quiet."""

    def __init__(self, max_streams: int = 100, max_header_list: int = 16384, window: int = 65535,
                 conn_window: int = 1 << 20, handshake: bool = True) -> None:
        self.s = _session.Session(max_streams, max_header_list, 4096, window, conn_window)
        self.c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.c.initiate_connection()
        self.server_events: list[tuple[Any, ...]] = []
        self.client_events: list[Event] = []
        if handshake:
            self.flush()

    def flush(self) -> None:
        for _ in range(50):
            moved = False
            data = self.c.data_to_send()
            if data:
                self.server_events += self.s.receive(data)
                moved = True
            out, events = self.s.send()
            self.server_events += events
            if out:
                self.client_events += self.c.receive_data(out)
                moved = True
            if not moved:
                return
        raise AssertionError("no quiet point")

    def take(self, kind: int) -> list[tuple[Any, ...]]:
        found = [e for e in self.server_events if e[0] == kind]
        self.server_events = [e for e in self.server_events if e[0] != kind]
        return found

    def of(self, kind: type[Event], sid: int | None = None) -> list[Any]:
        return [e for e in self.client_events if isinstance(e, kind) and (sid is None or e.stream_id == sid)]

    def request(self, fields: list[tuple[bytes, bytes]] = GET, end: bool = True) -> int:
        sid: int = self.c.get_next_available_stream_id()
        self.c.send_headers(sid, fields, end_stream=end)
        self.flush()
        return sid


def test_request_response_with_body_and_trailers() -> None:
    p = Pair()
    assert p.take(_session.SETTINGS) == [(_session.SETTINGS,)]
    sid = p.request(POST, end=False)
    p.c.send_data(sid, b"abc", end_stream=True)
    p.flush()
    assert p.take(_session.REQUEST) == [(_session.REQUEST, sid, POST, False)]
    assert p.take(_session.DATA) == [(_session.DATA, sid, b"abc")]
    assert p.take(_session.END) == [(_session.END, sid)]
    assert p.s.respond(sid, [(b":status", b"200"), (b"x-a", b"1")], False)
    assert p.s.write(sid, b"hello", False) == 5
    assert p.s.trailers(sid, [(b"grpc-status", b"0")])
    p.flush()
    (resp,) = p.of(ResponseReceived, sid)
    assert resp.headers == [(b":status", b"200"), (b"x-a", b"1")]
    assert b"".join(e.data for e in p.of(DataReceived, sid)) == b"hello"
    (trailers,) = p.of(TrailersReceived, sid)
    assert trailers.headers == [(b"grpc-status", b"0")] and p.of(StreamEnded, sid)
    assert p.take(_session.CLOSED) == [(_session.CLOSED, sid, 0, False)]
    assert p.s.pending(sid) == 0 and p.s.write(sid, b"late", True) == -1  # gone: freed
    assert p.s.last_stream_id == sid and p.s.want_io


def test_body_waits_for_the_stream_window_and_resumes_on_window_update() -> None:
    p = Pair()
    sid = p.request()
    body = bytes(range(256)) * 800  # 200 KiB: the stream window is 65535
    p.s.respond(sid, [(b":status", b"200")], False)
    assert p.s.write(sid, body, True) == len(body)
    p.flush()
    assert len(b"".join(e.data for e in p.of(DataReceived, sid))) == 65535
    assert p.s.pending(sid) == len(body) - 65535 == p.s.buffered
    assert p.s.pending(sid) == len(body) - 65535  # the connection window (65535 too) is spent as well
    for _ in range(10):
        if p.of(StreamEnded, sid):
            break
        p.c.increment_flow_control_window(65535, stream_id=sid)
        p.c.increment_flow_control_window(65535)
        p.flush()
    assert b"".join(e.data for e in p.of(DataReceived, sid)) == body and p.of(StreamEnded, sid)
    assert p.s.buffered == 0
    assert all(len(e.data) <= 16384 for e in p.of(DataReceived, sid))  # the peer's max frame size


def test_unconsumed_uploads_hold_their_stream_window_never_the_connections() -> None:
    # 20 uploads of a full stream window (1.3 MB) against a 1 MiB connection window, none consumed by the
    # engine: the connection window is credited on receipt, so none is starved and no flow-control error.
    p = Pair()
    sids = []
    for _ in range(20):
        sid = p.request(POST, end=False)
        p.c.send_data(sid, b"x" * 16384)
        p.c.send_data(sid, b"x" * 16384)
        p.c.send_data(sid, b"x" * 16384)
        p.c.send_data(sid, b"x" * 16383)
        p.flush()
        sids.append(sid)
    data = p.take(_session.DATA)
    assert sum(len(e[2]) for e in data) == 20 * 65535
    assert not p.of(ConnectionTerminated) and not p.of(StreamReset)
    assert not [e for e in p.of(WindowUpdated) if e.stream_id]  # no stream window reopened yet
    assert p.c.outbound_flow_control_window >= (1 << 20) // 2
    assert all(p.c.local_flow_control_window(sid) == 0 for sid in sids)
    p.s.consume(sids[0], 65535)
    p.flush()
    assert p.c.local_flow_control_window(sids[0]) == 65535 and p.c.local_flow_control_window(sids[1]) == 0


def test_oversized_header_list_is_reported_without_fields() -> None:
    p = Pair(max_header_list=260)  # GET's four pseudo-fields count 172 (RFC 9113 6.5.2: +32 each)
    sid = p.request([*GET, (b"x-big", b"v" * 300)])
    assert p.take(_session.REQUEST) == [(_session.REQUEST, sid, None, True)]
    sid2 = p.request([*GET, (b"x-small", b"v")])  # the HPACK state stayed in step
    ((_, got, fields, _),) = p.take(_session.REQUEST)
    assert got == sid2 and fields[-1] == (b"x-small", b"v")


def test_streams_beyond_the_cap_in_the_first_flight_are_refused() -> None:
    p = Pair(max_streams=2, handshake=False)
    for _ in range(3):
        p.c.send_headers(p.c.get_next_available_stream_id(), GET, end_stream=True)
    p.flush()
    assert [e[1] for e in p.take(_session.REQUEST)] == [1, 3]
    (reset,) = p.of(StreamReset)
    assert (reset.stream_id, reset.error_code) == (5, ErrorCodes.REFUSED_STREAM) and p.s.want_io


def test_resets_both_ways() -> None:
    p = Pair()
    mine, theirs = p.request(), p.request()
    p.take(_session.REQUEST)
    p.s.respond(mine, [(b":status", b"200")], False)
    p.s.write(mine, b"partial", False)
    p.s.reset(mine, ErrorCodes.INTERNAL_ERROR)
    p.c.reset_stream(theirs, ErrorCodes.CANCEL)
    p.flush()
    assert [(e.stream_id, e.error_code) for e in p.of(StreamReset)] == [(mine, ErrorCodes.INTERNAL_ERROR)]
    closed = {e[1]: e[2:] for e in p.take(_session.CLOSED)}
    assert closed == {mine: (ErrorCodes.INTERNAL_ERROR, False), theirs: (ErrorCodes.CANCEL, True)}
    assert p.s.buffered == 0


def test_response_before_the_request_body_ends_resets_with_no_error() -> None:
    p = Pair()
    sid = p.request(POST, end=False)
    p.s.respond(sid, [(b":status", b"413")], True)
    p.flush()
    assert p.of(StreamEnded, sid)
    (reset,) = p.of(StreamReset, sid)
    assert reset.error_code == ErrorCodes.NO_ERROR


def test_garbage_is_a_session_error_and_the_object_survives() -> None:
    s = _session.Session(100, 16384, 4096, 65535, 1 << 20)
    with pytest.raises(_session.SessionError):
        s.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    out, events = s.send()  # not HTTP/2 at all: nothing to answer with, the caller closes
    assert isinstance(out, bytes) and events == []
    assert s.respond(1, [(b":status", b"200")], True) is False  # no such stream
    p = Pair()
    sid = p.request()
    with pytest.raises(TypeError):
        p.s.respond(sid, [("str", "not bytes")], True)  # type: ignore[list-item]
    assert p.s.respond(sid, [(b":status", b"200")], True)  # the stream is as it was
    p.flush()
    assert p.of(StreamEnded, sid)


def test_graceful_goaway_lets_open_streams_finish() -> None:
    p = Pair()
    sid = p.request()
    p.s.goaway(0)
    p.flush()
    (term,) = p.of(ConnectionTerminated)
    assert (term.error_code, term.last_stream_id) == (0, sid) and p.s.want_io
    p.s.respond(sid, [(b":status", b"204")], True)
    out, _ = p.s.send()
    assert out and not p.s.want_io  # the last stream is done: the connection may close


def test_terminate_and_client_goaway() -> None:
    p = Pair()
    p.s.terminate(ErrorCodes.ENHANCE_YOUR_CALM)
    p.flush()
    assert [e.error_code for e in p.of(ConnectionTerminated)] == [ErrorCodes.ENHANCE_YOUR_CALM]
    assert not p.s.want_io
    q = Pair()
    q.c.close_connection(ErrorCodes.NO_ERROR)
    q.flush()
    assert q.take(_session.GOAWAY) == [(_session.GOAWAY, 0, 0)] and not q.s.want_io


def test_settings_announced() -> None:
    p = Pair(max_streams=7, max_header_list=1234, conn_window=1 << 20)
    remote = p.c.remote_settings
    assert (remote.max_concurrent_streams, remote.max_header_list_size, remote.enable_push) == (7, 1234, 0)
    assert remote[SettingCodes.INITIAL_WINDOW_SIZE] == 65535 and p.c.outbound_flow_control_window == 1 << 20


def _cycle(s: Any, c: H2Connection) -> None:
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, POST, end_stream=False)
    c.send_data(sid, b"q" * 100, end_stream=True)
    s.receive(c.data_to_send())
    s.consume(sid, 100)
    s.respond(sid, [(b":status", b"200"), (b"content-type", b"text/plain")], False)
    s.write(sid, b"r" * 1000, False)
    s.trailers(sid, [(b"x-t", b"1")])
    out, _ = s.send()
    c.receive_data(out)
    c.acknowledge_received_data(1000, sid)
    c.increment_flow_control_window(1000)


def test_no_reference_or_memory_leak_over_many_streams() -> None:
    """Python objects the session allocates (events, fields, bytes; its PyMem buffers) are traced as allocated
    by the line that called it; the h2 client's own growth (it remembers every closed stream) is not counted.
    nghttp2's own allocations are libc's: the ASan run covers those."""
    s = _session.Session(100, 16384, 4096, 65535, 1 << 20)
    c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    s.receive(c.data_to_send())
    c.receive_data(s.send()[0])
    for _ in range(300):  # warm-up: caches, free lists
        _cycle(s, c)
    only_here = [tracemalloc.Filter(True, __file__)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(only_here)
        for _ in range(2000):
            _cycle(s, c)
        after = tracemalloc.take_snapshot().filter_traces(only_here)
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 4096, grown  # 2000 streams: nothing per stream stays behind
    assert s.buffered == 0 and s.want_io
