"""The client side of the reverse proxy: one ``HTTPProtocol`` per client connection.

A protocol class, not streams: every step is a callback, and the common case (keep-alive request to
a backend with an idle pooled connection) runs without creating a task, a future or a timer.
Requests are handled one at a time: bytes of a pipelined next request wait in the buffer (reading
paused beyond ``max_body_buffer``) until the current response is done, so the backend never sees
two requests at once and a framing error can never leak a second request.

Flow control both ways: a full upstream write buffer pauses reading from the client, a full client
write buffer pauses reading from the backend.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import cast

from dataplane.access_log import AccessLog
from dataplane.http.framing import (
    LAST_CHUNK,
    BodyReader,
    ChunkedReader,
    HeadReader,
    LengthReader,
    ParseError,
    chunk,
    last_chunk,
)
from dataplane.http.headers import (
    CHUNKED,
    NO_BODY,
    UNTIL_CLOSE,
    client_response_head,
    connection_block,
    request_id,
    response_framing,
    upstream_request_head,
)
from dataplane.http.info import ClientCert, ConnectionInfo, client_cert_from_ssl, complete_info
from dataplane.http.parser import RequestHead, ResponseHead, parse_request_head
from dataplane.http.responses import REASONS, local_response
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import (
    NO_HOST_LABEL,
    TLS_CLOSE_AFTER,
    TLS_REFUSE,
    TLS_SAME,
    Forward,
    HTTPTable,
    Local,
    TableRef,
    client_auth_gate,
    host_name,
    tls_change,
)
from dataplane.http.upstream import ConnectError, Upstream, UpstreamConnection, fires_by
from dataplane.http2.upstream import H2Stream, H2Upstream
from dataplane.limits import RateLimit
from dataplane.metrics import Metrics
from dataplane.snapshot import Endpoint, Pool

__all__ = ["ClientCert", "ConnectionInfo", "HTTPProtocol", "client_cert_from_ssl"]

log = logging.getLogger(__name__)

# HTTPProtocol states (the upstream side has its own, ``upstream._UP_*``).
_CL_IDLE, _CL_REQUEST, _CL_TUNNEL, _CL_CLOSED, _CL_LINGER = range(5)
# After an error response to a request whose body was not read, input is read and dropped this long
# before the close: closing with unread bytes sends a reset, which can destroy the response in flight.
LINGER_SECONDS = 2.0
_P_BUFFER, _P_UPSTREAM = 1, 2
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def upgrade_idle_timeout(pool: Pool | None, settings: HTTPSettings) -> float:
    """How long an upgraded (WebSocket) connection to ``pool`` may stay silent both ways: the pool's bound (the
    Ingress's read timeout, when it set one, as ingress-nginx's ``proxy-read-timeout`` bounds a WebSocket), else
    ``--upgrade-idle-timeout``. Users who set 86400 for long-lived sockets keep them; who set 60 lose idle ones."""
    if pool is not None and pool.upgrade_idle_timeout is not None:
        return pool.upgrade_idle_timeout
    return settings.upgrade_idle_timeout


class HTTPProtocol(asyncio.Protocol):
    """HTTP/1.1 reverse proxy for one client connection (plain, or already-decrypted TLS).

    ``info`` carries what the edge decided (scheme, SNI row, client certificate); an empty
    ``client_addr`` or a zero ``server_port`` is read from the transport in ``connection_made``, and
    on a transport that did its own TLS handshake the client certificate is read from it too.
    """

    def __init__(self, table: HTTPTable | TableRef, info: ConnectionInfo, metrics: Metrics,
                 access_log: AccessLog | None = None) -> None:
        # Route, pool and endpoint come from ``ref.table`` for each request: a snapshot applied while
        # this connection is open reaches its next request. ``_table`` is the one the current request uses.
        self._ref = table if isinstance(table, TableRef) else TableRef(table)
        self._table = self._ref.table
        self._checked: HTTPTable | None = None  # table the handshake's SNI row was last checked against
        self._close_after = False  # the SNI row's certificate/protocols changed: close after this response
        self._gate: Local | None = None  # client-certificate policy answer for every request, if any
        self._settings = self._table.settings
        self._info = info
        self._metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        settings = self._settings
        self._heads = HeadReader(settings.max_request_line, settings.max_header_bytes, settings.max_headers)
        self._state = _CL_IDLE
        self._paused = 0
        self._client_write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._https = info.scheme == "https"
        self._tls_row = info.tls_host.host if info.tls_host is not None else None
        self._client_ip = ""
        self._block = b""
        # the current exchange
        self._req: RequestHead | None = None
        self._upstream: Upstream | H2Upstream | None = None
        self._conn: UpstreamConnection | H2Stream | None = None  # H2Stream: one stream to an h2 pool
        self._connecting: asyncio.Task[None] | None = None
        self._up_head = b""
        self._body: BodyReader | None = None  # framing of the current request body (None: no body)
        self._rechunk = False  # chunked request body: forwarded re-chunked, counted against ``_max_body``
        self._req_done = True
        self._resp_started = False
        self._framing = NO_BODY
        self._keep_alive = True
        self._tried: list[Endpoint] = []
        self._last_error: ConnectError | None = None
        self._reused = False
        self._retried = False
        self._started = 0.0
        self._label = NO_HOST_LABEL
        self._hsts: bytes | None = None
        self._pending = b""  # response head not yet written
        self._trailers: list[tuple[bytes, bytes]] | None = None  # response trailers (an HTTP/2 backend's)
        self._max_body = 0  # chunked request body limit of the current route (0: none)
        self._body_seen = 0
        self._last_in = 0.0  # last request-body (or tunnel) byte from the client
        self._last_out = 0.0  # last tunnel byte to the client
        self._tunnel_idle = 0.0  # silence bound of the upgraded connection, fixed when it upgrades
        self._stall_since = 0.0  # client write buffer last seen shrinking (while writes are paused)
        self._stall_size = 0
        # access log (None: off): connection byte totals, and what the current exchange learned on the way
        self._alog = access_log if access_log is not None and access_log.enabled else None
        self._in = self._out = self._in0 = self._out0 = 0
        self._tls: tuple[str | None, str | None, bool | None] | None = None  # read once, at the first line
        self._fwd: Forward | None = None
        self._ep: Endpoint | None = None
        self._t_conn = self._t_head = -1.0
        self._rid = b""
        self._status = 0
        self._logged = True

    # --- asyncio callbacks: client side ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._info = info = complete_info(self._info, transport)
        self._client_ip = info.client_addr[0]
        self._block = connection_block(info)
        row = info.tls_host
        if self._https and row is not None and row.client_auth is not None:
            cert = info.client_cert
            self._gate = client_auth_gate(row.client_auth, cert.verified if cert is not None else None,
                                          cert.subject_dn if cert is not None else "", self._table.match_cn)
        self._enter_idle(self._settings.header_timeout)

    def stream_made(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, block: bytes,
                    gate: Local | None, head: bytes) -> None:
        """``connection_made`` plus the request head, for one HTTP/2 stream (``H2ServerProtocol``): ``info`` is
        complete already, and the forwarding block and the client-certificate gate, the same for every stream
        of the connection, are computed once there. The head comes whole, so no header timer is armed."""
        self._transport = transport
        self._loop = loop
        self._client_ip = self._info.client_addr[0]
        self._block = block
        self._gate = gate
        self.data_received(head)
        if self._state == _CL_IDLE and self._timer is None:  # not one whole head: wait for the rest, bounded
            self._enter_idle(self._settings.header_timeout)

    def data_received(self, data: bytes) -> None:
        self._in += len(data)
        state = self._state
        if state == _CL_TUNNEL:
            self._last_in = self._now()
            if self._conn is not None:
                self._conn.write(data)
            return
        if state >= _CL_CLOSED:  # _CL_CLOSED or _CL_LINGER
            return  # lingering: the rest of a refused body is read and dropped
        if state == _CL_IDLE:
            if not self._buf:
                if data[-4:] == b"\r\n\r\n" and data.find(b"\r\n\r\n") == len(data) - 4 and data[:2] != b"\r\n":
                    # Exactly one whole head and nothing else (a keep-alive GET): parsed without the
                    # buffer. The parser enforces the same limits on a whole head as ``_process``.
                    settings = self._settings
                    try:
                        req = parse_request_head(data[:-4], settings.max_request_line, settings.max_header_bytes,
                                                 settings.max_headers)
                    except ParseError as exc:
                        self._reply(exc.status, exc.reason, close=True)
                        return
                    self._handle(req)
                    return
                self._deadline = self._now() + self._settings.header_timeout
            self._buf += data
            self._process()
            return
        buf = self._buf
        if not self._req_done:
            self._last_in = self._now()
            if self._conn is not None:
                if not buf:  # fast path: frame the read itself (a content-length piece goes on uncopied)
                    used = self._feed_body(data)
                    if used < 0 or used == len(data):
                        return
                    data = data[used:]  # the start of a pipelined next request
                else:
                    buf += data
                    self._pump_body()
                    data = b""
        buf += data
        if len(buf) > self._settings.max_body_buffer:
            self._pause(_P_BUFFER)

    def eof_received(self) -> bool | None:
        conn = self._conn
        up = conn.transport if conn is not None else None
        if self._state == _CL_TUNNEL and up is not None and up.can_write_eof():
            up.write_eof()  # half-close through the tunnel
            return True
        if self._state == _CL_LINGER:
            self._close()
            return None
        if self._state == _CL_REQUEST and self._req_done:
            # The client sent its whole request and then shut down its sending side: still answer it,
            # then close (asyncio ignores the True on TLS transports, which cannot half-close).
            self._keep_alive = False
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._logged:  # the exchange ended without a complete response (client gone, timeout, tunnel end)
            self._log(self._status if self._resp_started else 499)
        self._state = _CL_CLOSED
        self._cancel_timer()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        self._drop_upstream()

    def pause_writing(self) -> None:
        self._client_write_paused = True
        if self._transport is not None and self._loop is not None:
            self._stall_since = now = self._loop.time()
            self._stall_size = self._transport.get_write_buffer_size()
            self._arm(now + self._settings.client_send_timeout)
        if self._conn is not None:
            self._conn.pause_reading()

    def resume_writing(self) -> None:
        self._client_write_paused = False
        if self._conn is not None:
            self._conn.resume_reading()

    # --- request heads ----------------------------------------------------------------------

    def _process(self) -> None:
        """Parse and start requests while the connection is idle and a whole head is buffered."""
        settings = self._settings
        heads = self._heads
        while self._state == _CL_IDLE and self._buf:
            try:
                head = heads.read(self._buf)
                if head is None:
                    return
                req = parse_request_head(head, settings.max_request_line, settings.max_header_bytes,
                                         settings.max_headers)
            except ParseError as exc:
                self._reply(exc.status, exc.reason, close=True)
                return
            self._handle(req)

    def _handle(self, req: RequestHead) -> None:
        self._state = _CL_REQUEST
        self._req = req
        self._started = self._now()
        if self._alog is not None:
            self._exchange_started()
        table = self._table = self._ref.table
        if self._https:
            if table is not self._checked and self._check_tls_row(table, req):
                return
            if self._gate is not None:
                gate = self._gate
                extra = ((b"Location", gate.location),) if gate.location is not None else ()
                self._reply(gate.status, gate.message, close=req.has_body or not req.keep_alive or self._close_after,
                            extra=extra)
                return
            if not req.host and self._info.sni:
                # HTTP/1.0 without Host: the SNI is the only name the client gave; route (and forward) it.
                req.host = self._info.sni.encode("latin-1", "replace")
        decision = table.route(req, self._https, self._tls_row)
        if isinstance(decision, Local):
            self._label = decision.label
            extra = ((b"Location", decision.location),) if decision.location is not None else ()
            self._reply(decision.status, decision.message,
                        close=req.has_body or not req.keep_alive or self._close_after, extra=extra)
            return
        vhost = decision.vhost
        self._label = vhost.label
        self._fwd = decision
        if decision.rate is not None and self._rate_limited(decision.rate):
            return
        self._hsts = vhost.hsts if self._https else None
        limit = decision.max_body
        if limit and req.content_length > limit:  # refused before anything reaches the backend
            self._reply(413, "request body too large", close=True)
            return
        upstream = table.upstreams.get(decision.pool_id)
        if upstream is None:
            self._reply(503, "no ready endpoint", close=req.has_body or not req.keep_alive or self._close_after)
            return
        self._upstream = upstream
        self._keep_alive = req.keep_alive and not self._close_after
        self._max_body = limit if req.chunked else 0
        self._body_seen = 0
        if req.has_body:
            self._last_in = self._started
            self._arm(self._started + self._settings.client_body_timeout)
        self._rechunk = req.chunked
        self._body = ChunkedReader() if req.chunked else (
            LengthReader(req.content_length) if req.content_length > 0 else None)
        self._req_done = not req.has_body
        self._resp_started = False
        self._tried = []
        self._last_error = None
        self._retried = False
        self._rid = rid = request_id(req.request_id)
        self._up_head = upstream_request_head(req, self._block, rid,
                                              vhost.allow_underscore_headers, self._metrics)
        self._send(fresh=False)

    def _rate_limited(self, rate: RateLimit) -> bool:
        """The Ingress's limit-rps for this client IP: True when answered 429 (with Retry-After), not forwarded."""
        wait = rate.retry_after(self._info.client_addr[0], self._started)
        if not wait:
            return False
        self._metrics.requests_limited.labels(self._label).inc()
        req = self._req
        close = req is None or req.has_body or not req.keep_alive or self._close_after
        self._reply(429, "too many requests", close=close, extra=((b"Retry-After", str(math.ceil(wait)).encode()),))
        return True

    def _check_tls_row(self, table: HTTPTable, req: RequestHead) -> bool:
        """Compare the SNI row this connection shook hands with against ``table``; True: answered, do not forward.

        The TLS session is the only thing a live connection keeps. If its client authentication,
        mode or very existence changed, the request gets what a new connection would get (404 when
        the host is gone, else 421) and the connection closes; if only the certificate, protocols or
        ciphers changed, the request is served and the connection closed after it.
        """
        self._checked = table
        info = self._info
        handshake_row = info.tls_host
        key = info.sni or (handshake_row.host if handshake_row is not None else None)
        current = table.tls_row(key) if key else None
        verdict = tls_change(handshake_row, current)
        if verdict == TLS_SAME:
            return False
        if verdict == TLS_CLOSE_AFTER:
            self._close_after = True
            self._tls_row = current.host if current is not None else None
            return False
        host = host_name(req.host) if req.host else (key or "")
        if table.vhost(host) is None:
            self._reply(404, "no virtual host for this Host", close=True)
        else:
            self._reply(421, "the TLS settings of this host changed; reconnect", close=True)
        return True

    def table_swapped(self) -> None:
        """A snapshot was applied: an idle keep-alive connection whose next request would be refused
        (its SNI row's client auth, mode or existence changed) closes now. One whose certificate only
        was rotated serves its next request (then closes): a close racing a request the client just
        sent would fail it, and renewals are frequent."""
        if self._state != _CL_IDLE or self._buf or not self._https:
            return
        table = self._ref.table
        if table is self._checked:
            return
        info = self._info
        key = info.sni or (info.tls_host.host if info.tls_host is not None else None)
        if tls_change(info.tls_host, table.tls_row(key) if key else None) == TLS_REFUSE:
            self._close()

    # --- choosing and reaching an upstream ------------------------------------------------------

    def _send(self, fresh: bool) -> None:
        upstream = self._upstream
        assert upstream is not None
        if len(self._tried) >= self._settings.max_connect_attempts:
            ep = None
        else:
            ep = upstream.balancer.pick(self._client_ip, self._tried)
        if ep is None:
            err = self._last_error
            if err is not None:
                self._fail(err.status, err.message)
            else:
                self._fail(503, upstream.balancer.unavailable)
            return
        if not fresh:
            conn = upstream.take_idle(ep)
            if conn is not None:
                self._attach(conn, reused=True)
                return
        assert self._loop is not None
        self._connecting = self._loop.create_task(self._connect(upstream, ep))

    async def _connect(self, upstream: Upstream | H2Upstream, ep: Endpoint) -> None:
        try:
            conn = await upstream.connect(ep)
        except ConnectError as err:
            self._connecting = None
            if self._state != _CL_REQUEST:
                return
            self._tried.append(ep)
            self._last_error = err
            self._send(fresh=True)
            return
        self._connecting = None
        if self._state != _CL_REQUEST:
            conn.close()
            return
        self._attach(conn, reused=False)

    def _attach(self, conn: UpstreamConnection | H2Stream, reused: bool) -> None:
        req = self._req
        upstream = self._upstream
        assert req is not None and upstream is not None
        self._conn = conn
        self._reused = reused
        self._ep = conn.endpoint
        self._t_conn = self._now()
        upstream.balancer.started(conn.endpoint)
        conn.start(self, self._up_head, req.method == b"HEAD")
        if self._client_write_paused:
            conn.pause_reading()
        if not self._req_done and self._buf:
            self._pump_body()

    # --- request bodies ---------------------------------------------------------------------

    def _pump_body(self) -> None:
        """Forward what the buffer holds of the request body (the connection to the backend is ready)."""
        buf = self._buf
        if self._conn is None or self._req_done or not buf:
            return
        used = self._feed_body(bytes(buf))
        if used < 0:
            return
        del buf[:used]
        if self._paused & _P_BUFFER and len(buf) <= self._settings.max_body_buffer:
            self._unpause(_P_BUFFER)

    def _feed_body(self, data: bytes) -> int:
        """Frame ``data`` as request body and write it to the backend: bytes consumed (the rest
        belongs to the next request), or -1 after a framing error (answered, connection closing)."""
        body = self._body
        conn = self._conn
        assert body is not None and conn is not None
        try:
            pieces, used = body.feed(data)
        except ParseError as exc:
            self._body_error(exc)
            return -1
        if self._rechunk:
            if self._max_body:
                self._body_seen += sum(map(len, pieces))
                if self._body_seen > self._max_body:
                    self._body_error(ParseError(413, "request body too large"))
                    return -1
            if pieces:
                conn.write(chunk(b"".join(pieces)) if len(pieces) > 1 else chunk(pieces[0]))
            if body.done:
                conn.write(LAST_CHUNK)
        else:
            for piece in pieces:
                conn.write(piece)
        if body.done:
            self._request_sent()
        return used

    def _request_sent(self) -> None:
        self._req_done = True

    def _body_error(self, exc: ParseError) -> None:
        """A malformed request body: the backend has a partial request, so that connection goes."""
        self._drop_upstream(abort=True)
        if self._resp_started:
            self._close()
        else:
            self._reply(exc.status, exc.reason, close=True)

    # --- upstream events (ResponseSink) ---------------------------------------------------------

    def upstream_head(self, resp: ResponseHead) -> None:
        req = self._req
        transport = self._transport
        assert req is not None and transport is not None
        status = self._status = resp.status
        self._t_head = self._now()
        if status < 200 and status != 101:
            if req.version == 11:
                transport.write(b"HTTP/1.1 %d %s\r\n\r\n" % (status, REASONS.get(status, resp.reason)))
            return
        if status == 101:
            if not req.upgrade:
                self._lost_before_response(502, "bad_response", "upstream switched protocols unasked")
                return
            upgrade = next((line.partition(b":")[2].strip() for name, line in resp.headers if name == b"upgrade"),
                           req.upgrade)
            transport.write(client_response_head(resp, NO_BODY, True, req.version, self._hsts, upgrade))
            self._state = _CL_TUNNEL
            self._resp_started = True
            self._last_in = self._last_out = now = self._now()
            upstream = self._upstream
            self._tunnel_idle = upgrade_idle_timeout(upstream.spec if upstream is not None else None, self._settings)
            self._arm(now + self._tunnel_idle)
            self._table.count(self._label, status, self._info.protocol)
            conn = self._conn
            if conn is not None and self._buf:
                conn.write(bytes(self._buf))
                self._buf.clear()
            self._unpause(_P_BUFFER)
            return
        self._resp_started = True
        framing = response_framing(req.method == b"HEAD", resp, req.version)
        keep = self._keep_alive and framing != UNTIL_CLOSE and self._req_done
        self._keep_alive = keep
        self._framing = framing
        # Held back until the first body piece (or the end of this read) so head and body share one write.
        self._pending = client_response_head(resp, framing, keep, req.version, self._hsts)
        self._table.count(self._label, status, self._info.protocol)
        self._table.observe(self._label, self._now() - self._started)

    def upstream_body(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        pending = self._pending
        self._out += len(pending) + len(data)
        if self._framing == CHUNKED:
            transport.write(b"%b%x\r\n%b\r\n" % (pending, len(data), data))
        elif pending:
            transport.write(pending + data)
        else:
            transport.write(data)
        self._pending = b""

    def upstream_flush(self) -> None:
        if self._pending and self._transport is not None:
            self._out += len(self._pending)
            self._transport.write(self._pending)
            self._pending = b""

    def upstream_done(self) -> None:
        transport = self._transport
        assert transport is not None
        if self._framing == CHUNKED:
            trailers = self._trailers
            transport.write(self._pending + (last_chunk(trailers) if trailers else LAST_CHUNK))
        elif self._pending:
            transport.write(self._pending)
        self._out += len(self._pending)
        self._pending = b""
        self._trailers = None  # a length-framed or HTTP/1.0 response has nowhere to put them: dropped
        if not self._logged:
            self._log(self._status)
        conn = self._conn
        self._conn = None
        if conn is not None:
            if self._upstream is not None:
                self._upstream.balancer.finished(conn.endpoint)
            conn.release(self._req_done)
        if not self._keep_alive or not self._req_done or self._state != _CL_REQUEST:
            self._close()
            return
        self._enter_idle(self._settings.keepalive_timeout)
        self._unpause(_P_BUFFER | _P_UPSTREAM)
        if self._buf:
            self._deadline = self._now() + self._settings.header_timeout
            self._process()

    def upstream_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """The response's trailer fields (an HTTP/2 backend's trailing HEADERS): they end a chunked body."""
        self._trailers = fields

    def upstream_lost(self, status: int, reason: str, message: str) -> None:
        conn = self._conn
        self._conn = None
        if conn is not None and self._upstream is not None:
            self._upstream.balancer.finished(conn.endpoint)
        if self._state == _CL_TUNNEL or self._resp_started:
            self.upstream_flush()
            self._close()  # a response already under way cannot become an error response
            return
        req = self._req
        if (
            reason == "closed" and self._reused and not self._retried and conn is not None and not conn.got_bytes
            and req is not None and req.method in _IDEMPOTENT and not req.has_body
        ):
            # A pooled connection the backend closed while it sat idle: one retry on a fresh one.
            self._retried = True
            self._send(fresh=True)
            return
        self._lost_before_response(status, reason, message)

    def upstream_tunnel(self, data: bytes) -> None:
        if self._transport is not None:
            self._last_out = self._now()
            self._out += len(data)
            self._transport.write(data)

    def upstream_pause_writing(self) -> None:
        self._pause(_P_UPSTREAM)

    def upstream_resume_writing(self) -> None:
        self._unpause(_P_UPSTREAM)

    def _lost_before_response(self, status: int, reason: str, message: str) -> None:
        self._drop_upstream(abort=True)
        if reason == "closed" and self._upstream is not None:
            self._upstream.failure(reason)
        self._fail(status, message)

    # --- local responses and connection state ---------------------------------------------------

    def _fail(self, status: int, message: str) -> None:
        req = self._req
        close = req is None or not self._req_done or not req.keep_alive or self._close_after
        self._reply(status, message, close=close)

    def _reply(self, status: int, message: str, close: bool, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        transport = self._transport
        if transport is None or self._state >= _CL_CLOSED:
            return
        req = self._req if self._state == _CL_REQUEST else None
        head_only = req is not None and req.method == b"HEAD"
        response = local_response(status, message, close, extra, head_only)
        transport.write(response)
        if self._alog is not None:
            self._out += len(response)
            if req is None:  # a head that did not parse: nothing of an earlier exchange applies
                self._exchange_started()
            self._log(status, req)
        self._table.count(self._label if req is not None else NO_HOST_LABEL, status, self._info.protocol)
        if status >= 500:
            log.debug("proxy error", extra={"status": status, "reason": message, "host": self._label})
        if close and req is not None and not self._req_done:
            self._linger()
        elif close:
            self._close()
        else:
            self._enter_idle(self._settings.keepalive_timeout)

    # --- access log -------------------------------------------------------------------------------

    def _exchange_started(self) -> None:
        self._logged = False
        self._fwd = None
        self._ep = None
        self._t_conn = self._t_head = -1.0
        self._rid = b""
        self._status = 0

    def _log(self, status: int, req: RequestHead | None = None) -> None:
        """One access-log record for the exchange that just ended (values as they are; the writer formats)."""
        self._logged = True
        alog = self._alog
        if alog is None:
            return
        in0, out0 = self._in0, self._out0
        in_now = self._in - len(self._buf)  # bytes still buffered belong to the next exchange
        self._in0, self._out0 = in_now, self._out
        req = req if req is not None else self._req
        fwd = self._fwd if req is not None else None
        source = fwd.log if fwd is not None else ("", "")
        if source is None:  # the route's Ingress says portcullis.io/access-log: "false"
            return
        info = self._info
        tls = self._tls
        if tls is None:
            ssl_object = self._transport.get_extra_info("ssl_object") if self._transport is not None else None
            tls = self._tls = ((ssl_object.version(), (ssl_object.cipher() or ("",))[0], ssl_object.session_reused)
                               if ssl_object is not None else (None, None, None))
        cert = info.client_cert
        upstream = self._upstream
        started = self._started if req is not None else self._now()
        alog.add((
            time.time(), info.client_addr[0], info.client_addr[1], info.sni, tls[0], tls[1], tls[2],
            req.host if req is not None else None, req.method if req is not None else None,
            req.path if req is not None else None, req.version if req is not None else None, status,
            in_now - in0, self._out - out0, self._now() - started, self._ep if req is not None else None,
            self._t_conn - started if self._t_conn >= 0 else -1.0,
            self._t_head - started if self._t_head >= 0 else -1.0,
            "http" if not self._https else (
                "reencrypt" if upstream is not None and upstream.spec.tls is not None else "offload"),
            self._rid if req is not None else b"", source[0], source[1],
            cert.subject_dn if cert is not None and cert.verified else None, info.protocol,
        ))

    def _enter_idle(self, timeout: float) -> None:
        self._state = _CL_IDLE
        self._req = None
        self._upstream = None
        self._label = NO_HOST_LABEL
        self._deadline = self._now() + timeout
        self._arm(self._deadline)

    # --- the connection's one timer: each wake-up checks the deadlines of the current state ---------

    def _arm(self, deadline: float) -> None:
        """Make sure the timer fires by ``deadline`` (an earlier one re-checks and re-arms itself)."""
        if fires_by(self._timer, deadline):
            return
        if self._loop is not None and self._state != _CL_CLOSED:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        loop = self._loop
        state = self._state
        if loop is None or state == _CL_CLOSED:
            return
        now = loop.time()
        settings = self._settings
        next_at = float("inf")
        if self._client_write_paused and self._transport is not None:
            size = self._transport.get_write_buffer_size()
            if size < self._stall_size:  # the client took some bytes since the last look
                self._stall_size, self._stall_since = size, now
            at = self._stall_since + settings.client_send_timeout
            if at <= now:
                self._timed_out("client_send")
                return
            next_at = at
        if state == _CL_LINGER:
            if self._deadline <= now:
                self._close()
                return
            next_at = min(next_at, self._deadline)
        elif state == _CL_IDLE:
            if self._deadline <= now:
                if self._buf:
                    self._count_timeout("client_header")
                self._close()
                return
            next_at = min(next_at, self._deadline)
        elif state == _CL_TUNNEL:
            at = max(self._last_in, self._last_out) + self._tunnel_idle
            if at <= now:
                self._timed_out("upgrade_idle")
                return
            next_at = min(next_at, at)
        elif not self._req_done and not self._paused:  # paused: we stopped reading, not the client's fault
            at = self._last_in + settings.client_body_timeout
            if at <= now:
                self._timed_out("client_body")
                return
            next_at = min(next_at, at)
        if next_at != float("inf"):
            self._timer = loop.call_at(next_at, self._on_timer)

    def _count_timeout(self, reason: str) -> None:
        self._table.metrics.http_timeouts.labels(reason).inc()

    def _timed_out(self, reason: str) -> None:
        self._count_timeout(reason)
        log.debug("client timeout", extra={"reason": reason, "host": self._label})
        if reason == "client_body" and not self._resp_started:
            self._drop_upstream(abort=True)  # the backend holds a partial request
            self._reply(408, "request body timed out", close=True)
            return
        self._drop_upstream(abort=True)
        if reason == "client_send" and self._transport is not None:
            self._state = _CL_CLOSED
            self._cancel_timer()
            self._transport.abort()  # its write buffer will never drain: do not wait for it
            return
        self._close()

    def _drop_upstream(self, abort: bool = False) -> None:
        """Close (or reset) the upstream connection mid-exchange: never pooled, its state is unknown."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            if self._upstream is not None:
                self._upstream.balancer.finished(conn.endpoint)
            if abort:
                conn.abort()
            else:
                conn.close()

    def _linger(self) -> None:
        """Close after an error response while the client may still be sending the refused body:
        half-close (plain TCP), read and drop its bytes until it closes or ``LINGER_SECONDS`` pass."""
        self._drop_upstream(abort=True)
        self._state = _CL_LINGER
        self._buf.clear()
        transport = self._transport
        assert transport is not None
        if transport.can_write_eof():
            transport.write_eof()
        if self._paused:
            self._paused = 0
            transport.resume_reading()
        self._deadline = self._now() + LINGER_SECONDS
        self._arm(self._deadline)

    def _close(self) -> None:
        self._state = _CL_CLOSED
        self._cancel_timer()
        self._drop_upstream()
        if self._transport is not None:
            self._transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pause(self, flag: int) -> None:
        if not self._paused and self._transport is not None:
            self._transport.pause_reading()
        self._paused |= flag

    def _unpause(self, flag: int) -> None:
        if not self._paused:
            return
        self._paused &= ~flag
        if not self._paused and self._transport is not None and self._state != _CL_CLOSED:
            self._transport.resume_reading()
            if self._state == _CL_REQUEST and not self._req_done:  # the body clock restarts with reading
                self._last_in = now = self._now()
                self._arm(now + self._settings.client_body_timeout)

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0
