"""HTTP/2 to clients: one ``H2ServerProtocol`` per TLS connection that negotiated ``h2`` by ALPN.

The ``h2`` library does framing, HPACK, stream states and flow-control bookkeeping (sans-IO); this
class is the I/O shell around it. Every client stream becomes one ordinary ``HTTPProtocol`` exchange
through a ``StreamTransport`` (``stream.py``), so routing, limits, timeouts, client-certificate gates,
HSTS, X-Forwarded-* and the access log are the HTTP/1.1 engine's, unchanged. What is HTTP/2's own lives
here: the local SETTINGS, the concurrency cap (REFUSED_STREAM, the connection survives), the frame
pre-scan against floods (``guard.py``: a violation is GOAWAY ENHANCE_YOUR_CALM), gRPC deadlines, and the
connection's one timer (preface, idle, a client that accepts none of our bytes, deadlines). A drain or a
changed TLS row is a graceful GOAWAY: open streams finish, new ones are refused, then the close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame, HeadersFrame

from dataplane.access_log import AccessLog
from dataplane.http.connection import HTTPProtocol
from dataplane.http.info import ConnectionInfo, complete_info
from dataplane.http.responses import local_response
from dataplane.http.table import TLS_SAME, TableRef, tls_change
from dataplane.http.upstream import fires_by
from dataplane.http2.guard import FrameGuard
from dataplane.http2.stream import StreamTransport
from dataplane.http2.translate import H2Request, translate_request
from dataplane.metrics import Metrics

log = logging.getLogger(__name__)

CONNECTION_WINDOW = 1024 * 1024  # the connection's receive window (streams keep the 65535 default)
HEADER_TABLE_SIZE = 4096
_INF = float("inf")


class _Connection(H2Connection):
    """h2's connection with a stream over the concurrency cap refused (RST_STREAM REFUSED_STREAM, RFC 9113
    5.1.2) instead of h2's TooManyStreamsError, which would end the whole connection."""

    def _receive_headers_frame(self, frame: HeadersFrame) -> Any:
        sid = frame.stream_id
        limit = self.local_settings.max_concurrent_streams
        # len(streams) counts closed ones not yet pruned too: below the cap, the exact count is not needed.
        if sid in self.streams or len(self.streams) < limit or self.open_inbound_streams < limit:
            return super()._receive_headers_frame(frame)
        # Let h2 open the stream (the HPACK decoder and the stream-id order must see the block), then refuse it.
        values = self.local_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS]
        values.appendleft(limit + 1)
        try:
            frames, events = super()._receive_headers_frame(frame)
        finally:
            values.popleft()
        frames.extend(self.streams[sid].reset_stream(ErrorCodes.REFUSED_STREAM))
        return frames, [e for e in events if getattr(e, "stream_id", None) != sid]


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
        # Request fields are validated (and cookies joined) once, by translate_request, which refuses what h2's
        # own inbound checks would (h2spec 8.1.2 passes either way); response fields come from parsed heads.
        # h2's checks on both sides cost about a fifth of a stream's CPU. Content-length vs DATA stays h2's.
        self.h2 = _Connection(H2Configuration(client_side=False, header_encoding=None,
                                              validate_inbound_headers=False, normalize_inbound_headers=False,
                                              validate_outbound_headers=False, normalize_outbound_headers=False))
        self._streams: dict[int, StreamTransport] = {}
        self._chunked: set[int] = set()  # streams whose request body is fed chunk-framed
        self._deadlines: set[StreamTransport] = set()
        self._info_h2 = self._info_grpc = info
        self.write_paused = False
        self._batch = False  # inside data_received: one transport write at the end
        self._preface = False
        self._closed = False
        self._draining = False
        self._last_sid = 0
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
        h2 = self.h2
        h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: self._limits.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: self._settings.max_header_bytes,
            SettingCodes.HEADER_TABLE_SIZE: HEADER_TABLE_SIZE,
            SettingCodes.INITIAL_WINDOW_SIZE: 65535,
            SettingCodes.ENABLE_PUSH: 0,
        })
        h2.decoder.max_header_list_size = self._settings.max_header_bytes
        h2.decoder.max_allowed_table_size = HEADER_TABLE_SIZE
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._started = self._idle_since = self._progress_at = now = loop.time()
        self._metrics.h2_connections_total.inc()
        self.kick()
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
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            log.debug("h2 protocol error", extra={"reason": str(exc)[:200]})
            self._fail()
            return
        self._batch = True
        try:
            for event in events:
                handler = _HANDLERS.get(type(event))
                if handler is not None:
                    handler(self, event)
        except ProtocolError as exc:  # a send refused by h2's state machine: the connection is in a state we lost
            log.debug("h2 protocol error while handling events", extra={"reason": str(exc)[:200]})
            self._fail()
            return
        finally:
            self._batch = False
        self.kick()

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
        self._flush_all()

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
        """Graceful GOAWAY (NO_ERROR, the last stream id seen): open streams finish, then the connection closes."""
        if self._closed or self._draining or self._transport is None:
            return
        self._draining = True
        self._last_sid = self.h2.highest_inbound_stream_id
        # h2's close_connection would stop the open streams too: the frame is written beside its state machine.
        self.kick()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._last_sid
        frame.error_code = ErrorCodes.NO_ERROR
        self._transport.write(frame.serialize())
        if not self._streams:
            self._close()

    # --- used by the streams ----------------------------------------------------------------------

    def kick(self) -> None:
        """Write what h2 has to send (once per read while events are handled)."""
        if self._batch or self._transport is None:
            return
        data = self.h2.data_to_send()
        if data:
            self._transport.write(data)
            if self._loop is not None:
                self._progress_at = self._loop.time()

    def acknowledge(self, sid: int, size: int) -> None:
        self.h2.acknowledge_received_data(size, sid)
        self.kick()

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
            if self._draining:
                self.kick()
                self._close()
            else:
                self._arm(self._idle_since + self._settings.keepalive_timeout)

    # --- events -----------------------------------------------------------------------------------

    def _on_request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        assert sid is not None
        if self._draining and sid > self._last_sid:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        ended = event.stream_ended is not None
        req = translate_request(event.headers or [], ended)
        if not isinstance(req, H2Request):
            if req.status == 400:  # malformed (RFC 9113 8.1.1): a stream error, not a response
                self.h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
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
        proto.connection_made(st)  # type: ignore[arg-type]  # an asyncio transport look-alike
        proto.data_received(req.head)

    def _open(self, sid: int, head_request: bool, grpc: bool, ended: bool) -> StreamTransport:
        st = StreamTransport(self, self.h2, sid, head_request, grpc, ended)
        self._streams[sid] = st
        self._metrics.h2_streams_open.inc()
        if self._loop is not None:  # a client that then accepts none of our bytes is found by this
            self._arm(self._loop.time() + self._settings.client_send_timeout)
        return st

    def _on_data(self, event: DataReceived) -> None:
        sid = event.stream_id
        assert sid is not None
        st = self._streams.get(sid)
        size = event.flow_controlled_length or 0
        if st is None:
            if size:
                self.h2.acknowledge_received_data(size, sid)  # the connection window only: the stream is gone
            return
        st.receive(event.data or b"", size, sid in self._chunked)

    def _on_stream_ended(self, event: StreamEnded) -> None:
        st = self._streams.get(event.stream_id or 0)
        if st is not None:
            st.end_request(st.sid in self._chunked)

    def _on_reset(self, event: StreamReset) -> None:
        st = self._streams.get(event.stream_id or 0)
        if st is not None:
            st.peer_reset()

    def _on_window(self, event: WindowUpdated) -> None:
        if self.write_paused:
            return
        if not event.stream_id:
            self._flush_all()
            return
        st = self._streams.get(event.stream_id)
        if st is not None and st.out:
            st.flush()

    def _on_settings(self, event: RemoteSettingsChanged) -> None:
        if not self._preface:
            self._preface = True
            if not self._streams:
                self._arm(self._idle_since + self._settings.keepalive_timeout)
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._flush_all()

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        if event.error_code == ErrorCodes.NO_ERROR and self._streams:
            # The client opens no more streams; those it opened are answered (RFC 9113 6.8). h2 closes its state
            # machine at any GOAWAY and would refuse to send their responses: it is reopened for them.
            self.h2.state_machine.state = ConnectionState.SERVER_OPEN
            self._draining = True
            self._last_sid = self.h2.highest_inbound_stream_id
            return
        self._close()

    # --- connection state -------------------------------------------------------------------------

    def _flush_all(self) -> None:
        for st in list(self._streams.values()):
            if st.out or st.state == 2:  # DONE: its END_STREAM may be waiting for the window
                st.flush()
        self.kick()

    def _calm(self, reason: str) -> None:
        """A flood the guard caught: GOAWAY ENHANCE_YOUR_CALM and close."""
        self._metrics.h2_violations.labels(reason).inc()
        log.info("h2 flood", extra={"reason": reason, "client": self._info_h2.client_addr[0]})
        with contextlib.suppress(ProtocolError):
            self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self.h2.highest_inbound_stream_id)
        self._batch = False
        self.kick()
        self._close()

    def _fail(self) -> None:
        """h2 refused what the client sent (it queued the GOAWAY): send that and close."""
        self._batch = False
        self.kick()
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
                self._goaway_idle()
                return
            next_at = min(next_at, at)
        else:
            if self.write_paused or any(st.out for st in self._streams.values()):
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
            self.kick()
            if not self._streams:
                next_at = min(next_at, self._idle_since + settings.keepalive_timeout)
        if next_at != _INF and not self._closed:
            self._timer = loop.call_at(next_at, self._on_timer)

    def _goaway_idle(self) -> None:
        with contextlib.suppress(ProtocolError):
            self.h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=self.h2.highest_inbound_stream_id)
        self.kick()
        self._close()


_HANDLERS: dict[type[Event], Any] = {
    RequestReceived: H2ServerProtocol._on_request,
    DataReceived: H2ServerProtocol._on_data,
    StreamEnded: H2ServerProtocol._on_stream_ended,
    StreamReset: H2ServerProtocol._on_reset,
    WindowUpdated: H2ServerProtocol._on_window,
    RemoteSettingsChanged: H2ServerProtocol._on_settings,
    ConnectionTerminated: H2ServerProtocol._on_terminated,
}
