"""TLS passthrough: connect to a backend, optionally say PROXY, then relay bytes both ways untouched.

The ClientHello is still in the kernel's receive buffer when this starts (the edge only peeked),
so the backend receives exactly the bytes the client sent. The relay is a pair of asyncio
Protocols, one per side, with the flow control uvicorn uses: when one side's write buffer passes
its high-water mark, the *other* side stops reading until it drains, so a slow reader never makes
memory grow. Half-close is kept: EOF from one side becomes ``write_eof`` on the other, and the
pair closes when both directions are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol, cast

from dataplane import proxy_protocol, splice
from dataplane.idle import IdleWatch
from dataplane.metrics import Metrics
from dataplane.snapshot import Endpoint, Pool

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
BYTES_FLUSH = 1 << 20  # report relayed bytes to metrics at least every MiB per side


class EndpointPicker(Protocol):
    """What passthrough needs from ``dataplane.balancer.UpstreamPool`` (contracts.md section 2)."""

    def pick(self, client_ip: str, exclude: Collection[Endpoint] = ()) -> Endpoint | None: ...
    def started(self, ep: Endpoint) -> None: ...
    def finished(self, ep: Endpoint) -> None: ...
    def failed(self, ep: Endpoint) -> None: ...
    def succeeded(self, ep: Endpoint) -> None: ...


@dataclass(frozen=True)
class PassthroughRequest:
    sock: socket.socket
    client_addr: tuple[str, int]
    server_addr: tuple[str, int]
    sni: str | None
    pool: Pool
    picker: EndpointPicker
    # called once when the connection ends: (endpoint or None when none answered, bytes from the client,
    # bytes to the client, seconds to connect to the backend or -1); the access log's hook
    on_close: Callable[[Endpoint | None, int, int, float], None] | None = None


class _Side(asyncio.Protocol):
    """One end of the relay; ``peer`` is the other end."""

    def __init__(self, relay: Relay, name: str) -> None:
        self.relay = relay
        self.name = name  # "client" or "upstream"
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False
        self.closed = False
        self.pending_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        transport = self.transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        if self.name == "upstream":
            transport.pause_reading()  # until the client side exists to write to

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None or peer.closed:
            return
        if self.relay.watch is not None:
            self.relay.watch.active = True
        peer.transport.write(data)
        self.pending_bytes += len(data)
        if self.pending_bytes >= BYTES_FLUSH:
            self.flush_bytes()

    def flush_bytes(self) -> None:
        if self.pending_bytes:
            self.relay.count_bytes("in" if self.name == "client" else "out", self.pending_bytes)
            self.pending_bytes = 0

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if peer.eof or not peer.transport.can_write_eof():
                self.relay.close()
                return False
            peer.transport.write_eof()
        return True  # keep our write side open: the peer may still answer

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            with contextlib.suppress(RuntimeError, AttributeError):
                self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            with contextlib.suppress(RuntimeError, AttributeError):
                self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.flush_bytes()
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if exc is None:
                peer.transport.close()  # flushes what is buffered first
            else:
                peer.transport.abort()
        self.relay.side_lost()


class Relay:
    """Both sides of one passthrough connection and its accounting."""

    def __init__(self, metrics: Metrics, picker: EndpointPicker, endpoint: Endpoint,
                 on_done: Callable[[], None] | None = None) -> None:
        self.metrics = metrics
        self.picker = picker
        self.endpoint = endpoint
        self.client = _Side(self, "client")
        self.upstream = _Side(self, "upstream")
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self._lost = 0
        self._on_done = on_done
        self.moved = {"in": 0, "out": 0}  # whole-connection totals (for the access log)
        self.watch: IdleWatch | None = None

    def count_bytes(self, direction: str, n: int) -> None:
        self.moved[direction] += n
        self.metrics.bytes.labels(direction, "passthrough").inc(n)

    def close(self) -> None:
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.closed:
                side.transport.close()

    def start(self, idle_timeout: float = 0.0) -> None:
        if idle_timeout > 0:
            self.watch = IdleWatch(asyncio.get_running_loop(), idle_timeout, self.abort)
        if self.upstream.transport is not None and not self.upstream.closed:
            self.upstream.transport.resume_reading()

    def abort(self) -> None:
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.closed:
                side.transport.abort()

    def side_lost(self) -> None:
        self._lost += 1
        if self._lost == 2:
            if self.watch is not None:
                self.watch.cancel()
            self.picker.finished(self.endpoint)
            self.metrics.active_connections.labels("https", "passthrough").dec()
            if self._on_done is not None:
                self._on_done()


def close_gently(sock: socket.socket) -> None:
    """Consume what the client sent (the peeked ClientHello) so the close is a FIN, not a reset."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        for _ in range(4):
            if not sock.recv(65536):
                break
    sock.close()


