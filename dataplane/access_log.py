"""Access log: one line per HTTP request and per passthrough connection, to stdout, never blocking the loop.

The event loop's share is small on purpose: a request appends one tuple of values it already holds
(``HTTP_FIELDS`` order; times are loop-clock floats and a wall-clock float) to a list. A timer (or a
full list) hands the list to a writer thread through a queue; the thread formats the lines (JSON or
an nginx-``combined``-like text) and writes them to fd 1 with ``os.write``. A stdout that is slow or
never read blocks only that thread: once ``max_pending`` records wait, new batches are dropped and
counted in ``portcullis_access_log_dropped_lines_total`` instead of growing memory or stalling the loop.

Line-atomic under ``--workers N`` (every worker writes to the same pipe): each ``write`` carries
whole lines only and at most ``PIPE_BUF`` bytes, which POSIX makes atomic on a pipe; fields that a
client controls (host, path, SNI, subject) are cut to bounded lengths so one line always fits.

What is never logged: the query string (tokens, signed-URL signatures and OAuth codes travel there;
the normalised path is logged), header values such as ``Authorization`` or ``Cookie``, keys or tokens.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

AccessLogFormat = Literal["off", "json", "text"]
FORMATS: tuple[AccessLogFormat, ...] = ("off", "json", "text")

# One record is a tuple in this order (the loop builds it; the writer thread formats it).
HTTP_FIELDS = (
    "time", "client_addr", "client_port", "sni", "tls_version", "tls_cipher", "tls_resumed", "host", "method",
    "path", "http_version", "status", "bytes_in", "bytes_out", "duration", "upstream", "upstream_connect_time",
    "upstream_response_time", "mode", "request_id", "namespace", "ingress", "client_subject", "protocol",
)
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)
# Client-controlled text (host, path, SNI, subject) is cut to MAX_FIELD characters, and to fewer when escaping
# would make it longer than 2 * MAX_FIELD, so a whole line (4 such fields, the rest bounded) stays below PIPE_BUF.
MAX_FIELD = 320
FLUSH_AFTER = 0.05  # seconds a record may wait on the loop before its batch goes to the writer
FLUSH_RECORDS = 256  # ... or this many records, whichever comes first
MAX_PENDING = 20000  # records handed to the writer and not yet written; beyond, batches are dropped

_qs = json.encoder.encode_basestring_ascii


def ingress_of(source: str) -> tuple[str, str]:
    """A snapshot ``source`` ("Ingress ns/name", or "ns/name") as the log's (namespace, name)."""
    namespace, _, name = (source.partition(" ")[2] or source).partition("/")
    return (namespace, name) if name else ("", namespace)


def _cut(value: str) -> str:
    return value if len(value) <= MAX_FIELD else value[:MAX_FIELD] + "..."


