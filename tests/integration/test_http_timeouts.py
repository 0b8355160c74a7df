"""The HTTP engine's timeouts on a virtual clock, over real sockets with real clients: client send, client
body (with a trickle that keeps a request alive), upgraded-connection silence, idle keep-alive and an
unfinished head, and on the backend side send, read and connect (a TLS handshake never answered).

Each timeout is tens of seconds and the test moves the loop's clock (``tests/virtual_clock.py``), so it
shows both that nothing fired a moment before the deadline and that it fired just after, in no real
time. asyncio's loop only: uvloop's clock cannot be moved (the other lifetime tests run on both).
"""

from __future__ import annotations

import asyncio

import aiohttp

from dataplane.http.connection import HTTPProtocol
from dataplane.http.settings import HTTPSettings
from dataplane.snapshot import UpstreamTLS
from tests.integration.http_fixtures import (
    LOCAL,
    Client,
    RawBackend,
    eof_or_reset,
    pool,
    proxy,
    read_response,
    snapshot,
    start_echo,
    start_raw,
    vhost,
)
from tests.virtual_clock import virtual_clock
from tests.waiting import eventually

TIMEOUTS = "portcullis_http_timeouts_total"


class Seen:
    """What the proxy's client connections were told by their transports, recorded after the protocol
    handled it: a read, and a write buffer past its high-water mark (the moment a send timeout starts
    counting). The evidence a test waits on before it moves the clock, so a timer it means to test is
    armed at a known time."""

    def __init__(self) -> None:
        self.readers: set[HTTPProtocol] = set()  # connections with a read handled
        self.client: list[HTTPProtocol] = []  # its write buffer to the client
        self.upstream: list[HTTPProtocol] = []  # its write buffer to the backend

    def watch(self, proto: HTTPProtocol) -> None:
        data_received, pause_writing = proto.data_received, proto.pause_writing
        upstream_pause_writing = proto.upstream_pause_writing

        def read(data: bytes) -> None:
            data_received(data)
            self.readers.add(proto)

        def client_full() -> None:
            pause_writing()
            self.client.append(proto)

        def upstream_full() -> None:
            upstream_pause_writing()
            self.upstream.append(proto)

        proto.data_received = read  # type: ignore[method-assign]
        proto.pause_writing = client_full  # type: ignore[method-assign]
        proto.upstream_pause_writing = upstream_full  # type: ignore[method-assign]


async def test_client_send_timeout_closes_both_sides_others_served() -> None:
    backend = await start_echo()
    seen = Seen()
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", backend.endpoint)])
    with virtual_clock() as clock:
        async with proxy(snap, settings=HTTPSettings(client_send_timeout=30.0), on_protocol=seen.watch) as px:
            stuck = []
            for _ in range(3):  # clients that ask for 16 MiB and read nothing
                reader, writer = await asyncio.open_connection(LOCAL, px.port, limit=1 << 16)
                writer.transport.set_write_buffer_limits(0)
                writer.write(b"GET /bytes/16777216 HTTP/1.1\r\nHost: app.test\r\n\r\n")
                stuck.append((reader, writer))
                reader._transport.pause_reading()  # type: ignore[attr-defined]
            other = await Client.open(px.port)
            assert (await other.get("/meanwhile")).status == 200
            await eventually(lambda: len(seen.client) == 3, what="three stalled clients")
            await clock.advance(25)
            assert px.metric(TIMEOUTS, reason="client_send") == 0  # stalled, but not for the whole timeout yet
            assert (await other.get("/during")).status == 200
            await clock.advance(10)
            assert px.metric(TIMEOUTS, reason="client_send") == 3
            assert (await other.get("/after")).status == 200
            for reader, writer in stuck:
                reader._transport.resume_reading()  # type: ignore[attr-defined]
                assert await eof_or_reset(reader)
                writer.close()
            await other.close()
    backend.close()


