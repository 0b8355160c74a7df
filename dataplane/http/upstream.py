"""Connections to backends: connect (plain TCP for offload, verified TLS for reencrypt), keep idle
connections per endpoint, and parse responses into events for the client side.

Reencrypt must reuse connections: the handshake is the expensive part of TLS, so a pool keeps a
bounded LIFO stack of idle connections per endpoint (most recently used first: least likely to have
been closed by the backend) and sweeps the expired ones. Each ``SSLContext`` is shared by every
pool with the same (CA, verify, client certificate, minimum version).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from dataplane import openssl, pem
from dataplane.balancer import UpstreamPool
from dataplane.http.framing import BodyReader, ChunkedReader, HeadReader, LengthReader, ParseError, UntilCloseReader
from dataplane.http.parser import ResponseHead, parse_response_head
from dataplane.metrics import Metrics
from dataplane.snapshot import CABundle, Certificate, Endpoint, Pool, UpstreamTLS

if TYPE_CHECKING:
    from dataplane.http.settings import HTTPSettings

log = logging.getLogger(__name__)

# UpstreamConnection states (the client side has its own, ``connection._CL_*``): which body framing
# applies is the body reader's business, not a state of its own.
_UP_IDLE, _UP_HEAD, _UP_BODY, _UP_DONE, _UP_TUNNEL, _UP_CLOSED = range(6)


def fires_by(timer: asyncio.TimerHandle | None, deadline: float) -> bool:
    """True if ``timer`` already fires by ``deadline`` (keep it); otherwise cancels it, if any, for a new one.

    A connection's one timer (client side and upstream side) re-checks and re-arms itself, so an earlier
    timer is enough."""
    if timer is None:
        return False
    if timer.when() <= deadline:
        return True
    timer.cancel()
    return False


class ConnectError(Exception):
    """A connect that failed before anything was sent: safe to try another endpoint."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class ResponseSink(Protocol):
    """What an upstream connection reports to the client side that owns it for one exchange."""

    def upstream_head(self, resp: ResponseHead) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_done(self) -> None: ...
    def upstream_trailers(self, fields: list[tuple[bytes, bytes]]) -> None: ...  # (lower-case name, value); before done
    def upstream_lost(self, status: int, reason: str, message: str) -> None: ...
    def upstream_tunnel(self, data: bytes) -> None: ...
    def upstream_flush(self) -> None: ...  # end of one read: write anything held back
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


# --- TLS contexts ------------------------------------------------------------------------------


