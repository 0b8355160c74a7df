"""Passthrough through the real edge: the client talks TLS to the backend, byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator

import pytest

from dataplane.runtime import DataPlane, DataPlaneConfig
from examples.backends import TLSEcho
from tests.integration.conftest import TOKEN, client_context, passthrough_snapshot, raw_connect, tls_roundtrip
from tests.pki import CA, Issued
from tests.unit.test_clienthello import real_client_hello, split_records

HOST = "direct.example.com"



LOOPS = ("asyncio", "uvloop")  # the server runs on uvloop, whose transports differ in detail


@pytest.fixture(params=["splice", "protocols"])
async def dataplane(request: pytest.FixtureRequest) -> AsyncIterator[DataPlane]:
    """Every passthrough test runs against both relays: zero-copy splice(2) and the asyncio Protocol pair."""
    dp = DataPlane(DataPlaneConfig(bind="127.0.0.1", https_port=0, http_port=0, admin_port=0, admin_token=TOKEN,
                                   drain_timeout=0.5, clienthello_timeout=3.0,
                                   zero_copy=request.param == "splice"))
    await dp.start()
    try:
        yield dp
    finally:
        await dp.stop(drain_timeout=0)

async def test_passthrough_end_to_end_client_verifies_backend_certificate(
    dataplane: DataPlane, tls_backend: tuple[TLSEcho, Issued], backend_ca: CA
) -> None:
    echo, issued = tls_backend
    assert dataplane.apply(passthrough_snapshot(HOST, echo.port)) == []
    data, _, der = await tls_roundtrip(dataplane.https_port, HOST, client_context(backend_ca.cert_pem),
                                          b"hello through the edge\n" * 100)
    assert data == b"hello through the edge\n" * 100
    assert der == ssl.PEM_cert_to_DER_cert(issued.cert_pem)
    assert echo.records[-1].sni == HOST
    assert echo.records[-1].proxy is None
    text = dataplane.metrics.render().decode()
    assert 'portcullis_passthrough_connections_total{result="routed"} 1.0' in text


async def test_passthrough_with_large_payload_both_ways(
    dataplane: DataPlane, tls_backend: tuple[TLSEcho, Issued], backend_ca: CA
) -> None:
    echo, _ = tls_backend
    dataplane.apply(passthrough_snapshot(HOST, echo.port))
    payload = bytes(range(256)) * 8192  # 2 MiB
    data, _, _ = await tls_roundtrip(dataplane.https_port, HOST, client_context(backend_ca.cert_pem), payload, 30)
    assert data == payload


def _tls_over_socket(sock: socket.socket, ctx: ssl.SSLContext, hello: bytes, obj: ssl.SSLObject,
                     incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, send_hello: object) -> bytes:
    """Finish a handshake started in memory over a blocking socket, then echo one message."""
    assert callable(send_hello)
    send_hello(hello)
    for _ in range(50):
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during handshake") from None
            incoming.write(data)
    sock.sendall(outgoing.read())
    obj.write(b"fragmented ok")
    sock.sendall(outgoing.read())
    received = b""
    for _ in range(50):
        try:
            received += obj.read(1024)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
            continue
        if len(received) >= len(b"fragmented ok"):
            break
    return received


def _fragmented_client(port: int, ca_pem: str, reframe: bool, byte_by_byte: bool) -> bytes:
    ctx = client_context(ca_pem)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=HOST)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    if reframe:  # the same handshake message, carried by two TLS records
        hello = split_records(hello, [len(hello) // 3])
    sock = raw_connect(port)
    try:
        def send(data: bytes) -> None:
            if not byte_by_byte:
                sock.sendall(data)
                return
            for i in range(len(data)):
                sock.send(data[i : i + 1])
                if i % 16 == 0:
                    time.sleep(0.001)

        return _tls_over_socket(sock, ctx, hello, obj, incoming, outgoing, send)
    finally:
        sock.close()


async def test_client_hello_in_one_byte_segments_routes(
    dataplane: DataPlane, tls_backend: tuple[TLSEcho, Issued], backend_ca: CA
) -> None:
    echo, _ = tls_backend
    dataplane.apply(passthrough_snapshot(HOST, echo.port))
    got = await asyncio.to_thread(_fragmented_client, dataplane.https_port, backend_ca.cert_pem, False, True)
    assert got == b"fragmented ok"
    assert echo.records[-1].sni == HOST


async def test_client_hello_across_two_records_routes(
    dataplane: DataPlane, tls_backend: tuple[TLSEcho, Issued], backend_ca: CA
) -> None:
    echo, _ = tls_backend
    dataplane.apply(passthrough_snapshot(HOST, echo.port))
    got = await asyncio.to_thread(_fragmented_client, dataplane.https_port, backend_ca.cert_pem, True, False)
    assert got == b"fragmented ok"
    got = await asyncio.to_thread(_fragmented_client, dataplane.https_port, backend_ca.cert_pem, True, True)
    assert got == b"fragmented ok"
    assert all(r.sni == HOST for r in echo.records)


async def test_proxy_protocol_v1_carries_client_address(
    dataplane: DataPlane, tls_backend: tuple[TLSEcho, Issued], backend_ca: CA
) -> None:
    echo, _ = tls_backend
    dataplane.apply(passthrough_snapshot(HOST, echo.port, proxy="v1"))
    reader, writer = await asyncio.open_connection("127.0.0.1", dataplane.https_port,
                                                   ssl=client_context(backend_ca.cert_pem), server_hostname=HOST)
    local = writer.get_extra_info("sockname")
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), 10) == b"x"
    writer.close()
    record = echo.records[-1]
    assert record.proxy is not None
    assert record.proxy.source == ("127.0.0.1", local[1])
    assert record.proxy.dest == ("127.0.0.1", dataplane.https_port)


async def test_proxy_protocol_v2_carries_client_address_and_sni(
    dataplane: DataPlane, tls_backend: tuple[TLSEcho, Issued], backend_ca: CA
) -> None:
    echo, _ = tls_backend
    dataplane.apply(passthrough_snapshot(HOST, echo.port, proxy="v2"))
    reader, writer = await asyncio.open_connection("127.0.0.1", dataplane.https_port,
                                                   ssl=client_context(backend_ca.cert_pem), server_hostname=HOST)
    local = writer.get_extra_info("sockname")
    writer.write(b"y")
    assert await asyncio.wait_for(reader.readexactly(1), 10) == b"y"
    writer.close()
    record = echo.records[-1]
    assert record.proxy is not None
    assert record.proxy.source == ("127.0.0.1", local[1])
    assert record.proxy.authority == HOST
    assert record.sni == HOST


async def test_no_endpoint_closes_and_counts(dataplane: DataPlane) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    dataplane.apply(passthrough_snapshot(HOST, dead))
    hello = real_client_hello(HOST)
    sock = await asyncio.to_thread(raw_connect, dataplane.https_port)
    try:
        sock.sendall(hello)
        assert await asyncio.to_thread(sock.recv, 100) == b""
    finally:
        sock.close()
    text = dataplane.metrics.render().decode()
    assert 'portcullis_passthrough_connections_total{result="connect_failed"} 1.0' in text
    assert "portcullis_upstream_failures_total" in text


async def test_half_close_keeps_the_other_direction(
    dataplane: DataPlane, backend_ca: CA
) -> None:
    """Plain TCP stand-in backend (the relay never looks past the ClientHello): reads to EOF, then answers."""
    received = bytearray()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read())  # until the client's FIN arrives through the relay
        writer.write(b"answer after eof")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        dataplane.apply(passthrough_snapshot(HOST, port))
        hello = real_client_hello(HOST)
        reader, writer = await asyncio.open_connection("127.0.0.1", dataplane.https_port)
        writer.write(hello + b"tail")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer == b"answer after eof"
        assert bytes(received) == hello + b"tail"
        writer.close()
    finally:
        server.close()


async def test_slow_reader_does_not_grow_memory(dataplane: DataPlane) -> None:
    """Backend floods; the client does not read. The edge must stop reading from the backend (flow control)."""
    sent = 0
    done = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.read(65536)
        chunk = b"z" * 65536
        try:
            while sent < 64 * 1024 * 1024:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 1.0)
                sent += len(chunk)
        except (TimeoutError, ConnectionError):
            pass
        done.set()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        dataplane.apply(passthrough_snapshot(HOST, port))
        sock = await asyncio.to_thread(raw_connect, dataplane.https_port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(real_client_hello(HOST))
        await asyncio.wait_for(done.wait(), 30)
        # Backend stalled long before 64 MiB: only socket buffers plus the edge's bounded buffer hold data.
        assert sent < 32 * 1024 * 1024
        sock.close()
    finally:
        server.close()


async def test_applies_never_close_a_live_passthrough_connection(
    dataplane: DataPlane, tls_backend: tuple[TLSEcho, Issued], backend_ca: CA, ca: CA
) -> None:
    echo, _ = tls_backend
    dataplane.apply(passthrough_snapshot(HOST, echo.port, generation=1))
    reader, writer = await asyncio.open_connection("127.0.0.1", dataplane.https_port,
                                                   ssl=client_context(backend_ca.cert_pem), server_hostname=HOST)
    writer.write(b"a")
    assert await asyncio.wait_for(reader.readexactly(1), 10) == b"a"
    assert dataplane.live_connections == 1
    # new generations: another endpoint list, PROXY on, and finally the host gone altogether
    assert dataplane.apply(passthrough_snapshot(HOST, echo.port, generation=2, proxy="v2")) == []
    assert dataplane.apply(passthrough_snapshot("other.example.com", echo.port, generation=3)) == []
    writer.write(b"still alive")
    assert await asyncio.wait_for(reader.readexactly(11), 10) == b"still alive"
    # a new connection to the removed host is not passed through any more: it gets the edge's fallback
    with pytest.raises(ssl.SSLCertVerificationError):
        await tls_roundtrip(dataplane.https_port, HOST, client_context(backend_ca.cert_pem))
    writer.close()
    await writer.wait_closed()
    gauge = 'portcullis_active_connections{listener="https",mode="passthrough"} 0.0'
    for _ in range(100):  # bounded wait for the relay to see both sides closed
        if dataplane.live_connections == 0 and gauge in dataplane.metrics.render().decode():
            break
        await asyncio.sleep(0.02)
    assert dataplane.live_connections == 0
    assert gauge in dataplane.metrics.render().decode()


async def test_many_concurrent_connections_all_route_and_all_close(
    dataplane: DataPlane, tls_backend: tuple[TLSEcho, Issued], backend_ca: CA
) -> None:
    echo, _ = tls_backend
    dataplane.apply(passthrough_snapshot(HOST, echo.port))
    ctx = client_context(backend_ca.cert_pem)

    async def one(i: int) -> bytes:
        data, _, _ = await tls_roundtrip(dataplane.https_port, HOST, ctx, f"message {i:04d}\n".encode())
        return data

    results = await asyncio.gather(*(one(i) for i in range(100)))
    assert results == [f"message {i:04d}\n".encode() for i in range(100)]
    for _ in range(200):
        if dataplane.live_connections == 0:
            break
        await asyncio.sleep(0.02)
    assert dataplane.live_connections == 0
    text = dataplane.metrics.render().decode()
    assert 'portcullis_passthrough_connections_total{result="routed"} 100.0' in text
    assert 'portcullis_client_hello_total{result="ok"} 100.0' in text