async def count_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: RawBackend) -> None:
    """Answers one request with the number of body bytes it got, recording each piece as it arrives."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    got = 0
    while got < length:
        piece = await reader.read(length - got)
        if not piece:
            return
        got += len(piece)
        backend.received.append(piece)
    answer = b"%d" % got
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(answer), answer))


async def test_client_body_timeout_408_and_trickle() -> None:
    backend = await start_raw(count_body)
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", backend.endpoint)])
    with virtual_clock() as clock:
        async with proxy(snap, settings=HTTPSettings(client_body_timeout=30.0)) as px:
            client = await Client.open(px.port)
            await client.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n")
            for sent in range(1, 5):  # a byte every 20 s keeps the request alive well past 30 s
                await client.send(b"x")
                # the backend's read is the evidence that the proxy has seen the byte
                await eventually(lambda: sum(map(len, backend.received)) >= sent, what=f"byte {sent}")  # noqa: B023
                await clock.advance(20)
                assert px.metric(TIMEOUTS, reason="client_body") == 0
            await clock.advance(15)  # 35 s since the last byte
            assert px.metric(TIMEOUTS, reason="client_body") == 1
            r = await read_response(client.reader)
            assert r.status == 408 and r.header("connection") == "close"
            assert await client.closed()
            ok = await Client.open(px.port)
            await ok.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc")
            assert (await ok.response()).body == b"3"
            await ok.close()
    backend.close()


async def test_upgrade_idle_timeout() -> None:
    backend = await start_echo()
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", backend.endpoint)])
    with virtual_clock() as clock:
        async with proxy(snap, settings=HTTPSettings(upgrade_idle_timeout=30.0)) as px, \
                aiohttp.ClientSession() as session, session.ws_connect(
                    f"http://{LOCAL}:{px.port}/ws", headers={"Host": "app.test"}, autoping=False, heartbeat=None
                ) as ws:
            for i in range(3):  # traffic every 20 s keeps it open well past 30 s
                await ws.send_str(f"m{i}")
                assert (await ws.receive(timeout=5)).data == f"echo:m{i}"  # it went both ways through the proxy
                await clock.advance(20)
                assert px.metric(TIMEOUTS, reason="upgrade_idle") == 0
            await clock.advance(15)  # 35 s of silence both ways
            assert px.metric(TIMEOUTS, reason="upgrade_idle") == 1
            msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    backend.close()


async def test_upstream_send_timeout_504() -> None:
    stop = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: RawBackend) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await stop.wait()  # reads nothing more: the request body backs up

    backend = await start_raw(script)
    seen = Seen()
    settings = HTTPSettings(max_body_size=0, max_body_buffer=64 * 1024)
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", backend.endpoint, send_timeout=30.0)])
    with virtual_clock() as clock:
        async with proxy(snap, settings=settings, on_protocol=seen.watch) as px:
            client = await Client.open(px.port)
            total = 64 * 1024 * 1024
            client.writer.write(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % total)
            upload = asyncio.create_task(_upload(client, total))
            await eventually(lambda: seen.upstream, what="the backend's write buffer full")
            await clock.advance(25)
            assert px.metric(TIMEOUTS, reason="upstream_send") == 0
            await clock.advance(10)
            assert px.metric(TIMEOUTS, reason="upstream_send") == 1
            r = await read_response(client.reader)
            assert r.status == 504
            upload.cancel()
            await asyncio.gather(upload, return_exceptions=True)
            await client.close()
    stop.set()
    backend.close()


async def _upload(client: Client, total: int) -> None:
    piece = b"x" * (1 << 20)
    for _ in range(total // len(piece)):
        await client.send(piece)


async def test_idle_client_connection_closed() -> None:
    backend = await start_echo()
    seen = Seen()
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", backend.endpoint)])
    settings = HTTPSettings(keepalive_timeout=30.0, header_timeout=30.0)
    with virtual_clock() as clock:
        async with proxy(snap, settings=settings, on_protocol=seen.watch) as px:
            client = await Client.open(px.port)
            assert (await client.get("/")).status == 200  # idle from here
            slow = await Client.open(px.port)
            await slow.send(b"GET / HTTP/1.1\r\n")  # never finishes its head
            await eventually(lambda: len(seen.readers) == 2, what="the unfinished head read")
            await clock.advance(25)
            assert px.metric(TIMEOUTS, reason="client_header") == 0
            assert (await client.get("/again")).status == 200  # still open 25 s into its idleness; idle anew
            await clock.advance(35)
            assert px.metric(TIMEOUTS, reason="client_header") == 1
            assert await client.closed()
            assert await slow.closed()
    backend.close()


async def test_504_on_slow_backend() -> None:
    backend = await start_echo()
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", backend.endpoint, read_timeout=30.0)])
    with virtual_clock() as clock:
        async with proxy(snap) as px:
            client = await Client.open(px.port)
            await client.send(b"GET /slow/3600 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            await eventually(lambda: backend.requests, what="the request at the backend")
            await clock.advance(25)
            assert px.metric("portcullis_upstream_failures_total", pool="p", reason="read_timeout") == 0
            await clock.advance(10)
            r = await client.response()
            assert r.status == 504 and b"timed out" in r.body
            assert px.metric("portcullis_upstream_failures_total", pool="p", reason="read_timeout") == 1
            client2 = await Client.open(px.port)
            assert (await client2.get("/fast")).status == 200
            await client.close()
            await client2.close()
    backend.close()


async def test_504_on_connect_timeout_tls_handshake_never_answered() -> None:
    """A backend that accepts TCP but never speaks TLS: the connect (handshake) times out -> 504."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: RawBackend) -> None:
        backend.received.append(await reader.read(1))  # the ClientHello's first byte: the handshake started
        await reader.read()  # swallow the rest, answer nothing, until the proxy gives up

    backend = await start_raw(script)
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))],
                    [pool("p", backend.endpoint, tls=UpstreamTLS("x.svc"), connect_timeout=30.0)])
    with virtual_clock() as clock:
        async with proxy(snap) as px:
            client = await Client.open(px.port)
            await client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            await eventually(lambda: backend.received, what="a ClientHello at the backend")
            await clock.advance(25)
            assert px.metric("portcullis_upstream_failures_total", pool="p", reason="connect_timeout") == 0
            await clock.advance(10)
            r = await client.response()
            assert r.status == 504 and b"connect timed out" in r.body
            assert px.metric("portcullis_upstream_failures_total", pool="p", reason="connect_timeout") == 1
            await client.close()
    backend.close()