def _connect_failed(request: PassthroughRequest, endpoint: Endpoint, exc: BaseException, metrics: Metrics) -> None:
    """A refused or timed-out endpoint is marked down (the next pick skips it) and counted."""
    request.picker.failed(endpoint)
    metrics.upstream_failures.labels(request.pool.id, "connect").inc()
    log.info("passthrough connect failed", extra={"pool": request.pool.id, "endpoint":
             f"{endpoint.address}:{endpoint.port}", "error": str(exc) or type(exc).__name__})


def _unserved(request: PassthroughRequest, metrics: Metrics) -> None:
    """Count and log why a passthrough connection found no backend (a TLS client cannot be told)."""
    result = "no_endpoint" if not request.pool.endpoints else "connect_failed"
    metrics.passthrough.labels(result).inc()
    reason = (request.pool.unavailable or "no ready endpoint") if result == "no_endpoint" else "no endpoint answered"
    log.info("passthrough connection closed: %s", reason, extra={"pool": request.pool.id, "sni": request.sni})


async def connect_upstream(
    loop: asyncio.AbstractEventLoop, request: PassthroughRequest, metrics: Metrics,
    factory: Callable[[Endpoint], Callable[[], asyncio.Protocol]],
) -> tuple[Endpoint, asyncio.BaseTransport] | None:
    """Pick and connect, marking failures and trying other endpoints; None when none answers."""
    tried: list[Endpoint] = []
    client_ip = request.client_addr[0]
    for _ in range(max(1, len(request.pool.endpoints))):
        endpoint = request.picker.pick(client_ip, tried)
        if endpoint is None:
            break
        tried.append(endpoint)
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(factory(endpoint), endpoint.address, endpoint.port),
                request.pool.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            _connect_failed(request, endpoint, exc, metrics)
            continue
        request.picker.succeeded(endpoint)
        return endpoint, transport
    return None


async def serve(
    loop: asyncio.AbstractEventLoop, request: PassthroughRequest, metrics: Metrics,
    on_client: Callable[[Any], None] | None = None, zero_copy: bool = False, idle_timeout: float = 0.0,
) -> bool:
    """Relay one accepted socket to the pool; closes the socket itself when no backend answers.

    ``zero_copy`` picks the ``splice(2)`` relay where the platform has it (the bytes stay in the
    kernel); otherwise the Protocol pair below relays through Python.
    """
    if zero_copy and splice.AVAILABLE:
        return await serve_spliced(loop, request, metrics, on_client, idle_timeout)
    relays: dict[Endpoint, Relay] = {}
    on_close = request.on_close
    begun = loop.time()
    connected_after = [-1.0]

    def factory(endpoint: Endpoint) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            done = None
            if on_close is not None:
                def done() -> None:
                    on_close(endpoint, relay.moved["in"], relay.moved["out"], connected_after[0])
            relay = relays[endpoint] = Relay(metrics, request.picker, endpoint, done)
            return relay.upstream
        return make

    try:
        connected = await connect_upstream(loop, request, metrics, factory)
    except BaseException:
        request.sock.close()
        raise
    if connected is None:
        _unserved(request, metrics)
        close_gently(request.sock)
        if on_close is not None:
            on_close(None, 0, 0, -1.0)
        return False
    connected_after[0] = loop.time() - begun
    endpoint, upstream_transport = connected
    relay = relays[endpoint]
    request.picker.started(endpoint)
    metrics.active_connections.labels("https", "passthrough").inc()
    upstream_transport = cast(asyncio.Transport, upstream_transport)
    preamble = proxy_protocol.header(request.pool.proxy_protocol, request.client_addr, request.server_addr,
                                     request.sni)
    if preamble:
        upstream_transport.write(preamble)
    try:
        client_transport, _ = await loop.connect_accepted_socket(lambda: relay.client, request.sock)
    except OSError:
        upstream_transport.abort()
        request.sock.close()
        relay.side_lost()
        return False
    metrics.passthrough.labels("routed").inc()
    if on_client is not None:
        on_client(client_transport)
    relay.start(idle_timeout)
    return True


