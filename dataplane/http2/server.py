"""HTTP/2 to clients: one ``H2ServerProtocol`` per TLS connection that negotiated ``h2`` by ALPN.

libnghttp2 (``_session.c``: one ``Session`` per connection, sans-IO) does framing, HPACK, stream states,
flow control and the concurrency cap (REFUSED_STREAM); this class is the I/O shell around it. Every
client stream becomes one ordinary ``HTTPProtocol`` exchange through a ``StreamTransport``
(``stream.py``), so routing, limits, timeouts, client-certificate gates, HSTS, X-Forwarded-* and the
access log are the HTTP/1.1 engine's, unchanged. What is HTTP/2's own lives here: the local SETTINGS, the
frame pre-scan against floods (``guard.py``, in front of nghttp2: a violation is GOAWAY
ENHANCE_YOUR_CALM), gRPC deadlines, and the connection's one timer (preface, idle, a client that accepts
none of our bytes, deadlines). A drain or a changed TLS row is a graceful GOAWAY: open streams finish,
new ones are not processed, then the close. One transport write per read, and one per event-loop iteration for
the responses the streams completed in it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any, cast

from dataplane.access_log import AccessLog
from dataplane.http.connection import HTTPProtocol
from dataplane.http.headers import connection_block
from dataplane.http.info import ConnectionInfo, complete_info
from dataplane.http.responses import local_response
from dataplane.http.table import TLS_SAME, HTTPTable, Local, TableRef, client_auth_gate, tls_change
from dataplane.http.upstream import fires_by
from dataplane.http2._session import CLOSED, DATA, END, GOAWAY, REQUEST, SETTINGS, Session, SessionError
from dataplane.http2.guard import FrameGuard
from dataplane.http2.stream import LOW_WATER, PROTOCOL_ERROR, StreamTransport
from dataplane.http2.translate import H2Request, translate_request
from dataplane.metrics import Metrics

log = logging.getLogger(__name__)

CONNECTION_WINDOW = 1024 * 1024  # the connection's receive window (streams keep the 65535 default)
STREAM_WINDOW = 65535
HEADER_TABLE_SIZE = 4096
NO_ERROR, ENHANCE_YOUR_CALM = 0x0, 0xB
_INF = float("inf")


class H2ServerProtocol(asyncio.Protocol):
    """One HTTP/2 client connection (TLS, ALPN h2): streams in, ``HTTPProtocol`` exchanges per stream."""

    def __init__(self, ref: TableRef, info: ConnectionInfo, metrics: Metrics,
                 access_log: AccessLog | None = None) -> None:
        self._ref = ref
        self._info = info
        self._metrics = metrics
        self._alog = access_log
        settings = ref.table.settings
        self._settings = settings
        self._limits = settings.h2
        self._guard = FrameGuard(self._limits, settings.max_header_bytes)
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.session = Session(self._limits.max_concurrent_streams, settings.max_header_bytes, HEADER_TABLE_SIZE,
                               STREAM_WINDOW, CONNECTION_WINDOW)
        self._streams: dict[int, StreamTransport] = {}
        self._chunked: set[int] = set()  # streams whose request body is fed chunk-framed
        self._deadlines: set[StreamTransport] = set()
        self.paused: set[StreamTransport] = set()  # streams whose engine was told pause_writing
        self._info_h2 = self._info_grpc = info
        self._block = b""  # the forwarding headers, the same for every stream (connection_block)
        self._gate: Local | None = None  # the client-certificate answer of every stream, for _gate_table
        self._gate_table: HTTPTable | None = None
        self.write_paused = False
        self._batch = False  # inside data_received or _write_out: one transport write at the end
        self._flush_pending = False  # a _flush is scheduled for the end of this loop iteration
        self._preface = False
        self._closed = False
        self._draining = False
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._idle_since = 0.0
        self._progress_at = 0.0

    # --- asyncio callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        self._loop = loop = asyncio.get_running_loop()
        info = complete_info(self._info, transport)
        self._info_h2 = replace(info, protocol="h2")
        self._info_grpc = replace(info, protocol="grpc")
        self._block = connection_block(info)
        self._started = self._idle_since = self._progress_at = now = loop.time()
        self._metrics.h2_connections_total.inc()
        self._write_out()  # our SETTINGS and the connection window
        self._arm(now + self._settings.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        loop = self._loop
        assert loop is not None
        violation = self._guard.feed(data, loop.time())
        if violation is not None:
            self._calm(violation)
            return
        try:
            events = self.session.receive(data)
        except SessionError as exc:  # a connection error: nghttp2 queued its GOAWAY
            log.debug("h2 protocol error", extra={"reason": str(exc)[:200]})
            self._fail()
            return
        self._batch = True
        try:
            self._dispatch(events)
        finally:
            self._batch = False
        self._write_out()

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: HTTP/2 has no half-close, the connection ends

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
        for st in list(self._streams.values()):
            st.peer_reset()
        self._streams.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._write_out()

    # --- what the runtime calls -------------------------------------------------------------------

    def table_swapped(self) -> None:
        """A snapshot was applied: if this connection's SNI row changed, new streams belong on a new connection."""
        info = self._info
        if self._closed or self._draining or info.tls_host is None:
            return
        key = info.sni or info.tls_host.host
        if tls_change(info.tls_host, self._ref.table.tls_row(key)) != TLS_SAME:
            self.drain()

    def drain(self) -> None:
        """Graceful GOAWAY (NO_ERROR, the last stream processed): open streams finish, then the connection closes."""
        if self._closed or self._draining or self._transport is None:
            return
        self._draining = True
        self.session.goaway(NO_ERROR)
        self._write_out()

    # --- used by the streams ----------------------------------------------------------------------

    def kick(self) -> None:
        """A stream queued output: written once at the end of this event-loop iteration (``loop.call_soon``,
        at most one pending), so the responses of every stream answered in one iteration share one TLS
        record and one system call; inside a read it goes with the read's own write."""
        if self._batch or self._flush_pending or self._closed or self._loop is None:
            return
        self._flush_pending = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._write_out()

    def _write_out(self) -> None:
        """Write what the session has to send now."""
        if self._batch or self._closed or self.write_paused or self._transport is None:
            return
        session = self.session
        transport = self._transport
        self._batch = True
        try:
            for _ in range(64):  # the events of a send (streams closed) may queue more frames
                data, events = session.send()
                if data:
                    transport.write(data)
                    if self._loop is not None:
                        self._progress_at = self._loop.time()
                if not events:
                    break
                self._dispatch(events)
        finally:
            self._batch = False
        if self.paused:
            for st in list(self.paused):
                if session.pending(st.sid) <= LOW_WATER:
                    self.paused.discard(st)
                    st.drained()
        if not session.want_io:  # a GOAWAY either way and no stream left: done
            self._close()

    def extra_info(self, name: str, default: Any = None) -> Any:
        transport = self._transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def stream_closed(self, st: StreamTransport) -> None:
        if self._streams.pop(st.sid, None) is None:
            return
        self._chunked.discard(st.sid)
        self._metrics.h2_streams_open.dec()
        if st.deadline:
            self._deadlines.discard(st)
        if not self._streams:
            loop = self._loop
            self._idle_since = loop.time() if loop is not None else 0.0
            if not self._draining:
                self._arm(self._idle_since + self._settings.keepalive_timeout)

    # --- events -----------------------------------------------------------------------------------

    def _dispatch(self, events: list[tuple[Any, ...]]) -> None:
        streams = self._streams
        for event in events:
            kind = event[0]
            if kind == DATA:
                st = streams.get(event[1])
                if st is not None:
                    st.receive(event[2], st.sid in self._chunked)
            elif kind == REQUEST:
                self._on_request(event[1], event[2], event[3])
            elif kind == END:
                st = streams.get(event[1])
                if st is not None:
                    st.end_request(st.sid in self._chunked)
            elif kind == CLOSED:
                st = streams.get(event[1])
                if st is not None:
                    st.closed_by_session(event[2])
            elif kind == SETTINGS:
                if not self._preface:
                    self._preface = True
                    if not self._streams:
                        self._arm(self._idle_since + self._settings.keepalive_timeout)
            elif kind == GOAWAY:
                if event[1] != NO_ERROR or not self._streams:
                    self._close()
                    return
                self._draining = True  # the client opens no more streams; those it opened are answered

    def _on_request(self, sid: int, fields: list[tuple[bytes, bytes]] | None, ended: bool) -> None:
        if fields is None:  # over max_header_bytes (nghttp2 still decoded the block: HPACK stays in step)
            st = self._open(sid, False, False, ended)
            st.write(local_response(431, "Request Header Fields Too Large"))
            st.close()
            return
        req = translate_request(fields, ended)
        if not isinstance(req, H2Request):
            if req.status == 400:  # malformed (RFC 9113 8.1.1): a stream error, not a response
                self.session.reset(sid, PROTOCOL_ERROR)
                return
            st = self._open(sid, False, False, ended)
            st.write(local_response(req.status, req.reason))
            st.close()
            return
        st = self._open(sid, req.method == b"HEAD", req.grpc, ended)
        if req.chunked:
            self._chunked.add(sid)
        if req.timeout is not None and self._loop is not None:
            st.deadline = deadline = self._loop.time() + req.timeout
            self._deadlines.add(st)
            self._arm(deadline)
        proto = HTTPProtocol(self._ref, self._info_grpc if req.grpc else self._info_h2, self._metrics, self._alog)
        st.proto = proto
        assert self._loop is not None
        proto.stream_made(st, self._loop, self._block, self._client_gate(), req.head)  # type: ignore[arg-type]

    def _client_gate(self) -> Local | None:
        """``HTTPProtocol``'s client-certificate gate, computed once per connection and routing table."""
        info = self._info_h2
        row = info.tls_host
        if info.scheme != "https" or row is None or row.client_auth is None:
            return None
        table = self._ref.table
        if table is not self._gate_table:
            cert = info.client_cert
            self._gate_table = table
            self._gate = client_auth_gate(row.client_auth, cert.verified if cert is not None else None,
                                          cert.subject_dn if cert is not None else "", table.match_cn)
        return self._gate

    def _open(self, sid: int, head_request: bool, grpc: bool, ended: bool) -> StreamTransport:
        st = StreamTransport(self, self.session, sid, head_request, grpc, ended)
        self._streams[sid] = st
        self._metrics.h2_streams_open.inc()
        if self._loop is not None:  # a client that then accepts none of our bytes is found by this
            self._arm(self._loop.time() + self._settings.client_send_timeout)
        return st

    # --- connection state -------------------------------------------------------------------------

    def _calm(self, reason: str) -> None:
        """A flood the guard caught: GOAWAY ENHANCE_YOUR_CALM and close."""
        self._metrics.h2_violations.labels(reason).inc()
        log.info("h2 flood", extra={"reason": reason, "client": self._info_h2.client_addr[0]})
        self.session.terminate(ENHANCE_YOUR_CALM)
        self._fail()

    def _fail(self) -> None:
        """Send what the session queued (its GOAWAY) and close."""
        self._batch = False
        self.write_paused = False  # the GOAWAY goes into the transport's buffer whatever its level
        self._write_out()
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        for st in list(self._streams.values()):
            st.peer_reset()
        if self._transport is not None:
            self._transport.close()

    def _arm(self, deadline: float) -> None:
        if fires_by(self._timer, deadline):
            return
        if self._loop is not None and not self._closed:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        """The connection's one timer: preface, idle, a stalled client, gRPC deadlines."""
        self._timer = None
        loop = self._loop
        if loop is None or self._closed:
            return
        now = loop.time()
        settings = self._settings
        next_at = _INF
        if not self._preface:
            at = self._started + settings.header_timeout
            if at <= now:
                self._metrics.http_timeouts.labels("client_header").inc()
                self._close()
                return
            next_at = at
        if not self._streams:
            at = self._idle_since + settings.keepalive_timeout
            if at <= now:
                self.session.terminate(NO_ERROR)
                self._fail()
                return
            next_at = min(next_at, at)
        else:
            if self.write_paused or self.session.buffered:
                at = self._progress_at + settings.client_send_timeout
                if at <= now:
                    self._metrics.http_timeouts.labels("client_send").inc()
                    self._closed = True
                    for st in list(self._streams.values()):
                        st.peer_reset()
                    if self._transport is not None:
                        self._transport.abort()
                    return
                next_at = min(next_at, at)
            else:
                next_at = min(next_at, now + settings.client_send_timeout)
            for st in list(self._deadlines):
                if st.deadline <= now:
                    self._deadlines.discard(st)
                    st.expire()
                else:
                    next_at = min(next_at, st.deadline)
            self._write_out()
            if not self._streams:
                next_at = min(next_at, self._idle_since + settings.keepalive_timeout)
        if next_at != _INF and not self._closed:
            self._timer = loop.call_at(next_at, self._on_timer)