def _q(value: str | None) -> str:
    """A JSON string (or null): control characters and non-ASCII escaped, length bounded."""
    if value is None:
        return "null"
    out: str = _qs(_cut(value))
    return out if len(out) <= 2 * MAX_FIELD else _qs(value[: MAX_FIELD // 6] + "...")


def _ms(seconds: float) -> str:
    """Seconds with millisecond resolution (nginx's ``$request_time`` style); -1 means "not reached"."""
    return "null" if seconds < 0 else f"{seconds:.3f}"


class _Clock:
    """Wall-clock seconds -> ISO 8601 / nginx time text, the second's prefix computed once."""

    def __init__(self) -> None:
        self._second = -1
        self._iso = ""
        self._local = ""

    def iso(self, t: float) -> str:
        self._tick(t)
        return f"{self._iso}.{int((t % 1) * 1000):03d}Z"

    def local(self, t: float) -> str:
        self._tick(t)
        return self._local

    def _tick(self, t: float) -> None:
        second = int(t)
        if second != self._second:
            self._second = second
            tm = time.gmtime(second)
            self._iso = time.strftime("%Y-%m-%dT%H:%M:%S", tm)
            self._local = time.strftime("%d/%b/%Y:%H:%M:%S +0000", tm)


def _str(value: Any) -> str | None:
    """What the loop stored as it was (bytes of the request head, an ``Endpoint``) as text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1") if value else None
    address = getattr(value, "address", None)
    if address is not None:  # an Endpoint
        return f"[{address}]:{value.port}" if ":" in address else f"{address}:{value.port}"
    return str(value)


def _version(value: Any) -> str | None:
    return None if value is None else ("HTTP/1.1" if value == 11 else "HTTP/1.0" if value == 10 else str(value))


def normalise(rec: Sequence[Any]) -> tuple[Any, ...]:
    """A record as the loop built it -> every text field a ``str`` (or None), ready for a formatter."""
    out = list(rec)
    for i in (7, 8, 15, 19):  # host, method, upstream, request_id
        out[i] = _str(out[i])
    # An HTTP/2 stream reaches the engine as an HTTP/1.1 exchange: the client's version is the protocol's.
    out[10] = "HTTP/2.0" if out[23] in ("h2", "grpc") else _version(out[10])
    return tuple(out)


def format_json(rec: Sequence[Any], clock: _Clock) -> str:
    (t, addr, port, sni, tls_version, cipher, resumed, host, method, path, version, status, bytes_in, bytes_out,
     duration, upstream, connect_t, response_t, mode, rid, namespace, ingress, subject, protocol) = rec
    resumed_text = "null" if resumed is None else ("true" if resumed else "false")
    return (
        f'{{"time":"{clock.iso(t)}","client_addr":{_q(addr)},"client_port":{port:d},"sni":{_q(sni)},'
        f'"tls_version":{_q(tls_version)},"tls_cipher":{_q(cipher)},"tls_resumed":{resumed_text},'
        f'"host":{_q(host)},"method":{_q(method)},"path":{_q(path)},"http_version":{_q(version)},'
        f'"status":{status:d},"bytes_in":{bytes_in:d},"bytes_out":{bytes_out:d},"duration":{_ms(duration)},'
        f'"upstream":{_q(upstream)},"upstream_connect_time":{_ms(connect_t)},'
        f'"upstream_response_time":{_ms(response_t)},"mode":"{mode}","request_id":{_q(rid)},'
        f'"namespace":{_q(namespace)},"ingress":{_q(ingress)},"client_subject":{_q(subject)},'
        f'"protocol":{_q(protocol)}}}\n'
    )


_TEXT_ESCAPES = {c: f"\\x{c:02X}" for c in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}


def _t(value: str | None) -> str:
    """nginx's escaping for ``log_format escape=default``: ``"``, ``\\``, control and non-ASCII bytes as ``\\xHH``
    (text beyond Latin-1 is backslash-escaped when the line is encoded); "-" for none."""
    if not value:
        return "-"
    if len(value) <= MAX_FIELD and value.isascii() and value.isprintable() and '"' not in value \
            and "\\" not in value:
        return value  # the common case: nothing to escape
    out = _cut(value).translate(_TEXT_ESCAPES)
    return out if len(out) <= 2 * MAX_FIELD else value[: MAX_FIELD // 4].translate(_TEXT_ESCAPES) + "..."


def format_text(rec: Sequence[Any], clock: _Clock) -> str:
    """``combined``'s first part (``$remote_addr - - [$time_local] "$request" $status $bytes_sent``), then
    ``key=value`` pairs for what combined lacks (no referer or user agent: header values are not logged)."""
    (t, addr, port, sni, tls_version, cipher, resumed, host, method, path, version, status, bytes_in, bytes_out,
     duration, upstream, connect_t, response_t, mode, rid, namespace, ingress, subject, protocol) = rec
    request = f"{_t(method)} {_t(path)} {version}" if method else "-"
    tls = f"{tls_version}/{cipher}/{'r' if resumed else 'f'}" if tls_version else "-"
    source = f"{namespace}/{ingress}" if ingress else "-"
    return (
        f'{_t(addr)} - - [{clock.local(t)}] "{request}" {status} {bytes_out} host="{_t(host)}" '
        f"port={port} in={bytes_in} rt={_ms(duration)} upstream={_t(upstream)} uct={_ms(connect_t)} "
        f'urt={_ms(response_t)} mode={mode} id={_t(rid)} ingress={_t(source)} sni="{_t(sni)}" tls={_t(tls)} '
        f'subject="{_t(subject)}" proto={_t(protocol)}\n'
    )


FORMATTERS: dict[str, Callable[[Sequence[Any], _Clock], str]] = {"json": format_json, "text": format_text}


def chunks(lines: Sequence[str], limit: int = PIPE_BUF) -> list[bytes]:
    """Whole lines packed into writes of at most ``limit`` bytes (a longer line goes alone, uncut)."""
    out: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        data = line.encode("ascii", "backslashreplace")
        if current and size + len(data) > limit:
            out.append(b"".join(current))
            current, size = [], 0
        current.append(data)
        size += len(data)
    if current:
        out.append(b"".join(current))
    return out


class AccessLog:
    """Collects records on the loop; a writer thread formats and writes them (see the module docstring).

    ``dropped`` and ``written`` are prometheus counters (or anything with ``inc``); ``fd`` is 1 in
    production, a pipe in tests.
    """

    def __init__(self, fmt: AccessLogFormat, dropped: Any = None, written: Any = None, fd: int = 1,
                 max_pending: int = MAX_PENDING) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"access log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.format = fmt
        self.enabled = fmt != "off"
        self._format = FORMATTERS.get(fmt, format_json)
        self._dropped = dropped
        self._written = written
        self._fd = fd
        self._max_pending = max_pending
        self._buf: list[tuple[Any, ...]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._queue: queue.SimpleQueue[list[tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._thread: threading.Thread | None = None
        self.dropped_lines = 0  # also in the metric; kept here for tests and tools without one

    # --- the loop's side ------------------------------------------------------------------------

    def add(self, record: tuple[Any, ...]) -> None:
        """Buffer one record (``HTTP_FIELDS`` order). Cheap: an append, and a timer for the first one."""
        buf = self._buf
        buf.append(record)
        if len(buf) >= FLUSH_RECORDS:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        """Hand the buffered records to the writer thread, or drop (and count) them when it is behind."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._buf
        if not batch:
            return
        self._buf = []
        with self._lock:
            full = self._pending + len(batch) > self._max_pending
            if not full:
                self._pending += len(batch)
        if full:
            self._count_dropped(len(batch))
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()
        self._queue.put(batch)

    def close(self, timeout: float = 1.0) -> None:
        """Flush, then let the writer finish what it can within ``timeout`` (a blocked stdout is left behind)."""
        self.flush()
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
            self._thread = None

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending + len(self._buf)

    def _count_dropped(self, n: int) -> None:
        self.dropped_lines += n
        if self._dropped is not None:
            self._dropped.inc(n)

    # --- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        clock = _Clock()
        fmt = self._format
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            lines = [fmt(normalise(rec), clock) for rec in batch]
            written = 0
            for data in chunks(lines):
                if not self._write_all(data):
                    break
                written += data.count(b"\n")
            if written and self._written is not None:
                self._written.inc(written)
            if written < len(batch):
                self._count_dropped(len(batch) - written)
            with self._lock:
                self._pending -= len(batch)

    def _write_all(self, data: bytes) -> bool:
        """Blocking write of one chunk (a non-blocking fd 1 is waited on); False when stdout is gone."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                select.select([], [self._fd], [], 1.0)
                continue
            except OSError:
                return False
            view = view[n:]
        return True
