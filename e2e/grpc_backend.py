"""A gRPC backend for e2e "pods": the integration tier's grpcio server (tests/integration/grpc_backends.py, methods
of ``test.Echo``) bound to the pod's address, plaintext (h2c, what ``backend-protocol: grpc`` speaks) or TLS with a
certificate from files (``GRPCS``), started in a network namespace with ``python -m e2e.grpc_backend``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.integration.grpc_backends import start_grpc
from tests.pki import Issued


def load_issued(cert_file: Path, key_file: Path) -> Issued:
    """The certificate and key the test wrote, in the shape ``start_grpc`` takes."""
    cert_pem, key_pem = cert_file.read_text(), key_file.read_text()
    key = load_pem_private_key(key_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file}: expected an EC private key (tests/pki.py issues those)")
    return Issued(cert_pem, key_pem, x509.load_pem_x509_certificate(cert_pem.encode()), key)


async def serve(args: argparse.Namespace) -> int:
    tls = load_issued(Path(args.cert_file), Path(args.key_file)) if args.cert_file else None
    backend = await start_grpc(tls, host=args.bind, port=args.port)
    print(f"e2e gRPC backend: {'tls' if tls else 'h2c'} on {args.bind}:{backend.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await backend.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.grpc_backend", description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--cert-file", help="serve TLS with this certificate (and --key-file)")
    parser.add_argument("--key-file")
    args = parser.parse_args(argv)
    if bool(args.cert_file) != bool(args.key_file):
        parser.error("--cert-file and --key-file go together")
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
