"""HTTP/2 clients through a full data plane: curl --http2 (offload, reencrypt, a row without h2), the h2
library as a browser-like client (100 multiplexed streams, a small receive window, coalescing, client
certificates), and a drain that finishes open streams. Real TLS, real sockets, real aiohttp backends."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import ConnectionTerminated, DataReceived, ResponseReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes

from dataplane import pem
from dataplane.runtime import DataPlane
from dataplane.snapshot import CABundle, ClientAuth, Endpoint, Pool, Route, Snapshot, TLSHost, UpstreamTLS, VirtualHost
from tests.integration.conftest import certificate, running_dataplane
from tests.integration.http_fixtures import EchoBackend, _pattern, server_context, start_echo
from tests.pki import CA, Issued

LOOPS = ("asyncio", "uvloop")
LOCAL = "127.0.0.1"


@dataclass
class World:
    dp: DataPlane
    plain: EchoBackend
    secure: EchoBackend
    ca: CA
    ca_file: Path
    alice: Issued


def h2_snapshot(ca: CA, backend_ca: CA, plain: int, secure: int) -> Snapshot:
    # One certificate for every name: an h2 client may reuse a connection for any of them (RFC 9113 9.1.1).
    cert = certificate(ca.issue("app.test", "bridge.test", "auth.test", "old.test"), "app.test")
    bca = CABundle(f"ca-{backend_ca.cert_pem[-60:-30]}", backend_ca.cert_pem)
    cca = CABundle(f"ca-{ca.cert_pem[-60:-30]}", ca.cert_pem)
    web = Pool("demo/web:80", (Endpoint(LOCAL, plain),))
    sweb = Pool("demo/secure:443", (Endpoint(LOCAL, secure),), tls=UpstreamTLS("secure.demo.svc", bca.id))
    return Snapshot(
        generation=1,
        certificates=(cert,),
        ca_bundles=(bca, cca),
        pools=(web, sweb),
        tls_hosts=(
            TLSHost("app.test", "terminate", cert.id),
            TLSHost("bridge.test", "terminate", cert.id),
            TLSHost("auth.test", "terminate", cert.id, client_auth=ClientAuth(cca.id, "optional",
                                                                              forward_headers=True)),
            TLSHost("old.test", "terminate", cert.id, http2=False),
        ),
        virtual_hosts=(
            VirtualHost("app.test", (Route("/", "Prefix", web.id),), tls=True, hsts="max-age=31536000"),
            VirtualHost("bridge.test", (Route("/", "Prefix", sweb.id),), tls=True),
            VirtualHost("auth.test", (Route("/", "Prefix", web.id),), tls=True),
            VirtualHost("old.test", (Route("/", "Prefix", web.id),), tls=True),
        ),
    ).canonical()


@pytest.fixture
async def world(ca: CA, backend_ca: CA, tmp_path: Path) -> AsyncIterator[World]:
    plain = await start_echo()
    secure = await start_echo(server_context(backend_ca.issue("secure.demo.svc")))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.cert_pem)
    try:
        async with running_dataplane(drain_timeout=5) as dp:
            assert not dp.apply(h2_snapshot(ca, backend_ca, plain.port, secure.port))
            yield World(dp, plain, secure, ca, ca_file, ca.issue(client=True, common_name="alice"))
    finally:
        plain.close()
        secure.close()


async def curl(world: World, host: str, path: str, *args: str) -> tuple[str, str]:
    """curl over HTTP/2 (when offered): (response head and body, the HTTP version curl used)."""
    port = world.dp.https_port
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-i", "--http2", "--path-as-is", "--max-time", "20", "--cacert", str(world.ca_file),
        "--resolve", f"{host}:{port}:{LOCAL}", "-w", "\n%{http_version}", *args, f"https://{host}:{port}{path}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    text, _, version = out.decode("latin-1").rpartition("\n")
    return text, version


def forwarded(record: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


async def test_curl_http2_offload(world: World) -> None:
    text, version = await curl(world, "app.test", "/a/../b?x=1")
    assert version == "2" and text.startswith("HTTP/2 200")
    assert "strict-transport-security: max-age=31536000" in text.lower()
    record = json.loads(text.partition("\r\n\r\n")[2])
    assert record["path"] == "/b?x=1"  # normalised by the engine, as for HTTP/1.1
    assert forwarded(record, "X-Forwarded-Proto") == ["https"]
    assert forwarded(record, "Host") == [f"app.test:{world.dp.https_port}"]
    assert record["version"] == "1.1"  # forwarded as HTTP/1.1


async def test_curl_http2_reencrypt(world: World) -> None:
    text, version = await curl(world, "bridge.test", "/bytes/100000")
    assert version == "2" and text.startswith("HTTP/2 200")
    body = text.encode("latin-1").partition(b"\r\n\r\n")[2]
    assert body == _pattern(100000)
    assert world.secure.requests and world.secure.requests[-1]["path"] == "/bytes/100000"


async def test_row_without_http2_negotiates_http11(world: World) -> None:
    text, version = await curl(world, "old.test", "/")
    assert version == "1.1" and text.startswith("HTTP/1.1 200")


# --- the h2 library as a client -----------------------------------------------------------------


@dataclass
class Stream:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None


class H2Client:
    """A minimal asyncio HTTP/2 client over TLS: many streams at once, the receive window under control."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, window: int) -> None:
        self.reader, self.writer = reader, writer
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, Stream] = {}
        self.goaway: int | None = None
        self.conn.initiate_connection()
        if window != 65535:
            self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.writer.write(self.conn.data_to_send())

    @classmethod
    async def open(cls, port: int, host: str, ca: CA, cert: Issued | None = None, window: int = 65535) -> H2Client:
        ctx = ssl.create_default_context(cadata=ca.cert_pem)
        ctx.set_alpn_protocols(["h2"])
        if cert is not None:
            pem.load_key_pair(ctx, cert.cert_pem, cert.key_pem)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOCAL, port, ssl=ctx, server_hostname=host), 10)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        return cls(reader, writer, window)

    def request(self, authority: str, path: str, method: bytes = b"GET") -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(b":method", method), (b":scheme", b"https"),
                                     (b":authority", authority.encode()), (b":path", path.encode())], end_stream=True)
        self.streams[sid] = Stream()
        self.writer.write(self.conn.data_to_send())
        return sid

    async def run(self, until: Any, timeout: float = 20.0) -> None:
        """Read and handle frames until ``until()`` holds (bounded by ``timeout``)."""
        async with asyncio.timeout(timeout):
            while not until():
                data = await self.reader.read(65536)
                if not data:
                    return
                for ev in self.conn.receive_data(data):
                    st = self.streams.get(getattr(ev, "stream_id", 0) or 0)
                    if isinstance(ev, ResponseReceived) and st is not None:
                        st.headers = dict(ev.headers or [])
                    elif isinstance(ev, DataReceived) and st is not None:
                        st.body += ev.data or b""
                        self.conn.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id or 0)
                    elif isinstance(ev, StreamEnded) and st is not None:
                        st.ended = True
                    elif isinstance(ev, StreamReset) and st is not None:
                        st.reset = int(ev.error_code or 0)
                    elif isinstance(ev, ConnectionTerminated):
                        self.goaway = int(ev.error_code or 0)
                        if not self.goaway:  # graceful: h2 would refuse the open streams' frames; a browser reads on
                            self.conn.state_machine.state = ConnectionState.CLIENT_OPEN
                self.writer.write(self.conn.data_to_send())

    def done(self) -> bool:
        return all(st.ended or st.reset is not None for st in self.streams.values())


