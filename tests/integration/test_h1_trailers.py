"""Trailers from an HTTP/1.1 backend (a chunked response's trailer section) reach the client: an HTTP/2 client
(curl --http2, and the h2 library) as trailing HEADERS, an HTTP/1.1 client in the last chunk. The backend is a raw
asyncio server (few real servers send trailers), the data plane a real one with an offload host, the clients real.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, TrailersReceived

from dataplane.runtime import DataPlane
from dataplane.snapshot import Pool, Route, Snapshot, VirtualHost
from tests.integration.conftest import certificate, running_dataplane, terminate_host
from tests.integration.http_fixtures import RawBackend, start_raw
from tests.pki import CA

LOOPS = ("asyncio", "uvloop")
HOST = "app.test"
LOCAL = "127.0.0.1"
TRAILERS = [(b"x-checksum", b"abc123"), (b"server-timing", b"db;dur=53")]
# /trailers: two chunks, then the trailer section; anything else: a chunked body without trailers.
WITH_TRAILERS = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                 b"Trailer: X-Checksum, Server-Timing\r\n\r\n"
                 b"5\r\nhello\r\n7\r\n, world\r\n0\r\nX-Checksum: abc123\r\nServer-Timing:  db;dur=53 \r\n\r\n")
WITHOUT = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nplain\r\n0\r\n\r\n"


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: RawBackend) -> None:
    """Keep-alive HTTP/1.1: one canned response per request head (the proxy's requests here have no body)."""
    for _ in range(100):
        head = await reader.readuntil(b"\r\n\r\n")
        backend.received.append(head)
        writer.write(WITH_TRAILERS if head.split(b" ", 2)[1] == b"/trailers" else WITHOUT)
        await writer.drain()


@dataclass
class Rig:
    dp: DataPlane
    backend: RawBackend
    ca: CA
    ca_file: Path


@pytest.fixture
async def rig(ca: CA, tmp_path: Path) -> AsyncIterator[Rig]:
    backend = await start_raw(serve)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.cert_pem)
    cert = certificate(ca.issue(HOST), HOST)
    pool = Pool("demo/web:80", (backend.endpoint,))
    snap = Snapshot(generation=1, certificates=(cert,), pools=(pool,), tls_hosts=(terminate_host(HOST, cert),),
                    virtual_hosts=(VirtualHost(HOST, (Route("/", "Prefix", pool.id),), tls=True),)).canonical()
    try:
        async with running_dataplane(drain_timeout=0.5) as dp:
            assert dp.apply(snap) == []
            yield Rig(dp, backend, ca, ca_file)
    finally:
        backend.close()


async def curl_h2(rig: Rig, path: str, headers_file: Path) -> tuple[str, str]:
    """curl --http2: (body, HTTP version); the response headers and, after them, the trailers go to ``headers_file``."""
    port = rig.dp.https_port
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--http2", "--max-time", "20", "--cacert", str(rig.ca_file), "-D", str(headers_file),
        "--resolve", f"{HOST}:{port}:{LOCAL}", "-w", "\n%{http_version}", f"https://{HOST}:{port}{path}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    body, _, version = out.decode().rpartition("\n")
    return body, version


async def test_curl_http2_sees_the_backends_trailers(rig: Rig, tmp_path: Path) -> None:
    dump = tmp_path / "headers.txt"
    body, version = await curl_h2(rig, "/trailers", dump)
    assert (body, version) == ("hello, world", "2")
    lines = [line.strip() for line in dump.read_text().splitlines()]
    blank = lines.index("")  # the response headers, a blank line, then what curl read as trailers
    head, trailers = lines[:blank], [line for line in lines[blank + 1:] if line]
    assert head[0] == "HTTP/2 200" and not any(h.lower().startswith("trailer:") for h in head), lines
    assert trailers == ["x-checksum: abc123", "server-timing: db;dur=53"], lines


async def h2_get(rig: Rig, paths: list[str]) -> list[tuple[dict[bytes, bytes], bytes, list[tuple[bytes, bytes]]]]:
    """GETs on one HTTP/2 connection (h2 library): per path (response headers, body, trailers)."""
    ctx = ssl.create_default_context(cadata=rig.ca.cert_pem)
    ctx.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(LOCAL, rig.dp.https_port, ssl=ctx, server_hostname=HOST), 10)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    got: dict[int, tuple[dict[bytes, bytes], bytearray, list[tuple[bytes, bytes]]]] = {}
    for path in paths:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", HOST.encode()),
                                (b":path", path.encode())], end_stream=True)
        got[sid] = ({}, bytearray(), [])
    writer.write(conn.data_to_send())
    ended: set[int] = set()
    try:
        async with asyncio.timeout(20):
            while len(ended) < len(paths):
                data = await reader.read(65536)
                assert data, "the connection closed early"
                for ev in conn.receive_data(data):
                    if isinstance(ev, ResponseReceived):
                        got[ev.stream_id or 0][0].update(ev.headers or [])
                    elif isinstance(ev, DataReceived):
                        got[ev.stream_id or 0][1].extend(ev.data or b"")
                        conn.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id or 0)
                    elif isinstance(ev, TrailersReceived):
                        got[ev.stream_id or 0][2].extend((bytes(n), bytes(v)) for n, v in ev.headers or [])
                    elif isinstance(ev, StreamEnded):
                        ended.add(ev.stream_id or 0)
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    return [(h, bytes(b), t) for h, b, t in got.values()]


async def test_h2_client_gets_trailing_headers_and_the_backend_connection_is_reused(rig: Rig) -> None:
    answers = await h2_get(rig, ["/trailers", "/plain"])  # two streams at once: two backend connections
    (head, body, trailers), (head2, body2, trailers2) = answers
    assert head[b":status"] == b"200" and b"trailer" not in head and body == b"hello, world"
    assert trailers == TRAILERS
    assert (head2[b":status"], body2, trailers2) == (b"200", b"plain", [])
    for _ in range(2):  # one after another: each on an idle backend connection, after trailers too
        assert (await h2_get(rig, ["/trailers"]))[0][1:] == (b"hello, world", TRAILERS)
    assert len(rig.backend.received) == 4 and rig.backend.connections == 2  # trailers end a reusable response


async def test_http11_client_gets_them_in_the_last_chunk(rig: Rig) -> None:
    ctx = ssl.create_default_context(cadata=rig.ca.cert_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(LOCAL, rig.dp.https_port, ssl=ctx, server_hostname=HOST), 10)
    try:
        writer.write(b"GET /trailers HTTP/1.1\r\nHost: app.test\r\nTE: trailers\r\n\r\n"
                     b"GET /plain HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        out = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    first, _, rest = out.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in first.lower() and b"\r\ntrailer:" not in first.lower(), first
    assert rest.startswith(b"5\r\nhello\r\n7\r\n, world\r\n0\r\nx-checksum: abc123\r\nserver-timing: db;dur=53\r\n"
                           b"\r\nHTTP/1.1 200"), rest
    assert rest.endswith(b"\r\n\r\n5\r\nplain\r\n0\r\n\r\n"), rest  # no trailers: the plain last chunk
