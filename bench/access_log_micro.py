"""Micro-benchmark: microseconds per access-log line, on the event loop and in total.

Usage: ``.venv/bin/python bench/access_log_micro.py [--rounds N] [--number N]``.

``loop`` is what a request pays on the event loop: ``HTTPProtocol._log`` collecting the fields of a finished
exchange (a real parsed request head, a real endpoint, TLS facts read once per connection) and buffering the
tuple, with the timer and the hand-off to the writer thread included (batches of ``FLUSH_RECORDS``).
``total`` is the process CPU time (both threads) until every line is written: the loop's share plus the
writer thread's formatting (JSON or text) and ``os.write`` of whole-line batches to ``/dev/null``.
Best of several rounds, so other load on the machine inflates less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any, cast

from dataplane.access_log import FLUSH_RECORDS, AccessLog, AccessLogFormat
from dataplane.http.connection import HTTPProtocol
from dataplane.http.info import ConnectionInfo
from dataplane.http.parser import parse_request_head
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import build_http_table
from dataplane.metrics import Metrics
from dataplane.snapshot import Endpoint, Snapshot

HEAD = (
    b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: app.example.test\r\nUser-Agent: bench\r\n"
    b"Accept: */*\r\nX-Request-ID: 0123456789abcdef0123456789abcdef\r\nConnection: keep-alive"
)


class _Transport:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Forward:
    log = ("demo", "web")


def _protocol(alog: AccessLog) -> HTTPProtocol:
    metrics = Metrics()
    table = build_http_table(Snapshot(), None, metrics, HTTPSettings())
    proto = HTTPProtocol(table, ConnectionInfo("https", ("10.1.2.3", 40000), 443, "app.example.test"), metrics,
                         alog)
    loop = asyncio.get_running_loop()
    proto._loop = loop
    proto._transport = cast(asyncio.Transport, _Transport())
    proto._tls = ("TLSv1.3", "TLS_AES_128_GCM_SHA256", False)  # read once per connection, not per request
    proto._req = parse_request_head(HEAD, 8192, 32768, 100)
    proto._fwd = cast(Any, _Forward())
    proto._ep = Endpoint("10.0.0.9", 8080)
    proto._rid = b"0123456789abcdef0123456789abcdef"
    proto._started = loop.time()
    proto._t_conn = proto._t_head = proto._started
    proto._out = 1234
    return proto


async def _round(fmt: AccessLogFormat, number: int, fd: int) -> tuple[float, float]:
    alog = AccessLog(fmt, fd=fd, max_pending=number + FLUSH_RECORDS)
    proto = _protocol(alog)
    log = proto._log
    # warm the writer thread up (first-use costs are not per line)
    log(200)
    alog.flush()
    while alog.pending:
        await asyncio.sleep(0.001)
    cpu = time.process_time()
    started = time.perf_counter()
    for _ in range(number):
        log(200)
    on_loop = time.perf_counter() - started
    alog.flush()
    while alog.pending:
        await asyncio.sleep(0.001)  # polls cost next to nothing; the writer thread does the rest
    total = time.process_time() - cpu  # CPU of both threads: what the lines cost the process
    alog.close()
    assert alog.dropped_lines == 0
    return on_loop / number * 1e6, total / number * 1e6


async def main_async(rounds: int, number: int) -> None:
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        print(f"{'format':<6} {'loop us/line':>13} {'total us/line':>14}")
        formats: tuple[AccessLogFormat, ...] = ("json", "text")
        for fmt in formats:
            results = [await _round(fmt, number, fd) for _ in range(rounds)]
            print(f"{fmt:<6} {min(r[0] for r in results):>13.2f} {min(r[1] for r in results):>14.2f}")
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--number", type=int, default=50000)
    args = ap.parse_args()
    asyncio.run(main_async(args.rounds, args.number))


if __name__ == "__main__":
    main()
