"""Real gRPC backends for the end-to-end tests: grpcio's own server (an independent HTTP/2 and gRPC
implementation), with generic handlers over raw bytes, so no protoc and no generated code.

Methods of service ``test.Echo``:

- ``Unary``: returns the request bytes;
- ``ServerStream``: the request is a decimal count N; answers N messages ``b"msg-<i>"``;
- ``Bidi``: echoes every message as it arrives (one response per request, in order);
- ``Fail``: aborts with NOT_FOUND and a message that needs percent-encoding (non-ASCII, spaces);
- ``Sleep``: the request is a number of seconds to sleep before answering ``b"woke"`` (deadline tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from dataplane.snapshot import Endpoint
from tests.pki import Issued

LOCAL = "127.0.0.1"
SERVICE = "test.Echo"
FAIL_MESSAGE = "no such thing: ünïcode % and spaces"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _server_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(int(request)):
        yield b"msg-%d" % i


async def _bidi(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message


async def _fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, FAIL_MESSAGE)
    raise AssertionError("abort returns by raising")


@dataclass
class Calls:
    """What the backend saw: ``cancelled`` counts Sleep calls cancelled under it (the client's deadline
    passed and the cancel, RST_STREAM, travelled through the proxy to the backend)."""

    cancelled: int = 0


def _handlers(calls: Calls) -> grpc.GenericRpcHandler:
    async def _sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            await asyncio.sleep(float(request))
        except asyncio.CancelledError:
            calls.cancelled += 1
            raise
        return b"woke"

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
    })


@dataclass
class GRPCBackend:
    server: grpc.aio.Server
    port: int
    calls: Calls
    host: str = LOCAL

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)

    async def stop(self) -> None:
        await self.server.stop(grace=None)


async def start_grpc(tls: Issued | None = None, host: str = LOCAL, port: int = 0) -> GRPCBackend:
    """A grpcio server on 127.0.0.1 (an ephemeral port): plaintext (h2c), or TLS with ``tls``'s certificate.
    ``host``/``port`` elsewhere for the e2e rig, whose EndpointSlices name pod addresses (e2e/grpc_backend.py)."""
    server = grpc.aio.server()
    calls = Calls()
    server.add_generic_rpc_handlers((_handlers(calls),))
    if tls is None:
        port = server.add_insecure_port(f"{host}:{port}")
    else:
        creds = grpc.ssl_server_credentials([(tls.key_pem.encode(), tls.chain_pem.encode())])
        port = server.add_secure_port(f"{host}:{port}", creds)
    assert port, "grpcio could not bind a port"
    await server.start()
    return GRPCBackend(server, port, calls, host)
