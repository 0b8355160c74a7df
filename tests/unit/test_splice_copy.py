"""The passthrough relay copies small messages (no pipes) and switches a direction to splice once a
read fills COPY_CHUNK; bytes arrive intact and in order either way, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

from dataplane import splice


async def _pair(loop: asyncio.AbstractEventLoop) -> tuple[socket.socket, socket.socket]:
    lst = socket.create_server(("127.0.0.1", 0))
    lst.setblocking(False)
    client = socket.socket()
    client.setblocking(False)
    await loop.sock_connect(client, lst.getsockname())
    server, _ = await loop.sock_accept(lst)
    server.setblocking(False)
    lst.close()
    return client, server


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, n - len(out)), 5)
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


async def test_small_messages_are_copied_without_pipes_and_a_bulk_read_switches_to_splice() -> None:
    loop = asyncio.get_running_loop()
    client, edge_client = await _pair(loop)
    edge_upstream, backend = await _pair(loop)
    closed: asyncio.Future[splice.SpliceRelay] = loop.create_future()
    relay = splice.SpliceRelay(loop, edge_client, edge_upstream, closed.set_result)
    relay.start()
    inbound, outbound = relay.pumps
    try:
        for i in range(20):  # request/response turns, like a keep-alive TLS session
            await loop.sock_sendall(client, b"q%03d" % i * 100)
            assert await _recv_exactly(loop, backend, 400) == b"q%03d" % i * 100
            await loop.sock_sendall(backend, b"r%03d" % i * 300)
            assert await _recv_exactly(loop, client, 1200) == b"r%03d" % i * 300
        assert inbound.copy and outbound.copy
        assert inbound.pipe_r == inbound.pipe_w == outbound.pipe_r == outbound.pipe_w == -1
        assert relay.bytes_moved() == (20 * 400, 20 * 1200)

        bulk = bytes(range(256)) * 4096  # 1 MiB: reads fill COPY_CHUNK
        send = asyncio.ensure_future(loop.sock_sendall(backend, bulk))
        assert await _recv_exactly(loop, client, len(bulk)) == bulk
        await send
        assert not outbound.copy and outbound.pipe_r >= 0  # that direction splices from now on
        assert inbound.copy  # the other one is still small
        await loop.sock_sendall(backend, b"after")
        assert await _recv_exactly(loop, client, 5) == b"after"

        backend.shutdown(socket.SHUT_WR)  # EOF is passed on as a half-close, the other way still works
        assert await asyncio.wait_for(loop.sock_recv(client, 10), 5) == b""
        await loop.sock_sendall(client, b"late")
        assert await _recv_exactly(loop, backend, 4) == b"late"
        client.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(loop.sock_recv(backend, 10), 5) == b""
        assert await asyncio.wait_for(closed, 5) is relay  # both directions done: the relay closed itself
    finally:
        relay.close()
        client.close()
        backend.close()