def client_context(tls: UpstreamTLS, ca: CABundle | None, client_cert: Certificate | None,
                   protocol: str = "http1") -> ssl.SSLContext:
    """A client context that verifies the backend by ``tls.server_name`` (SNI and check use the same name);
    ALPN offers the pool's one protocol (``h2`` pools require the backend to select it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if tls.max_version == "1.2" else ssl.TLSVersion.TLSv1_3
    if tls.ciphers:
        ctx.set_ciphers(tls.ciphers)  # TLS 1.2 suites only; raises ssl.SSLError when none is selected
    if tls.verify_depth and not openssl.set_verify_depth(ctx, tls.verify_depth):
        log.warning("backend verify depth not set; OpenSSL's default (100) applies",
                    extra={"verify_depth": tls.verify_depth})
    if tls.verify:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if ca is not None:
            pem.load_trust(ctx, ca.pem, ca.crl_pem)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        pem.load_key_pair(ctx, client_cert.cert_pem, client_cert.key_pem)
    ctx.set_alpn_protocols(["h2"] if protocol == "h2" else ["http/1.1"])
    return ctx


_ContextKey = tuple[str | None, bool, str | None, str, str, str, int, str]


class TLSContextCache:
    """Contexts by (CA id, verify, client certificate id, versions, ciphers, verify depth, protocol); ids are
    content hashes, so equal keys mean equal material and a context can be reused across snapshots."""

    def __init__(self, previous: TLSContextCache | None = None) -> None:
        self._old = previous._contexts if previous is not None else {}
        self._contexts: dict[_ContextKey, ssl.SSLContext] = {}

    def get(
        self, tls: UpstreamTLS, cas: Mapping[str, CABundle], certs: Mapping[str, Certificate],
        protocol: str = "http1",
    ) -> ssl.SSLContext:
        key = (tls.ca_id, tls.verify, tls.client_cert_id, tls.min_version, tls.max_version, tls.ciphers,
               tls.verify_depth, protocol)
        ctx = self._contexts.get(key) or self._old.get(key)
        if ctx is None:
            ca = cas.get(tls.ca_id) if tls.ca_id is not None else None
            if tls.ca_id is not None and ca is None:
                raise ValueError(f"CA bundle {tls.ca_id} is not in the snapshot")
            cert = certs.get(tls.client_cert_id) if tls.client_cert_id is not None else None
            if tls.client_cert_id is not None and cert is None:
                raise ValueError(f"client certificate {tls.client_cert_id} is not in the snapshot")
            ctx = client_context(tls, ca, cert, protocol)
        self._contexts[key] = ctx
        return ctx


# --- one pool --------------------------------------------------------------------------------


_P = TypeVar("_P", bound=asyncio.BaseProtocol)


class UpstreamBase:
    """What every pool of backend connections shares, whatever it speaks: how to reach the endpoints
    (and open one connection, with the same errors for HTTP/1.1 and HTTP/2), and the failure counter."""

    def __init__(self, spec: Pool, balancer: UpstreamPool, ssl_context: ssl.SSLContext | None, tls_error: str,
                 settings: HTTPSettings, metrics: Metrics) -> None:
        self.spec = spec
        self.balancer = balancer
        self.ssl_context = ssl_context
        self.tls_error = tls_error
        self.server_name = spec.tls.server_name if spec.tls is not None else None
        self.metrics = metrics
        self.idle_timeout = settings.upstream_idle_timeout
        self.max_response_head = settings.max_response_head
        self.connects = 0  # connections opened (tests and debugging)

    def failure(self, reason: str) -> None:
        self.metrics.upstream_failures.labels(self.spec.id, reason).inc()

    async def dial(self, ep: Endpoint, factory: Callable[[], _P],
                   check: Callable[[_P], ConnectError | None] | None = None) -> _P:
        """One fresh connection to ``ep`` (TLS handshake done and verified, then ``check``ed): its protocol,
        or ``ConnectError``, counted against the endpoint's health and the pool's failures."""
        if self.spec.tls is not None and self.ssl_context is None:
            self.failure("tls_config")
            raise ConnectError(502, "tls_config", self.tls_error or "upstream TLS is not configured")
        loop = asyncio.get_running_loop()
        timeout = self.spec.connect_timeout
        err: ConnectError | None
        try:
            async with asyncio.timeout(timeout):
                if self.ssl_context is not None:
                    _, conn = await loop.create_connection(
                        factory, ep.address, ep.port,
                        ssl=self.ssl_context, server_hostname=self.server_name, ssl_handshake_timeout=timeout,
                    )
                else:
                    _, conn = await loop.create_connection(factory, ep.address, ep.port)
        except TimeoutError:
            err = ConnectError(504, "connect_timeout", "upstream connect timed out")
        except ssl.SSLCertVerificationError as exc:
            err = ConnectError(502, "tls_verify", f"upstream certificate verification failed: {exc.verify_message}")
        except ssl.SSLError as exc:
            err = ConnectError(502, "tls_error", f"upstream TLS handshake failed: {exc.reason or exc}")
        except ConnectionRefusedError:
            err = ConnectError(502, "connect_refused", "upstream refused the connection")
        except (OSError, EOFError) as exc:
            err = ConnectError(502, "connect_error", f"upstream connect failed: {exc.__class__.__name__}")
        else:
            err = check(conn) if check is not None else None
            if err is None:
                self.connects += 1
                self.balancer.succeeded(ep)
                return conn
        self.balancer.failed(ep)
        self.failure(err.reason)
        log.debug("upstream connect failed", extra={"pool": self.spec.id, "endpoint": f"{ep.address}:{ep.port}",
                                                    "reason": err.reason})
        raise err


class Upstream(UpstreamBase):
    """How to reach one pool's endpoints over HTTP/1.1, and its idle connections."""

    def __init__(
        self,
        spec: Pool,
        balancer: UpstreamPool,
        ssl_context: ssl.SSLContext | None,
        tls_error: str,
        settings: HTTPSettings,
        metrics: Metrics,
        previous: Upstream | None = None,
    ) -> None:
        super().__init__(spec, balancer, ssl_context, tls_error, settings, metrics)
        self.max_idle = settings.max_idle_per_endpoint
        self._idle: dict[Endpoint, list[UpstreamConnection]] = {}
        # Most exchanges in flight to an endpoint at once since the last sweep: idle connections are kept up
        # to this many (or max_idle), so a steady load above max_idle reuses its connections instead of
        # closing the surplus after each burst of responses and reconnecting for the next.
        self._peak: dict[Endpoint, int] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._failure_children: dict[str, object] = {}
        if previous is not None:
            for ep, conns in previous._idle.items():
                if ep in balancer.endpoints:
                    for conn in conns:
                        conn.upstream = self
                    self._idle[ep] = conns
            previous._idle = {}

    def take_idle(self, ep: Endpoint) -> UpstreamConnection | None:
        conns = self._idle.get(ep)
        while conns:
            conn = conns.pop()
            if conn.state == _UP_IDLE and conn.loop.time() - conn.idle_since < self.idle_timeout:
                return conn
            conn.close()
        return None

    def put_idle(self, conn: UpstreamConnection) -> None:
        """Keep ``conn`` for the next request: at most max(``max_idle``, the recent peak of exchanges in flight
        to the endpoint) idle ones, the oldest closed first. The peak never asks for more connections than
        were open at once anyway, and connections it keeps that go unused are swept after ``idle_timeout``."""
        ep = conn.endpoint
        conns = self._idle.setdefault(ep, [])
        in_use = self.balancer.active(ep) + 1  # this connection's exchange has just finished
        peak = self._peak.get(ep, 0)
        if in_use > peak:
            self._peak[ep] = peak = in_use
        if len(conns) >= self.max_idle and len(conns) >= peak:
            conns.pop(0).close()
        conn.idle_since = conn.loop.time()
        conns.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self.idle_timeout, self._sweep, conn.loop)

    def forget(self, conn: UpstreamConnection) -> None:
        conns = self._idle.get(conn.endpoint)
        if conns and conn in conns:
            conns.remove(conn)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        self._peak.clear()  # the demand is measured afresh from the next releases
        now = loop.time()
        remaining = 0
        for conns in self._idle.values():
            for conn in [c for c in conns if now - c.idle_since >= self.idle_timeout]:
                conns.remove(conn)
                conn.close()
            remaining += len(conns)
        if remaining:
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep, loop)

    def close_idle(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle = {}

    async def connect(self, ep: Endpoint) -> UpstreamConnection:
        """A fresh connection (TLS handshake done and verified); ``ConnectError`` when it fails."""
        loop = asyncio.get_running_loop()
        return await self.dial(ep, lambda: UpstreamConnection(self, ep, loop))


# --- one connection ----------------------------------------------------------------------------


class UpstreamConnection(asyncio.Protocol):
    """One backend connection: idle in its pool, or serving exactly one exchange for a sink."""

    def __init__(self, upstream: Upstream, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.upstream = upstream
        self.endpoint = endpoint
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.state = _UP_IDLE
        self.idle_since = 0.0
        self.got_bytes = False  # any response byte for the current exchange
        self._buf = bytearray()
        self._heads = HeadReader.for_responses(upstream.max_response_head)
        self._body: BodyReader | None = None
        self._head_request = False
        self._reusable = True
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._read_paused = False
        self._write_paused = False  # the backend is not taking our request bytes fast enough
        self._stall_since = 0.0  # write buffer last seen shrinking while paused
        self._stall_size = 0

    # --- asyncio callbacks ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        state = self.state
        if state == _UP_TUNNEL and sink is not None:
            sink.upstream_tunnel(data)
            return
        if sink is None or state in (_UP_IDLE, _UP_DONE, _UP_CLOSED):
            self.close()  # unsolicited bytes: the connection is out of step
            return
        self._last_read = self.loop.time()
        self.got_bytes = True
        try:
            self._receive(data, sink)
        except ParseError as exc:
            self._fail(502, "bad_response", f"bad response from upstream: {exc.reason}")
            return
        if self.sink is not None:
            sink.upstream_flush()

    def _receive(self, data: bytes, sink: ResponseSink) -> None:
        while data:
            state = self.state
            if state == _UP_BODY:
                body = self._body
                assert body is not None
                pieces, used = body.feed(data)
                for piece in pieces:
                    sink.upstream_body(piece)
                if body.done:
                    if used < len(data):
                        self._reusable = False  # bytes beyond the framed body: do not trust this connection
                    if type(body) is ChunkedReader and body.trailers:  # trailers end the body, before done
                        sink.upstream_trailers(body.trailers)
                        if self.sink is None:
                            return
                    self._finish()
                return
            if state != _UP_HEAD:
                return
            buf = self._buf
            end = data.find(b"\r\n\r\n") if not buf else -1
            if end >= 0:
                # The whole head in this read (the common case): no buffer copies. ``HeadReader.read``
                # takes a complete head the same way; its limits apply to a head still growing.
                head = data[:end]
                data = data[end + 4:]
            else:
                buf += data
                whole = self._heads.read(buf)
                if whole is None:
                    return
                head = whole
                data = bytes(buf)
                buf.clear()
            resp = parse_response_head(head)
            status = resp.status
            if status < 200 and status != 101:
                sink.upstream_head(resp)  # interim (100 Continue, 103): the final response follows
                continue
            if status == 101:
                self.state = _UP_TUNNEL
                self._cancel_timer()
                sink.upstream_head(resp)
                if data and self.sink is not None:
                    sink.upstream_tunnel(data)
                return
            if resp.close:
                self._reusable = False
            self.state = _UP_BODY
            if self._head_request or status in (204, 304):
                self.state = _UP_DONE
            elif resp.chunked:
                self._body = ChunkedReader(502, keep_trailers=True)  # forwarded (gRPC-Web, Server-Timing...)
            elif resp.content_length > 0:
                if len(data) == resp.content_length:
                    # The whole body came in the read with the head (small responses): no body reader.
                    sink.upstream_head(resp)
                    if self.sink is not None:
                        sink.upstream_body(data)
                        self._finish()
                    return
                self._body = LengthReader(resp.content_length)
            elif resp.content_length == 0:
                self.state = _UP_DONE
            else:
                self._body = UntilCloseReader()
                self._reusable = False
            sink.upstream_head(resp)
            if self.sink is None:
                return
            if self.state == _UP_DONE:
                if data:
                    self._reusable = False
                self._finish()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        self.state = _UP_CLOSED
        self._cancel_timer()
        sink = self.sink
        if sink is None:
            self.upstream.forget(self)
            return
        body = self._body
        if state == _UP_BODY and body is not None and body.ENDS_AT_EOF:  # the close is the end of the body
            self._reusable = False
            self.sink = None
            sink.upstream_done()
        elif state in (_UP_HEAD, _UP_BODY, _UP_TUNNEL):
            self.sink = None
            sink.upstream_lost(502, "closed", "upstream closed the connection before the response was complete")

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.transport is not None:
            self._stall_since = now = self.loop.time()
            self._stall_size = self.transport.get_write_buffer_size()
            self._arm(now + self.upstream.spec.send_timeout)
        if self.sink is not None:
            self.sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.sink is not None:
            self.sink.upstream_resume_writing()

    # --- used by the client side ---

    def start(self, sink: ResponseSink, head: bytes, head_request: bool) -> None:
        """Begin one exchange: send the request head; the body follows through ``write``."""
        self.sink = sink
        self.state = _UP_HEAD
        self._head_request = head_request
        self._reusable = True
        self.got_bytes = False
        self._body = None
        self._last_read = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_later(self.upstream.spec.read_timeout, self._on_timer)
        assert self.transport is not None
        self.transport.write(head)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self._last_read = self.loop.time()  # a slow upload is activity too, not a backend stall
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    def release(self, request_complete: bool) -> None:
        """The exchange is over: back to the idle pool when the connection is in a clean state."""
        self.sink = None
        self.resume_reading()
        if self.state == _UP_DONE and self._reusable and request_complete and self.transport is not None \
                and not self.transport.is_closing():
            self.state = _UP_IDLE
            self.upstream.put_idle(self)
        else:
            self.close()

    def close(self) -> None:
        self.sink = None
        self._cancel_timer()
        if self.state != _UP_CLOSED:
            self.state = _UP_CLOSED
            self.upstream.forget(self)
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        transport = self.transport
        self.close()
        if transport is not None:
            transport.abort()

    # --- internals ---

    def _finish(self) -> None:
        # The read timer stays armed (it does nothing while no exchange runs, and ``start`` of the next
        # exchange finds it set): creating and cancelling a timer per exchange is a measurable cost.
        self.state = _UP_DONE
        sink = self.sink
        if sink is not None:
            sink.upstream_done()

    def _fail(self, status: int, reason: str, message: str) -> None:
        sink = self.sink
        self.upstream.failure(reason)
        self.abort()
        if sink is not None:
            sink.upstream_lost(status, reason, message)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, deadline: float) -> None:
        """One timer per connection: make sure it fires by ``deadline``."""
        if fires_by(self._timer, deadline):
            return
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        state = self.state
        if self.sink is None or state not in (_UP_HEAD, _UP_BODY, _UP_TUNNEL):
            return
        now = self.loop.time()
        next_at = float("inf")
        if self._write_paused and self.transport is not None:
            size = self.transport.get_write_buffer_size()
            if size < self._stall_size:  # the backend took some bytes since the last look
                self._stall_size, self._stall_since = size, now
            at = self._stall_since + self.upstream.spec.send_timeout
            if at <= now:
                self.upstream.metrics.http_timeouts.labels("upstream_send").inc()
                self._fail(504, "send_timeout", "upstream did not accept the request in time")
                return
            next_at = at
        if state != _UP_TUNNEL:  # an upgraded connection's silence is the client side's upgrade idle timeout
            timeout = self.upstream.spec.read_timeout
            elapsed = now - self._last_read
            if self._read_paused or elapsed < timeout:
                # Reading is on hold for a slow client, or data arrived since: not the backend's fault.
                next_at = min(next_at, now + (timeout - elapsed if elapsed < timeout else timeout))
            else:
                self.upstream.metrics.http_timeouts.labels("upstream_read").inc()
                self._fail(504, "read_timeout", "upstream read timed out")
                return
        if next_at != float("inf"):
            self._timer = self.loop.call_at(next_at, self._on_timer)
