"""The real engine behind the HTTPS listener: a client that negotiates h2 is served HTTP/2, one on a host that
opts out (``http2: False``) or one that offers only http/1.1 is served HTTP/1.1, and the plain HTTP port
stays HTTP/1.1 (no h2c). Real handshakes with Python's ssl and the h2 library's client."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import replace

import h2.config
import h2.connection
import h2.events

from dataplane.runtime import DataPlane
from dataplane.snapshot import Snapshot
from tests.integration.conftest import certificate, client_context, running_dataplane, terminate_host
from tests.pki import CA


def world(ca: CA) -> Snapshot:
    new, old = certificate(ca.issue("new.example.com"), "new.example.com"), \
        certificate(ca.issue("old.example.com"), "old.example.com")
    return Snapshot(generation=1, certificates=(new, old), tls_hosts=(
        terminate_host("new.example.com", new), replace(terminate_host("old.example.com", old), http2=False),
    )).canonical()


async def connect(dp: DataPlane, ca: CA, name: str, offer: list[str]) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, str | None]:
    ctx: ssl.SSLContext = client_context(ca.cert_pem, alpn=offer)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", dp.https_port, ssl=ctx, server_hostname=name), 10)
    return reader, writer, writer.get_extra_info("ssl_object").selected_alpn_protocol()


async def h2_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str) -> int:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", authority)],
                      end_stream=True)
    writer.write(conn.data_to_send())
    for _ in range(100):
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, "the server closed before answering"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                return int(dict(event.headers)[b":status"])
        writer.write(conn.data_to_send())
    raise AssertionError("no response in 100 reads")


async def http11_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> bytes:
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    return (await asyncio.wait_for(reader.readline(), 10)).split(b" ")[0]


async def test_alpn_selects_the_engine(ca: CA) -> None:
    async with running_dataplane() as dp:
        assert dp.apply(world(ca)) == []
        reader, writer, selected = await connect(dp, ca, "new.example.com", ["h2", "http/1.1"])
        assert selected == "h2"
        assert await h2_status(reader, writer, "new.example.com") == 404  # no route: the engine's own answer
        writer.close()

        reader, writer, selected = await connect(dp, ca, "old.example.com", ["h2", "http/1.1"])
        assert selected == "http/1.1"
        assert await http11_status(reader, writer, "old.example.com") == b"HTTP/1.1"
        writer.close()

        reader, writer, selected = await connect(dp, ca, "new.example.com", ["http/1.1"])
        assert selected == "http/1.1"
        assert await http11_status(reader, writer, "new.example.com") == b"HTTP/1.1"
        writer.close()

        # the cleartext port: an HTTP/2 preface is refused as a version it does not speak (no h2c)
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.http_port)
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"HTTP/1.1 505 HTTP Version Not Supported\r\n"
        writer.close()
        assert dp.metrics.registry.get_sample_value("portcullis_h2_connections_total") == 1
