"""Zero-copy passthrough relay: ``splice(2)`` from one socket into a pipe and from the pipe into the other.

The bytes of a passthrough connection never need to reach Python: each direction moves them
kernel-side through a pipe (one per direction, its capacity the only buffer), and Python only
sees readiness events and byte counts. Flow control falls out of the pipe: a direction reads
from its source only when its pipe is empty, and when the destination cannot take more it waits
for the destination to become writable before reading again. EOF in one direction becomes
``shutdown(SHUT_WR)`` on the other socket once the pipe is drained (half-close); the relay
closes when both directions are done or either fails.

Small messages are copied, not spliced: each direction starts with ``recv``/``send`` of up to
``COPY_CHUNK`` bytes (one copy in, one out: cheaper than two splices through a pipe for a small
message), and a connection that stays small never creates its pipes (two ``pipe2`` + ``fcntl`` and
four ``close`` per connection saved). The first read
that fills ``COPY_CHUNK`` switches that direction to splice for good (a bulk transfer), once the
copied bytes are out.

Linux only (``os.splice``); the Protocol-based relay in ``passthrough.py`` is the fallback and
``DataPlaneConfig(zero_copy=False)`` selects it. Measured on the 2-core dev box (1 GiB through one
connection, client and sink in another process, uvloop, both relays): the data plane spent 0.20-0.30
CPU seconds with splice against 0.37-0.46 with the Protocol pair; single-connection throughput was
client-bound and within noise of each other (0.8-1.8 GB/s both). Less CPU per relayed byte is what
scales to many connections, so splice is the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable

from dataplane.idle import IdleWatch

AVAILABLE = hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK")
PIPE_SIZE = 1024 * 1024
MAX_ROUNDS = 16
COPY_CHUNK = 16 * 1024  # a read this full means a bulk transfer: splice from then on
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class _Pump:
    """One direction: ``src`` -> pipe -> ``dst``."""

    def __init__(self, relay: SpliceRelay, src: socket.socket, dst: socket.socket, direction: str) -> None:
        self.relay = relay
        self.loop = relay.loop
        self.src, self.dst = src.fileno(), dst.fileno()
        self.src_sock, self.dst_sock = src, dst
        self.direction = direction
        self.pipe_r = self.pipe_w = -1  # created when the direction switches to splice
        self.copy = True  # recv/send until a read fills COPY_CHUNK
        self.pending = b""  # copied bytes the destination has not taken yet
        self.in_pipe = 0
        self.reading = False
        self.writing = False
        self.eof = False
        self.done = False
        self.moved = 0

    def start(self) -> None:
        self._want_read(True)

    def _want_read(self, on: bool) -> None:
        if on and not self.reading:
            self.loop.add_reader(self.src, self._readable)
        elif not on and self.reading:
            self.loop.remove_reader(self.src)
        self.reading = on

    def _want_write(self, on: bool) -> None:
        if on and not self.writing:
            self.loop.add_writer(self.dst, self._flush)
        elif not on and self.writing:
            self.loop.remove_writer(self.dst)
        self.writing = on

    def _readable(self) -> None:
        if self.copy:
            self._copy()
            return
        for _ in range(MAX_ROUNDS):  # move several pipefuls per wake-up while both sides keep up
            try:
                n = os.splice(self.src, self.pipe_w, PIPE_SIZE, flags=_FLAGS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.relay.fail()
                return
            if n == 0:
                self.eof = True
                self._want_read(False)
            self.in_pipe += n
            self._flush()
            # Keep reading until EAGAIN: returning at a short read (saving one syscall) was tried and
            # made wrk's connection-per-request load fail thousands of requests (bench, 2026-11-23).
            if self.in_pipe or self.eof or self.done or self.relay.closed:
                return

    def _copy(self) -> None:
        for _ in range(MAX_ROUNDS):
            try:
                data = self.src_sock.recv(COPY_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.relay.fail()
                return
            if not data:
                self.eof = True
                self._want_read(False)
                self._finish()  # nothing is pending: reading stops while anything is
                return
            self._send(data)
            if self.pending or self.done or self.relay.closed:
                return
            if len(data) == COPY_CHUNK:
                self._to_splice()
                return
            # Read on until EAGAIN, as the splice path does: returning at a short read loses the
            # wake-up for the next bytes of a freshly handed-over socket (wrk's connection-per-request
            # load hung every connection that way).

    def _send(self, data: bytes) -> None:
        try:
            n = self.dst_sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.relay.fail()
            return
        if n:
            self.moved += n
            if self.relay.watch is not None:
                self.relay.watch.active = True
        if n < len(data):  # destination full: stop reading until it drains
            self.pending = data[n:]
            self._want_read(False)
            self._want_write(True)

    def _to_splice(self) -> None:
        try:
            self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # no pipe to be had (fd limit): keep copying
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, PIPE_SIZE)
        self.copy = False

    def _flush(self) -> None:
        if self.pending:  # copy mode, the destination is writable again
            data, self.pending = self.pending, b""
            self._send(data)
            if self.pending or self.relay.closed:
                return
            self._want_write(False)
            if not self.done:
                self._want_read(True)
            return
        while self.in_pipe:
            try:
                n = os.splice(self.pipe_r, self.dst, self.in_pipe, flags=_FLAGS)
            except (BlockingIOError, InterruptedError):
                self._want_read(False)  # destination full: stop reading until it drains
                self._want_write(True)
                return
            except OSError:
                self.relay.fail()
                return
            if n == 0:  # pragma: no cover - a pipe with data does not return 0
                break
            self.in_pipe -= n
            self.moved += n
            if self.relay.watch is not None:
                self.relay.watch.active = True
        self._want_write(False)
        if self.eof:
            self._finish()
        elif not self.done:
            self._want_read(True)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(OSError):
            self.dst_sock.shutdown(socket.SHUT_WR)
        self.relay.direction_done()

    def stop(self) -> None:
        self._want_read(False)
        self._want_write(False)
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.pipe_r = self.pipe_w = -1


class SpliceRelay:
    """Both directions of one connection; looks enough like a transport for the edge's tracker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: socket.socket, upstream: socket.socket,
                 on_done: Callable[[SpliceRelay], None], idle_timeout: float = 0.0) -> None:
        self.loop = loop
        self.client, self.upstream = client, upstream
        self.on_done = on_done
        self.closed = False
        self.idle_timeout = idle_timeout
        self.watch: IdleWatch | None = None
        self.pumps = (_Pump(self, client, upstream, "in"), _Pump(self, upstream, client, "out"))

    def start(self) -> None:
        if self.idle_timeout > 0:
            self.watch = IdleWatch(self.loop, self.idle_timeout, self.abort)
        for pump in self.pumps:
            pump.start()

    def direction_done(self) -> None:
        if all(p.done for p in self.pumps):
            self.close()

    def fail(self) -> None:
        self.abort()

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):  # RST the client rather than a clean FIN: the stream broke
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.watch is not None:
            self.watch.cancel()
        for pump in self.pumps:
            pump.stop()
        self.client.close()
        self.upstream.close()
        self.on_done(self)

    def bytes_moved(self) -> tuple[int, int]:
        return self.pumps[0].moved, self.pumps[1].moved
