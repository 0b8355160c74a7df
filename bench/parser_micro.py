"""Micro-benchmark: microseconds per request-head parse, pure-Python reference vs the C extension.

Usage: ``.venv/bin/python bench/parser_micro.py [--rounds N]``. A typical 6-header browser-ish GET
(canonical path, Host, no body) and the same with a non-canonical path (which calls back into the
Python path normaliser). Best of several rounds, so other load on the machine inflates less.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from dataplane.http import parser

TYPICAL = (
    b"GET /api/v1/items?page=2 HTTP/1.1\r\n"
    b"Host: app.example.test\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Connection: keep-alive"
)
NON_CANONICAL = TYPICAL.replace(b"/api/v1/items", b"/api/./v1//%69tems", 1)
POST = TYPICAL.replace(b"GET", b"POST", 1).replace(b"Connection: keep-alive", b"Content-Length: 1024", 1)


def per_call_us(fn: Callable[[bytes, int, int, int], object], head: bytes, number: int, rounds: int) -> float:
    timer = timeit.Timer(lambda: fn(head, 8192, 32768, 100))
    return min(timer.repeat(repeat=rounds, number=number)) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--number", type=int, default=20000)
    args = ap.parse_args()
    impls: list[tuple[str, Callable[[bytes, int, int, int], object]]] = [("python", parser.parse_request_head_py)]
    if parser.PARSER_IMPLEMENTATION == "c":
        impls.append(("c", parser.parse_request_head))
    else:
        print("C extension not built: only the Python parser is measured")
    print(f"{'request':<28}" + "".join(f"{name:>12}" for name, _ in impls) + "   (us per parse, best of rounds)")
    for label, head in (("6 headers, canonical GET", TYPICAL), ("6 headers, POST + C-L", POST),
                        ("6 headers, non-canonical", NON_CANONICAL)):
        assert impls[0][1](head, 8192, 32768, 100) == impls[-1][1](head, 8192, 32768, 100)
        cells = "".join(f"{per_call_us(fn, head, args.number, args.rounds):>12.2f}" for _, fn in impls)
        print(f"{label:<28}{cells}")


if __name__ == "__main__":
    main()