async def test_one_hundred_concurrent_streams_on_one_connection(world: World) -> None:
    client = await H2Client.open(world.dp.https_port, "app.test", world.ca)
    sizes = {client.request("app.test", f"/bytes/{1000 + 397 * i}"): 1000 + 397 * i for i in range(100)}
    await client.run(client.done)
    for sid, size in sizes.items():
        st = client.streams[sid]
        assert st.ended and st.headers[b":status"] == b"200", (sid, st.reset)
        assert bytes(st.body) == _pattern(size)
    assert world.plain.connections <= 100 and len(world.plain.requests) == 100
    client.writer.close()


async def test_large_response_with_a_small_client_window(world: World) -> None:
    client = await H2Client.open(world.dp.https_port, "app.test", world.ca, window=4096)
    sid = client.request("app.test", "/chunked/2097152")
    await client.run(client.done, timeout=60)
    st = client.streams[sid]
    assert st.headers[b":status"] == b"200" and st.ended
    assert bytes(st.body) == _pattern(2 * 1024 * 1024)
    client.writer.close()


async def test_coalesced_request_for_a_client_auth_host_is_misdirected(world: World) -> None:
    client = await H2Client.open(world.dp.https_port, "app.test", world.ca)  # same certificate covers auth.test
    sid = client.request("auth.test", "/coalesced")  # auth.test has client auth: its own handshake needed
    await client.run(client.done)
    assert client.streams[sid].headers[b":status"] == b"421"
    assert all(r["path"] != "/coalesced" for r in world.plain.requests)
    ok = client.request("app.test", "/after")  # the connection still serves its own host
    await client.run(client.done)
    assert client.streams[ok].headers[b":status"] == b"200"
    client.writer.close()


async def test_client_certificate_headers_over_h2(world: World) -> None:
    client = await H2Client.open(world.dp.https_port, "auth.test", world.ca, cert=world.alice)
    sid = client.request("auth.test", "/who")
    await client.run(client.done)
    st = client.streams[sid]
    assert st.headers[b":status"] == b"200"
    record = json.loads(bytes(st.body))
    assert forwarded(record, "ssl-client-verify") == ["SUCCESS"]
    assert forwarded(record, "ssl-client-subject-dn") == ["CN=alice"]
    client.writer.close()


async def test_drain_sends_goaway_and_lets_the_open_stream_finish(world: World) -> None:
    client = await H2Client.open(world.dp.https_port, "app.test", world.ca)
    sid = client.request("app.test", "/slow/0.5")
    for _ in range(500):  # until the backend has the request
        if world.plain.requests:
            break
        await asyncio.sleep(0.01)
    assert world.plain.requests
    stop = asyncio.create_task(world.dp.stop(drain_timeout=5))
    await client.run(lambda: client.done() and client.goaway is not None)
    assert client.goaway == 0  # GOAWAY NO_ERROR, before the response
    st = client.streams[sid]
    assert st.ended and st.headers[b":status"] == b"200"
    await asyncio.wait_for(stop, 10)
    assert await client.reader.read() == b""  # then the close
    client.writer.close()