async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def on_writable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, on_writable)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_writer(fd)


async def _connect_raw(loop: asyncio.AbstractEventLoop, endpoint: Endpoint, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in endpoint.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.connect((endpoint.address, endpoint.port))
        except (BlockingIOError, InterruptedError):
            # Not loop.sock_connect: uvloop's resolves even numeric addresses in its thread pool,
            # one thread hand-off per passthrough connection.
            await _writable(loop, sock, timeout)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_spliced(
    loop: asyncio.AbstractEventLoop, request: PassthroughRequest, metrics: Metrics,
    on_client: Callable[[Any], None] | None = None, idle_timeout: float = 0.0,
) -> bool:
    """The zero-copy relay: same endpoint choice, failure marking and PROXY header as ``serve``."""
    tried: list[Endpoint] = []
    upstream: socket.socket | None = None
    endpoint: Endpoint | None = None
    on_close = request.on_close
    begun = loop.time()
    try:
        for _ in range(max(1, len(request.pool.endpoints))):
            endpoint = request.picker.pick(request.client_addr[0], tried)
            if endpoint is None:
                break
            tried.append(endpoint)
            try:
                upstream = await _connect_raw(loop, endpoint, request.pool.connect_timeout)
            except (OSError, TimeoutError) as exc:
                _connect_failed(request, endpoint, exc, metrics)
                continue
            request.picker.succeeded(endpoint)
            break
    except BaseException:
        request.sock.close()
        raise
    if upstream is None or endpoint is None:
        _unserved(request, metrics)
        close_gently(request.sock)
        if on_close is not None:
            on_close(None, 0, 0, -1.0)
        return False
    chosen = endpoint
    connected_after = loop.time() - begun
    preamble = proxy_protocol.header(request.pool.proxy_protocol, request.client_addr, request.server_addr,
                                     request.sni)
    try:
        if preamble:
            await asyncio.wait_for(loop.sock_sendall(upstream, preamble), request.pool.connect_timeout)
    except (OSError, TimeoutError):
        upstream.close()
        close_gently(request.sock)
        metrics.passthrough.labels("connect_failed").inc()
        return False
    request.picker.started(chosen)
    metrics.child(metrics.active_connections, "https", "passthrough").inc()

    def done(relay: splice.SpliceRelay) -> None:
        request.picker.finished(chosen)
        metrics.child(metrics.active_connections, "https", "passthrough").dec()
        sent, received = relay.bytes_moved()
        if sent:
            metrics.child(metrics.bytes, "in", "passthrough").inc(sent)
        if received:
            metrics.child(metrics.bytes, "out", "passthrough").inc(received)
        if on_close is not None:
            on_close(chosen, sent, received, connected_after)

    relay = splice.SpliceRelay(loop, request.sock, upstream, done, idle_timeout)
    metrics.child(metrics.passthrough, "routed").inc()
    if on_client is not None:
        on_client(relay)
    relay.start()
    return True
