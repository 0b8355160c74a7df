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


async def _sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(float(request))
    return b"woke"


def _handlers() -> grpc.GenericRpcHandler:
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

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(LOCAL, self.port)

    async def stop(self) -> None:
        await self.server.stop(grace=None)


async def start_grpc(tls: Issued | None = None) -> GRPCBackend:
    """A grpcio server on 127.0.0.1 (an ephemeral port): plaintext (h2c), or TLS with ``tls``'s certificate."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(),))
    if tls is None:
        port = server.add_insecure_port(f"{LOCAL}:0")
    else:
        creds = grpc.ssl_server_credentials([(tls.key_pem.encode(), tls.chain_pem.encode())])
        port = server.add_secure_port(f"{LOCAL}:0", creds)
    assert port, "grpcio could not bind a port"
    await server.start()
    return GRPCBackend(server, port)
