"""The listeners: one HTTPS port for all three TLS modes, and the plain HTTP port.

HTTPS accept path: take the raw socket, ``MSG_PEEK`` until the whole ClientHello is in hand (the
bytes stay in the kernel), ask the pure parser what it says, look the SNI up in the current
``TLSTable``, then either hand the socket to the passthrough relay or let asyncio terminate TLS
on it with the chosen context and give the decrypted stream to the application protocol (the
HTTP engine). Peeking keeps both paths zero-copy with respect to the ClientHello: nothing has to
be replayed.

While waiting for more of a ClientHello the socket's ``SO_RCVLOWAT`` is set to the byte count the
parser needs, so the loop is woken once per useful step rather than once per TCP segment; where
that does not hold (a peek shows no progress) the collector backs off briefly instead of spinning
on a level-triggered readable socket. Every wait is bounded by the size cap and the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dataplane import clienthello, passthrough
from dataplane.access_log import AccessLog, ingress_of
from dataplane.balancer import UpstreamPool
from dataplane.http.info import ConnectionInfo, client_cert_from_ssl
from dataplane.limits import ConnectionCounter, Handle, TokenBucket, Whitelist
from dataplane.metrics import Metrics
from dataplane.snapshot import Endpoint, TLSHost
from dataplane.tls import TLSTable

log = logging.getLogger(__name__)

ACCEPT_BATCH = 64
BACKOFF_START = 0.002
BACKOFF_MAX = 0.05
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 47\r\nConnection: close\r\n\r\n"
    b"This port speaks HTTPS; plain HTTP was refused.\n"
)
HTTP_METHOD_PREFIXES = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC")


AppFactory = Callable[[ConnectionInfo], asyncio.Protocol]  # the HTTP engine, or a test's protocol


@dataclass(frozen=True)
class EdgeState:
    """Everything one accepted connection routes with; swapped whole on apply, never edited."""

    tls: TLSTable
    app: AppFactory
    pools: Mapping[str, UpstreamPool]  # the HTTP table's balancers, by pool id: passthrough shares them
    conn_limits: Mapping[str, HostConnLimit] = field(default_factory=dict)  # by SNI host: limit-connections


@dataclass(frozen=True)
class HostConnLimit:
    """An Ingress's ``limit-connections`` on one of its TLS hosts (the counter is the Ingress's, kept across
    applies)."""

    limit: int
    counter: ConnectionCounter
    whitelist: Whitelist


@dataclass(frozen=True)
class EdgeSettings:
    clienthello_max_bytes: int = 65536
    clienthello_timeout: float = 10.0
    handshake_timeout: float = 10.0
    zero_copy: bool = True  # splice(2) relay for passthrough where the platform has it
    tunnel_idle_timeout: float = 3600.0  # passthrough tunnels silent this long (up to twice it) are closed
    max_pending: int = 10000  # connections still sending their ClientHello; beyond, new ones are closed
    max_connections: int = 0  # client connections open at once, both listeners (0: no cap); beyond, closed at accept
    max_connections_per_ip: int = 0  # the same per client IP (0: no cap)
    max_handshakes_per_second: float = 0.0  # full TLS handshakes begun a second per HTTPS listener (0: no cap)


class Closable(Protocol):
    def is_closing(self) -> bool: ...
    def close(self) -> None: ...


class Tracker:
    """Live connections, so a stop can drain them (bounded) and then close the rest.

    Holds transports strongly (uvloop's TLS transports cannot be weakly referenced) and prunes
    the ones that report ``is_closing()``; both loops mark a TLS app transport closed when its
    connection is lost, so the application protocol needs no hook of ours.
    """

    def __init__(self) -> None:
        self.transports: set[Closable] = set()
        self.pending: set[Closable] = set()  # accepted, still sending the ClientHello
        self._prune_at = 256

    def add(self, transport: Closable) -> None:
        self.transports.add(transport)
        if len(self.transports) >= self._prune_at:
            self.prune()
            self._prune_at = max(256, 2 * len(self.transports))

    def prune(self) -> None:
        self.transports = {t for t in self.transports if not t.is_closing()}

    @property
    def live(self) -> int:
        self.prune()
        return len(self.transports) + len(self.pending)

    def close_pending(self) -> None:
        for collector in list(self.pending):
            collector.close()  # unregisters its reader and timers before the fd number can be reused
        self.pending.clear()

    def abort_all(self) -> None:
        self.close_pending()
        transports, self.transports = self.transports, set()
        for transport in transports:
            if transport.is_closing():
                continue
            abort = getattr(transport, "abort", None)  # duck-typed: uvloop's transports do not subclass asyncio's
            if callable(abort):
                abort()
            else:
                transport.close()


class Lease:
    """One admitted connection as the per-IP counters see it: whatever stands for it now (the ClientHello
    collector, nothing while a handshake or upstream connect is in flight, then the transport)."""

    __slots__ = ("closed", "target")

    def __init__(self) -> None:
        self.target: Closable | None = None
        self.closed = False

    def is_closing(self) -> bool:
        if self.closed:
            return True
        target = self.target
        return target is not None and target.is_closing()


class Admission:
    """The global and per-client-IP connection caps, shared by both listeners of a data plane.

    The global count is the tracker's (transports, ClientHello collectors) plus connections between their
    ClientHello and a transport; closed transports leave the tracker lazily, so at the cap it is pruned
    (at most every ``PRUNE_EVERY`` seconds: the cost stays bounded while a flood sits at the cap).
    """

    PRUNE_EVERY = 0.02

    def __init__(self, settings: EdgeSettings, tracker: Tracker, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.tracker = tracker
        self.metrics = metrics
        self.clock = clock
        self.in_flight = 0
        self.per_ip = ConnectionCounter()
        self._pruned_at = -1.0

    def _open(self) -> int:
        tracker = self.tracker
        return len(tracker.transports) + len(tracker.pending) + self.in_flight

    def refuse(self, ip: str, handle: Handle) -> str | None:
        """None: admitted (and counted for its IP); else the reason it must be closed now."""
        settings = self.settings
        cap = settings.max_connections
        if cap and self._open() >= cap:
            now = self.clock()
            if now - self._pruned_at >= self.PRUNE_EVERY:
                self._pruned_at = now
                self.tracker.prune()
            if self._open() >= cap:
                return self._refused("max_connections")
        per_ip = settings.max_connections_per_ip
        if per_ip and not self.per_ip.admit(ip, handle, per_ip):
            return self._refused("per_ip")
        return None

    def _refused(self, reason: str) -> str:
        self.metrics.connections_refused.labels(reason).inc()
        return reason


class _Handoff(asyncio.Protocol):
    """Builds the application protocol once the transport (and its TLS session) exists, then steps aside.

    The HTTP engine's protocol takes a complete ConnectionInfo in its constructor, and the client
    certificate is only known after the handshake; asyncio calls ``connection_made`` after it, so
    this shim builds the real protocol there and swaps it in with ``set_protocol``: no per-byte
    forwarding.
    """

    def __init__(self, make: Callable[[asyncio.BaseTransport], ConnectionInfo], app: AppFactory,
                 tracker: Tracker, listener: str, mode: str, metrics: Metrics,
                 admission: Admission | None = None) -> None:
        self.admission = admission  # plain HTTP: the caps are checked here, on the new transport
        self.make = make
        self.app = app
        self.tracker = tracker
        self.listener = listener
        self.mode = mode
        self.metrics = metrics

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.admission is not None:
            ip = _addr(transport.get_extra_info("peername"))[0]
            if self.admission.refuse(ip, transport) is not None:
                transport.abort()  # type: ignore[attr-defined]
                return
        self.tracker.add(transport)
        self.metrics.child(self.metrics.connections, self.listener, self.mode).inc()
        inner = self.app(self.make(transport))
        transport.set_protocol(inner)
        inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - replaced before any data
        raise RuntimeError("handoff protocol received data")

    def connection_lost(self, exc: Exception | None) -> None:  # pragma: no cover
        pass


def _listening_socket(bind: str, port: int, reuse_port: bool = False) -> socket.socket:
    infos = socket.getaddrinfo(bind or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _addr(raw: object) -> tuple[str, int]:
    if isinstance(raw, tuple) and len(raw) >= 2:
        return str(raw[0]), int(raw[1])
    return ("", 0)


class HTTPSListener:
    access_log: AccessLog | None = None  # set by the runtime: one line per passthrough connection

    def __init__(self, get_state: Callable[[], EdgeState], metrics: Metrics, settings: EdgeSettings,
                 tracker: Tracker, admission: Admission | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.get_state = get_state
        self.metrics = metrics
        self.settings = settings
        self.tracker = tracker
        self.admission = admission if admission is not None else Admission(settings, tracker, metrics, clock)
        self.clock = clock
        rate = settings.max_handshakes_per_second
        self.handshakes = TokenBucket(rate, max(1.0, rate), clock()) if rate > 0 else None
        self.sock: socket.socket | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, bind: str, port: int, reuse_port: bool = False) -> int:
        self._loop = asyncio.get_running_loop()
        self.sock = _listening_socket(bind, port, reuse_port)
        self.port = self.sock.getsockname()[1]
        self._loop.add_reader(self.sock.fileno(), self._on_acceptable)
        return self.port

    def stop_accepting(self) -> None:
        if self.sock is not None and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    async def wait_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_acceptable(self) -> None:
        assert self.sock is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed: out of resources", extra={"error": str(exc)})
                    return
                continue
            if len(self.tracker.pending) >= self.settings.max_pending:  # a slowloris flood must not take every fd
                self.metrics.client_hello.labels("overload").inc()
                conn.close()
                continue
            client = _addr(addr)
            lease = Lease()
            if self.admission.refuse(client[0], lease) is not None:  # before any TLS work: not one byte read
                conn.close()
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            lease.target = _HelloCollector(self, conn, client, lease)

    def spawn(self, coro: object) -> None:
        assert self._loop is not None
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- after the ClientHello ----------------------------------------------------------------

    def dispatch(self, sock: socket.socket, client_addr: tuple[str, int], hello: clienthello.Complete,
                 lease: Lease | None = None) -> None:
        lease = lease if lease is not None else Lease()
        lease.target = None  # in flight until a transport stands for it
        state = self.get_state()
        row = state.tls.lookup(hello.sni)
        if row is not None and state.conn_limits:  # limit-connections: known once the SNI is
            limit = state.conn_limits.get(row.host)
            if limit is not None and not limit.counter.admit(client_addr[0], lease, limit.limit) \
                    and not limit.whitelist.exempt(client_addr[0]):
                self.metrics.connections_refused.labels("ingress_connections").inc()
                lease.closed = True
                sock.close()
                return
        if (self.handshakes is not None and (row is None or row.mode != "passthrough")
                and not self.handshakes.take(self.clock())):  # passthrough costs us no handshake
            self.metrics.connections_refused.labels("handshake_rate").inc()
            lease.closed = True
            sock.close()
            return
        server_addr = _addr(sock.getsockname())
        if row is not None and row.mode == "passthrough":
            balancer = state.pools.get(row.pool_id or "")
            if balancer is None:  # validate() makes this impossible; stay total anyway
                self.metrics.passthrough.labels("no_endpoint").inc()
                lease.closed = True
                sock.close()
                return
            self.metrics.child(self.metrics.connections, "https", "passthrough").inc()
            request = passthrough.PassthroughRequest(sock, client_addr, server_addr, hello.sni, balancer.spec,
                                                     balancer, self._passthrough_log(row, client_addr, hello.sni))
            self.spawn(self._passthrough(request, lease))
            return
        if hello.sni and row is None:
            self.metrics.passthrough.labels("unknown_sni").inc()
        self.spawn(self._terminate(sock, client_addr, server_addr[1], hello.sni, row, state, lease))

    def _passthrough_log(self, row: TLSHost, client_addr: tuple[str, int], sni: str | None,
                         ) -> Callable[[Endpoint | None, int, int, float], None] | None:
        """The access-log hook of one passthrough connection (None: log off, or the row's Ingress opted out)."""
        alog = self.access_log
        if alog is None or not alog.enabled or not row.access_log:
            return None
        loop = self._loop
        assert loop is not None
        begun = loop.time()
        namespace, name = ingress_of(row.source)

        def on_close(endpoint: Endpoint | None, sent: int, received: int, connect: float) -> None:
            alog.add((time.time(), client_addr[0], client_addr[1], sni, None, None, None, sni, None, None, None,
                      200 if endpoint is not None else 502, sent, received, loop.time() - begun, endpoint,
                      connect, -1.0, "passthrough", b"", namespace, name, None, None))
        return on_close

    async def _passthrough(self, request: passthrough.PassthroughRequest, lease: Lease) -> None:
        assert self._loop is not None

        def on_client(relay: Closable) -> None:
            self.tracker.add(relay)
            lease.target = relay

        self.admission.in_flight += 1
        try:
            await passthrough.serve(self._loop, request, self.metrics, on_client, self.settings.zero_copy,
                                    self.settings.tunnel_idle_timeout)
        finally:
            self.admission.in_flight -= 1
            if lease.target is None:  # not relayed (no endpoint, connect failed): it is closed
                lease.closed = True

    async def _terminate(self, sock: socket.socket, client_addr: tuple[str, int], server_port: int,
                         sni: str | None, row: TLSHost | None, state: EdgeState, lease: Lease) -> None:
        self.admission.in_flight += 1
        try:
            await self._handshake(sock, client_addr, server_port, sni, row, state, lease)
        finally:
            self.admission.in_flight -= 1
            if lease.target is None:  # the handshake failed: the socket is closed
                lease.closed = True

    async def _handshake(self, sock: socket.socket, client_addr: tuple[str, int], server_port: int,
                         sni: str | None, row: TLSHost | None, state: EdgeState, lease: Lease) -> None:
        assert self._loop is not None
        context = state.tls.context_for(row)

        def make(transport: asyncio.BaseTransport) -> ConnectionInfo:
            ssl_object = transport.get_extra_info("ssl_object")
            cert = None
            if row is not None and row.client_auth is not None:
                cert = client_cert_from_ssl(ssl_object)
            # The app factory serves HTTP/2 when the handshake picked it (ALPN offers h2 per row: tls.py).
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            return ConnectionInfo("https", client_addr, server_port, sni, row, cert,
                                  "h2" if alpn == "h2" else "http/1.1")

        try:
            transport, _ = await self._loop.connect_accepted_socket(
                lambda: _Handoff(make, state.app, self.tracker, "https", "terminate", self.metrics),
                sock, ssl=context, ssl_handshake_timeout=self.settings.handshake_timeout,
            )
            lease.target = transport
        except ssl.SSLError as exc:
            self._handshake_failed(exc.reason or type(exc).__name__, sni)
            sock.close()
            return
        except TimeoutError:
            self._handshake_failed("timeout", sni)
            sock.close()
            return
        except (ConnectionError, OSError) as exc:
            self._handshake_failed("connection_" + (type(exc).__name__.lower()), sni)
            sock.close()
            return
        self.metrics.handshakes.labels("ok", "").inc()

    def _handshake_failed(self, reason: str, sni: str | None) -> None:
        self.metrics.handshakes.labels("failed", reason).inc()
        log.debug("TLS handshake failed", extra={"reason": reason, "sni": sni})


class _HelloCollector:
    """Peeks at one accepted socket until its ClientHello is complete (or the bounds say stop)."""

    def __init__(self, listener: HTTPSListener, sock: socket.socket, client_addr: tuple[str, int],
                 lease: Lease | None = None) -> None:
        assert listener._loop is not None
        self.lease = lease
        self.loop = listener._loop
        self.listener = listener
        self.sock = sock
        self.fd = sock.fileno()
        self.client_addr = client_addr
        self.max_bytes = listener.settings.clienthello_max_bytes
        self.seen = 0
        self.backoff = BACKOFF_START
        self.lowat = 1
        self.retry: asyncio.TimerHandle | None = None
        self.reading = False
        listener.tracker.pending.add(self)
        self.deadline = self.loop.call_later(listener.settings.clienthello_timeout, self._timed_out)
        self._watch()

    def _watch(self) -> None:
        self.retry = None
        if self.sock.fileno() < 0:
            return
        self.loop.add_reader(self.fd, self._readable)
        self.reading = True

    def _unwatch(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None

    def _done(self) -> None:
        self._unwatch()
        self.deadline.cancel()
        self.listener.tracker.pending.discard(self)
        if self.lowat != 1:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            self.lowat = 1

    def _close(self, result: str) -> None:
        self._done()
        self.listener.metrics.client_hello.labels(result).inc()
        self.sock.close()

    def _timed_out(self) -> None:
        self._close("timeout")

    def is_closing(self) -> bool:
        return self.sock.fileno() < 0

    def close(self) -> None:
        """Stop waiting (the data plane is stopping): same clean-up as any other end."""
        if not self.is_closing():
            self._close("shutdown")

    def _readable(self) -> None:
        try:
            data = self.sock.recv(self.max_bytes, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close("reset")
            return
        if not data:
            self._close("closed")
            return
        result = clienthello.parse(data, self.max_bytes)
        if isinstance(result, clienthello.NeedMore):
            self._need_more(len(data), result.need)
        elif isinstance(result, clienthello.Complete):
            self._done()
            metrics = self.listener.metrics
            metrics.child(metrics.client_hello, "ok").inc()
            try:
                self.listener.dispatch(self.sock, self.client_addr, result, self.lease)
            except Exception:
                log.exception("dispatch failed")
                self.sock.close()
        elif isinstance(result, clienthello.NotTLS):
            self._refuse_plain(data)
        elif isinstance(result, clienthello.TooLarge):
            self._close("too_large")
        else:
            self._close("malformed")

    def _need_more(self, have: int, need: int) -> None:
        if have > self.seen:
            self.seen = have
            self.backoff = BACKOFF_START
            if need != self.lowat:
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, need)
                    self.lowat = need
                except OSError:
                    pass
            return
        # Readable but nothing new (no low-water support, or the peer half-closed): back off.
        self._unwatch()
        self.retry = self.loop.call_later(self.backoff, self._watch)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def _refuse_plain(self, data: bytes) -> None:
        """Plain HTTP on the HTTPS port gets a short 400 (as nginx does), anything else just a close."""
        if data.startswith(HTTP_METHOD_PREFIXES):
            with contextlib.suppress(OSError):
                self.sock.recv(len(data))  # consume, so the close is a FIN rather than a reset
                self.sock.send(PLAIN_HTTP_ANSWER)
                self.sock.shutdown(socket.SHUT_WR)
        self._close("not_tls")


class HTTPListener:
    """The plain HTTP port: every connection goes straight to the application protocol."""

    def __init__(self, get_state: Callable[[], EdgeState], metrics: Metrics, tracker: Tracker,
                 admission: Admission | None = None) -> None:
        self.get_state = get_state
        self.metrics = metrics
        self.tracker = tracker
        self.admission = admission  # the caps (shared with the HTTPS listener); None: none
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, bind: str, port: int, reuse_port: bool = False) -> int:
        loop = asyncio.get_running_loop()
        sock = _listening_socket(bind, port, reuse_port)
        self.port = sock.getsockname()[1]
        self.server = await loop.create_server(self._protocol, sock=sock, backlog=1024)
        return self.port

    def _protocol(self) -> asyncio.Protocol:
        state = self.get_state()

        def make(transport: asyncio.BaseTransport) -> ConnectionInfo:
            return ConnectionInfo("http", _addr(transport.get_extra_info("peername")), self.port, None, None, None)

        return _Handoff(make, state.app, self.tracker, "http", "plain", self.metrics, self.admission)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()
