"""Micro-benchmark: what the HTTP/2 pure parts cost per frame and per request (best of several rounds).

Usage: ``.venv/bin/python bench/h2_guard_micro.py [--rounds N]``.

``guard``: ``FrameGuard.feed`` over real frames (hyperframe-serialised): 16 KiB DATA frames (the bulk case, per
frame and as throughput), small HEADERS frames many to a read, and one frame per call (the floor a tiny read
pays). ``translate``: ``translate_request`` for a browser-like GET of 12 fields.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from hyperframe.frame import DataFrame, HeadersFrame

from dataplane.http2.guard import FrameGuard, H2Limits
from dataplane.http2.translate import translate_request

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
BROWSER_GET = [
    (b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html?x=1"), (b":authority", b"example.com"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"), (b"accept", b"text/html,*/*;q=0.8"),
    (b"accept-language", b"en-US,en;q=0.5"), (b"accept-encoding", b"gzip, deflate, br"), (b"cookie", b"a=1"),
    (b"cookie", b"b=2"), (b"sec-fetch-mode", b"navigate"), (b"priority", b"u=0, i"),
]


def best(rounds: int, number: int, run: Callable[[], Any]) -> float:
    """Seconds per call of ``run``, best of ``rounds`` rounds of ``number`` calls."""
    out = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(number):
            run()
        out = min(out, (time.perf_counter() - started) / number)
    return out


def guard() -> FrameGuard:
    g = FrameGuard(H2Limits(), 32768)
    g.feed(PREFACE, 0.0)
    return g


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds

    bulk = DataFrame(1, b"x" * 16384).serialize() * 64  # 1 MiB
    g = guard()
    per_read = best(rounds, 200, lambda: g.feed(bulk, 0.0))
    print(f"guard  16 KiB DATA frames:          {per_read / 64 * 1e9:7.0f} ns/frame  "
          f"({len(bulk) / per_read / 1e9:.1f} GB/s)")

    frame = HeadersFrame(1, b"\x82\x87\x84\x41\x8a" + b"a" * 40)
    frame.flags.add("END_HEADERS")
    many, one = frame.serialize() * 1000, frame.serialize()
    g = guard()
    per_frame = best(rounds, 20, lambda: g.feed(many, 0.0)) / 1000
    print(f"guard  small HEADERS, 1000 a read:  {per_frame * 1e9:7.0f} ns/frame")
    g = guard()
    print(f"guard  one frame per call:          {best(rounds, 20000, lambda: g.feed(one, 0.0)) * 1e9:7.0f} ns/call")
    print(f"translate_request, 12-field GET:    "
          f"{best(rounds, 20000, lambda: translate_request(BROWSER_GET, True)) * 1e6:7.2f} us/request")


if __name__ == "__main__":
    main()
