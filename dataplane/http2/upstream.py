"""Backends that speak HTTP/2 (``Pool.protocol == "h2"``: h2c, h2 over TLS, gRPC).

``HTTPProtocol`` talks to a pool through the ``Upstream`` interface and to one exchange through the
``UpstreamConnection`` interface (``dataplane/http/upstream.py``). Here the same two interfaces are
served by ``H2Upstream`` and ``H2Stream``: an exchange is one stream on a shared, multiplexed
``H2BackendConnection``. The request head ``HTTPProtocol`` built (HTTP/1.1, already filtered) is
parsed back and sent as HEADERS; the body it writes (raw content-length bytes or chunked framing) is
un-framed into DATA frames within the backend's windows; the response comes back as a
``ResponseHead`` (HTTP/1.1 form), body pieces, trailers (``upstream_trailers``) and the end.

Why streams rather than a connection per exchange: gRPC backends expect multiplexing, and one TLS
handshake serves up to ``MAX_STREAMS`` concurrent exchanges. No PING keepalive: an idle connection is
closed after ``upstream_idle_timeout``; a dead one shows up as a connection loss, and a request that
lost nothing but its stream (GOAWAY, refused stream) is retried by ``HTTPProtocol``'s idempotent rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from typing import TYPE_CHECKING, cast

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from dataplane.balancer import UpstreamPool
from dataplane.http.framing import BodyReader, ChunkedReader, LengthReader, ParseError
from dataplane.http.parser import ResponseHead, parse_request_head
from dataplane.http.responses import REASONS
from dataplane.http.upstream import ConnectError, ResponseSink, UpstreamBase, fires_by
from dataplane.metrics import Metrics
from dataplane.snapshot import Endpoint, Pool

if TYPE_CHECKING:
    from dataplane.http.settings import HTTPSettings

log = logging.getLogger(__name__)

MAX_STREAMS = 100  # concurrent streams per backend connection, whatever the backend allows
PAUSE_ABOVE = 64 * 1024  # request body bytes buffered (window closed) before the client is paused
RESUME_BELOW = 16 * 1024
STREAM_WINDOW = 256 * 1024  # what the backend may send on one stream before we acknowledge
CONNECTION_WINDOW = 16 * 1024 * 1024  # shared by all streams: a paused stream must not starve the others
# Request fields that describe the HTTP/1.1 connection, not the message (RFC 9113 8.2.2): never sent.
_CONNECTION_FIELDS = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te", b"host",
})
_NOT_FINISHED, _FINISHED = 0, 1


def h2_request_fields(head: bytes, https: bool) -> tuple[list[tuple[bytes, bytes]], bool, BodyReader | None]:
    """An HTTP/1.1 request head (as ``upstream_request_head`` built it) -> HTTP/2 fields, whether it
    has Upgrade, and the reader that un-frames the body ``HTTPProtocol`` will write (None: no body).

    ``ParseError`` if the head does not parse (it always does: the proxy wrote it)."""
    end = head.find(b"\r\n\r\n")
    req = parse_request_head(head[:end] if end >= 0 else head, len(head) + 1, len(head) + 1, 1 << 16)
    fields = [
        (b":method", req.method),
        (b":scheme", b"https" if https else b"http"),
        (b":path", req.target),
        (b":authority", req.host),
    ]
    for lname, line in req.headers:
        if lname in _CONNECTION_FIELDS:
            continue
        fields.append((lname, line.partition(b":")[2].strip(b" \t")))
    fields.append((b"te", b"trailers"))
    body: BodyReader | None = None
    if req.chunked:
        body = ChunkedReader(502)
    elif req.content_length > 0:
        body = LengthReader(req.content_length)
    return fields, bool(req.upgrade), body


def response_head(fields: list[tuple[bytes, bytes]]) -> ResponseHead:
    """HTTP/2 response fields -> the HTTP/1.1 ``ResponseHead`` the client side works with (h2 validated
    them: lower-case names, no CR/LF/NUL, pseudo-fields first)."""
    status = 0
    length = -1
    headers: list[tuple[bytes, bytes]] = []
    for name, value in fields:
        if name[:1] == b":":
            if name == b":status":
                status = int(value)
            continue
        if name == b"content-length" and length < 0 and value.isdigit():
            length = int(value)
        headers.append((name, name + b": " + value))
    return ResponseHead(11, status, REASONS.get(status, b"Unknown"), headers, length, False, False, frozenset())


_GRPC_TRAILERS = frozenset({b"grpc-status", b"grpc-message", b"grpc-status-details-bin"})


def split_trailers_only(fields: list[tuple[bytes, bytes]]) -> tuple[ResponseHead, list[tuple[bytes, bytes]]]:
    """A gRPC "trailers-only" response (one HEADERS frame with END_STREAM carrying ``grpc-status``) as a
    head and trailers: HTTP/1.1, the engine's internal form, has no trailers-only response, but an empty
    chunked body with trailers means the same and reaches an HTTP/2 client as HEADERS + trailing HEADERS
    (which every gRPC client accepts). No ``grpc-status``: no trailers, the head as it is."""
    if not any(name == b"grpc-status" for name, _ in fields):
        return response_head(fields), []
    trailers = [(n, v) for n, v in fields if n in _GRPC_TRAILERS]
    head = response_head([(n, v) for n, v in fields if n not in _GRPC_TRAILERS and n != b"content-length"])
    return head, trailers


# --- one pool --------------------------------------------------------------------------------


class H2Upstream(UpstreamBase):
    """One h2 pool: live backend connections per endpoint, each carrying up to ``MAX_STREAMS`` exchanges."""

    def __init__(
        self,
        spec: Pool,
        balancer: UpstreamPool,
        ssl_context: ssl.SSLContext | None,
        tls_error: str,
        settings: HTTPSettings,
        metrics: Metrics,
        previous: H2Upstream | None = None,
    ) -> None:
        super().__init__(spec, balancer, ssl_context, tls_error, settings, metrics)
        self._conns: dict[Endpoint, list[H2BackendConnection]] = {}
        self._opening: dict[Endpoint, asyncio.Task[H2BackendConnection]] = {}
        if previous is not None:  # live connections (streams in flight included) move to this table
            for ep, conns in previous._conns.items():
                if ep in balancer.endpoints:
                    for conn in conns:
                        conn.upstream = self
                    self._conns[ep] = conns
            previous._conns = {}

    def take_idle(self, ep: Endpoint) -> H2Stream | None:
        """A stream on a live connection to ``ep`` with a free stream slot, else None."""
        for conn in self._conns.get(ep, ()):
            stream = conn.open_stream()
            if stream is not None:
                return stream
        return None

    def forget(self, conn: H2BackendConnection) -> None:
        conns = self._conns.get(conn.endpoint)
        if conns and conn in conns:
            conns.remove(conn)

    def close_idle(self) -> None:
        """Close every connection that carries no stream (those with streams close when they end)."""
        for conns in list(self._conns.values()):
            for conn in list(conns):
                if not conn.streams:
                    conn.close()

    async def connect(self, ep: Endpoint) -> H2Stream:
        """A stream on a new connection to ``ep``; concurrent callers share one connect. ``ConnectError``
        as ``Upstream.connect`` (and 502 when a TLS backend does not select ALPN ``h2``)."""
        for _ in range(3):  # a connection that filled up or went away before our turn: another one
            task = self._opening.get(ep)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._open(ep))
                self._opening[ep] = task
                task.add_done_callback(functools.partial(self._opened, ep))
            conn = await asyncio.shield(task)
            stream = conn.open_stream()
            if stream is not None:
                return stream
            stream = self.take_idle(ep)
            if stream is not None:
                return stream
        raise ConnectError(502, "connect_error", "no HTTP/2 stream available on the upstream")

    def _opened(self, ep: Endpoint, task: asyncio.Task[H2BackendConnection]) -> None:
        if self._opening.get(ep) is task:
            del self._opening[ep]
        if not task.cancelled():
            task.exception()  # retrieved: nobody may be waiting any more

    async def _open(self, ep: Endpoint) -> H2BackendConnection:
        loop = asyncio.get_running_loop()
        conn = await self.dial(ep, lambda: H2BackendConnection(self, ep, loop), _require_h2)
        self._conns.setdefault(ep, []).append(conn)
        return conn


def _require_h2(conn: H2BackendConnection) -> ConnectError | None:
    """A TLS backend must select ALPN h2: HTTP/2 bytes to an HTTP/1.1 server would be garbage to it."""
    if conn.alpn_ok():
        return None
    conn.close()
    return ConnectError(502, "tls_alpn", "backend did not negotiate HTTP/2")


# --- one backend connection --------------------------------------------------------------------


class H2BackendConnection(asyncio.Protocol):
    """One HTTP/2 client connection to a backend, multiplexing the streams of many client exchanges."""

    def __init__(self, upstream: H2Upstream, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.upstream = upstream
        self.endpoint = endpoint
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, H2Stream] = {}  # started streams by id
        self.reserved = 0  # streams handed out, not started yet
        self.https = upstream.ssl_context is not None
        self.closed = False
        self.going_away = False  # GOAWAY received (or sent): no new streams
        self._idle_timer: asyncio.TimerHandle | None = None

    # --- asyncio callbacks ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        h2 = self.h2
        h2.initiate_connection()
        h2.update_settings({SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        self._arm_idle()

    def alpn_ok(self) -> bool:
        """Cleartext (h2c, prior knowledge) needs no ALPN; over TLS the backend must have selected h2."""
        if self.transport is None or self.closed:
            return False
        if not self.https:
            return True
        ssl_object = self.transport.get_extra_info("ssl_object")
        return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except H2Error as exc:
            log.debug("HTTP/2 protocol error from upstream", extra={"pool": self.upstream.spec.id, "error": str(exc)})
            self.flush()
            self._lose_all(502, "bad_response", "upstream broke the HTTP/2 protocol")
            return
        touched: list[H2Stream] = []
        for event in events:
            self._event(event, touched)
        for stream in touched:
            if stream.sink is not None:
                stream.sink.upstream_flush()
        self.flush()

    def _event(self, event: Event, touched: list[H2Stream]) -> None:
        sid = getattr(event, "stream_id", None)
        stream = self.streams.get(sid) if sid is not None else None
        if isinstance(event, DataReceived):
            if stream is not None:
                stream.on_data(event.data or b"", event.flow_controlled_length or 0)
                if stream not in touched:
                    touched.append(stream)
            elif sid is not None and event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, ResponseReceived):
            if stream is not None:
                stream.on_head(event.headers or [], event.stream_ended is not None)
                touched.append(stream)
        elif isinstance(event, TrailersReceived):
            if stream is not None:
                stream.on_trailers(event.headers or [])
        elif isinstance(event, StreamEnded):
            if stream is not None:
                stream.on_end()
        elif isinstance(event, StreamReset):
            if stream is not None:
                stream.on_reset(event.error_code)
        elif isinstance(event, (WindowUpdated, RemoteSettingsChanged)):
            for s in list(self.streams.values()) if stream is None else [stream]:
                s.send_pending()
        elif isinstance(event, ConnectionTerminated):
            self._goaway(event.last_stream_id, event.error_code)
        elif isinstance(event, InformationalResponseReceived) and stream is not None:
            stream.touch()  # 1xx: skipped, but the backend is alive

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_idle()
        self.upstream.forget(self)
        self._lose_all(502, "closed", "upstream closed the connection before the response was complete")

    # --- streams ---

    def capacity(self) -> int:
        limit = min(self.h2.remote_settings.max_concurrent_streams, MAX_STREAMS)
        return limit - len(self.streams) - self.reserved

    def open_stream(self) -> H2Stream | None:
        """Reserve a stream slot (the stream id is taken at ``start``, so ids go out in order)."""
        if self.closed or self.going_away or self.transport is None or self.transport.is_closing() \
                or self.capacity() <= 0:
            return None
        self.reserved += 1
        self._cancel_idle()
        return H2Stream(self)

    def started(self, stream: H2Stream) -> int:
        self.reserved -= 1
        sid = self.h2.get_next_available_stream_id()
        self.streams[sid] = stream
        return sid

    def ended(self, stream: H2Stream) -> None:
        """A stream is over (or a reserved slot was given back)."""
        if stream.stream_id:
            self.streams.pop(stream.stream_id, None)
        else:
            self.reserved -= 1
        if not self.streams and not self.reserved:
            if self.going_away:
                self.close()
            else:
                self._arm_idle()

    def flush(self) -> None:
        out = self.h2.data_to_send()
        if out and self.transport is not None and not self.closed:
            self.transport.write(out)

    def close(self) -> None:
        if self.closed:
            return
        if self.h2.state_machine.state != ConnectionState.CLOSED:
            try:
                self.h2.close_connection()  # GOAWAY: the backend knows no stream was cut
                self.flush()
            except H2Error:
                pass
        self.closed = True
        self._cancel_idle()
        self.upstream.forget(self)
        if self.transport is not None:
            self.transport.close()

    def _goaway(self, last_stream_id: int | None, error_code: int | None) -> None:
        """The backend will take no new streams; those above ``last_stream_id`` were never processed
        (safe to retry: lost as "closed" with no bytes). The rest may still complete."""
        self.going_away = True
        self.upstream.forget(self)
        last = last_stream_id if last_stream_id is not None else 0
        for sid, stream in list(self.streams.items()):
            if sid > last:
                stream.got_bytes = False
                stream.forget()  # the backend dropped it: nothing to reset
                stream.lost(502, "closed", "upstream went away before the stream was processed")
        if error_code:
            self._lose_all(502, "closed", "upstream ended the connection with an error")
            return
        # h2 treats any GOAWAY as the end of the connection; the streams the backend promised to finish
        # still need their frames, so the state machine stays open (no new stream is ever started).
        self.h2.state_machine.state = ConnectionState.CLIENT_OPEN
        if not self.streams and not self.reserved:
            self.close()

    def _lose_all(self, status: int, reason: str, message: str) -> None:
        for stream in list(self.streams.values()):
            stream.lost(status, reason, message)
        self.streams.clear()
        if not self.closed:
            self.closed = True
            self.upstream.forget(self)
            self._cancel_idle()
            if self.transport is not None:
                self.transport.close()

    def _arm_idle(self) -> None:
        if self._idle_timer is None and not self.closed:
            self._idle_timer = self.loop.call_later(self.upstream.idle_timeout, self._on_idle)

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_idle(self) -> None:
        self._idle_timer = None
        if not self.streams and not self.reserved:
            self.close()


# --- one exchange ------------------------------------------------------------------------------


class H2Stream:
    """One exchange on an ``H2BackendConnection``: the ``UpstreamConnection`` interface for ``HTTPProtocol``."""

    transport: asyncio.Transport | None = None  # no transport of its own (no tunnels over h2)

    def __init__(self, conn: H2BackendConnection) -> None:
        self.conn = conn
        self.endpoint = conn.endpoint
        self.loop = conn.loop
        self.sink: ResponseSink | None = None
        self.stream_id = 0
        self.got_bytes = False
        self.ended = False  # the stream is over for us (finished, reset or given back)
        self._head_request = False
        self._body: BodyReader | None = None
        self._sent_all = False  # END_STREAM sent
        self._received_all = False  # END_STREAM received
        self._out = bytearray()  # request body waiting for the backend's window
        self._write_paused = False
        self._read_paused = False
        self._unacked = 0  # flow-controlled bytes received while paused
        self._last_read = 0.0
        self._stall_since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- used by the client side ---

    def start(self, sink: ResponseSink, head: bytes, head_request: bool) -> None:
        """Send the request head as HEADERS (END_STREAM when no body follows)."""
        self.sink = sink
        self._head_request = head_request
        self._last_read = self.loop.time()
        try:
            fields, upgrade, body = h2_request_fields(head, self.conn.https)
        except ParseError:
            self._later_fail(502, "bad_request", "request head could not be translated to HTTP/2")
            return
        if upgrade:
            self._later_fail(502, "upgrade", "upgrade is not supported to an HTTP/2 backend")
            return
        conn = self.conn
        if conn.closed or conn.going_away:
            self._later_fail(502, "closed", "upstream connection went away")
            return
        self.stream_id = conn.started(self)
        self._body = body
        try:
            conn.h2.send_headers(self.stream_id, fields, end_stream=body is None)
        except H2Error as exc:
            self._later_fail(502, "bad_request", f"request could not be sent over HTTP/2: {exc}")
            return
        self._sent_all = body is None
        conn.flush()
        self._timer = self.loop.call_later(conn.upstream.spec.read_timeout, self._on_timer)

    def write(self, data: bytes) -> None:
        """Request body bytes as ``HTTPProtocol`` frames them: un-framed, then sent within the windows."""
        body = self._body
        if body is None or self.ended or self._sent_all:
            return
        self._last_read = self.loop.time()  # a slow upload is activity too, not a backend stall
        try:
            pieces, _ = body.feed(data)
        except ParseError:
            self._fail(502, "bad_request", "request body framing broke")
            return
        if not self._out:
            self._stall_since = self._last_read  # the send clock starts when bytes start to wait
        for piece in pieces:
            self._out += piece
        self.send_pending()
        self.conn.flush()

    def pause_reading(self) -> None:
        self._read_paused = True

    def resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            self._acknowledge()
            self.conn.flush()
            if self.sink is not None and not self.ended:
                self._last_read = self.loop.time()

    def release(self, request_complete: bool) -> None:
        self.sink = None
        self._end(ErrorCodes.CANCEL)

    def close(self) -> None:
        self.sink = None
        self._end(ErrorCodes.CANCEL)

    def abort(self) -> None:
        self.sink = None
        self._end(ErrorCodes.CANCEL)

    # --- events from the connection ---

    def forget(self) -> None:
        self._received_all = self._sent_all = True

    def touch(self) -> None:
        self._last_read = self.loop.time()
        self.got_bytes = True

    def on_head(self, fields: list[tuple[bytes, bytes]], ends_stream: bool = False) -> None:
        self.touch()
        sink = self.sink
        if sink is None:
            return
        if ends_stream and not self._head_request:
            head, trailers = split_trailers_only(fields)
            if trailers:
                sink.upstream_head(head)
                if self.sink is not None:
                    sink.upstream_trailers(trailers)
                return
        sink.upstream_head(response_head(fields))

    def on_data(self, data: bytes, flow: int) -> None:
        self.touch()
        if self._read_paused and not self.ended:
            self._unacked += flow
        elif flow:
            self.conn.h2.acknowledge_received_data(flow, self.stream_id)
        sink = self.sink
        if sink is not None and data:
            sink.upstream_body(data)

    def on_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.touch()
        sink = self.sink
        if sink is not None:
            sink.upstream_trailers([(n, v) for n, v in fields if n[:1] != b":"])

    def on_end(self) -> None:
        self._received_all = True
        sink = self.sink
        if sink is not None:
            sink.upstream_flush()
            sink.upstream_done()  # calls ``release``
        elif self._sent_all:
            self._end(ErrorCodes.CANCEL)

    def on_reset(self, code: int | None) -> None:
        self._received_all = self._sent_all = True  # h2 closed the stream
        if code == ErrorCodes.REFUSED_STREAM and not self.got_bytes:
            self.lost(502, "closed", "upstream refused the stream")  # never processed: retry-safe
        else:
            self.lost(502, "reset", f"upstream reset the stream (error code {code})")

    def lost(self, status: int, reason: str, message: str) -> None:
        """The stream ended without a complete response (reset, connection gone, GOAWAY)."""
        sink = self.sink
        self.sink = None
        self._end(ErrorCodes.CANCEL)  # RST_STREAM unless the stream is already closed both ways
        if reason != "closed":
            self.conn.upstream.failure(reason)
        if sink is not None:
            sink.upstream_lost(status, reason, message)

    def send_pending(self) -> None:
        """Send buffered body bytes while the windows allow; END_STREAM once the body is complete."""
        if self.ended or self._sent_all or not self.stream_id:
            return
        h2 = self.conn.h2
        out = self._out
        sid = self.stream_id
        try:
            while out:
                window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if window <= 0:
                    break
                piece = bytes(out[:window])
                del out[:window]
                h2.send_data(sid, piece)
                self._stall_since = self.loop.time()
            body = self._body
            if not out and body is not None and body.done:
                h2.end_stream(sid)
                self._sent_all = True
        except H2Error:
            self._fail(502, "closed", "upstream stream closed while the request was sent")
            return
        size = len(out)
        sink = self.sink
        if not self._write_paused and size > PAUSE_ABOVE:
            self._write_paused = True
            deadline = self._stall_since + self.conn.upstream.spec.send_timeout
            if not fires_by(self._timer, deadline):
                self._timer = self.loop.call_at(deadline, self._on_timer)
            if sink is not None:
                sink.upstream_pause_writing()
        elif self._write_paused and size < RESUME_BELOW:
            self._write_paused = False
            if sink is not None:
                sink.upstream_resume_writing()

    # --- internals ---

    def _acknowledge(self) -> None:
        if self._unacked:
            flow, self._unacked = self._unacked, 0
            self.conn.h2.acknowledge_received_data(flow, self.stream_id)

    def _end(self, code: ErrorCodes) -> None:
        """This stream is over for us: reset it if either side is unfinished; the slot goes back."""
        if self.ended:
            return
        self.ended = True
        self._cancel_timer()
        conn = self.conn
        if self.stream_id:
            if self._unacked:  # the connection window must not shrink for good
                flow, self._unacked = self._unacked, 0
                conn.h2.acknowledge_received_data(flow, self.stream_id)
            if not (self._sent_all and self._received_all) and not conn.closed:
                with contextlib.suppress(H2Error):
                    conn.h2.reset_stream(self.stream_id, code)
            conn.flush()
        conn.ended(self)

    def _later_fail(self, status: int, reason: str, message: str) -> None:
        """Fail from ``start``: reported on the next loop turn, after ``HTTPProtocol._attach`` returned."""
        self.loop.call_soon(self._fail, status, reason, message)

    def _fail(self, status: int, reason: str, message: str) -> None:
        if self.ended and self.sink is None:
            return
        self.lost(status, reason, message)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        """Read timeout since the last byte of this stream (not while the client holds reading), and
        send timeout while request body bytes wait for a window that does not open."""
        self._timer = None
        if self.ended or self.sink is None:
            return
        spec = self.conn.upstream.spec
        now = self.loop.time()
        next_at = float("inf")
        if self._out:
            at = self._stall_since + spec.send_timeout
            if at <= now:
                self.conn.upstream.metrics.http_timeouts.labels("upstream_send").inc()
                self._fail(504, "send_timeout", "upstream did not accept the request in time")
                return
            next_at = at
        elapsed = now - self._last_read
        if self._read_paused or elapsed < spec.read_timeout:
            next_at = min(next_at, now + (spec.read_timeout - elapsed if elapsed < spec.read_timeout
                                          else spec.read_timeout))
        else:
            self.conn.upstream.metrics.http_timeouts.labels("upstream_read").inc()
            self._fail(504, "read_timeout", "upstream read timed out")
            return
        if not fires_by(self._timer, next_at):
            self._timer = self.loop.call_at(next_at, self._on_timer)
