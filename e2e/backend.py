"""A backend for e2e "pods": one echo server (plain HTTP, HTTPS, or raw TLS for passthrough) with certificates from
files, so a test can start it in a network namespace with ``python -m e2e.backend`` and see, in the answer, which
backend served the request and what the edge forwarded.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from examples.backends import HTTPEcho, TLSEcho, server_context


async def serve(args: argparse.Namespace) -> int:
    context = None
    if args.mode != "http":
        if not args.cert_file or not args.key_file:
            print(f"error: --mode {args.mode} needs --cert-file and --key-file", file=sys.stderr)
            return 2
        context = server_context(Path(args.cert_file).read_text(), Path(args.key_file).read_text())
    server: HTTPEcho | TLSEcho = TLSEcho(context, args.name) if args.mode == "tls" and context else \
        HTTPEcho(args.name, context)
    port = await server.start(args.bind, args.port)
    print(f"e2e backend {args.name}: {args.mode} on {args.bind}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.backend", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["http", "https", "tls"], default="http")
    parser.add_argument("--name", default="backend", help="reported in every answer (X-Echo-Server, JSON server)")
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--cert-file")
    parser.add_argument("--key-file")
    return asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
