"""The HTTP engine over real sockets: real backends (aiohttp and raw scripts), real clients (raw, aiohttp, curl)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json

import aiohttp
import pytest

from dataplane.http.settings import HTTPSettings
from tests.integration.http_fixtures import (
    LOCAL,
    Client,
    RawBackend,
    _pattern,
    forwarded,
    free_port,
    pool,
    proxy,
    read_response,
    snapshot,
    start_echo,
    start_raw,
    vhost,
)

LOOPS = ("asyncio", "uvloop")  # production runs uvloop, whose transports differ in detail

async def simple_snapshot(*backends: object, **pool_kw: object):  # type: ignore[no-untyped-def]
    eps = [b.endpoint for b in backends]  # type: ignore[attr-defined]
    return snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", *eps, **pool_kw)])


async def test_keepalive_reuse_on_both_sides() -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        for i in range(5):
            r = await client.get(f"/n/{i}")
            assert r.status == 200 and r.json()["path"] == f"/n/{i}"
        await client.close()
        other = await Client.open(px.port)  # a second client reuses the pooled upstream connection
        assert (await other.get("/again")).status == 200
        await other.close()
        assert backend.connections == 1
        assert px.table.upstreams["p"].connects == 1
        assert len(backend.requests) == 6
        assert px.metric("portcullis_http_requests_total", host="app.test", code_class="2xx") == 6
    backend.close()


async def test_forwarding_headers_set_and_spoofs_stripped() -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        r = await client.get("/h", extra=(
            "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n"
            "X-Forwarded-Port: 1\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nssl-client-verify: SUCCESS\r\n"
            "ssl-client-subject-dn: CN=admin\r\nX-Request-ID: trace-42\r\nConnection: X-Drop\r\nX-Drop: 1\r\n"
        ))
        record = r.json()
        assert forwarded(record, "X-Forwarded-For") == ["127.0.0.1"]
        assert forwarded(record, "X-Real-IP") == ["127.0.0.1"]
        assert forwarded(record, "X-Forwarded-Proto") == ["http"]
        assert forwarded(record, "X-Forwarded-Host") == ["app.test"]
        assert forwarded(record, "X-Forwarded-Port") == [str(px.port)]
        assert forwarded(record, "X-Request-ID") == ["trace-42"]
        for name in ("Forwarded", "ssl-client-verify", "ssl-client-subject-dn", "X-Drop"):
            assert forwarded(record, name) == [], name
        r = await client.get("/h", extra="X-Request-ID: bad value with spaces\r\n")
        ids = forwarded(r.json(), "X-Request-ID")
        assert len(ids) == 1 and len(ids[0]) == 32
        await client.close()
    backend.close()


async def test_request_bodies_streamed_content_length_and_chunked() -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend), settings=HTTPSettings(max_body_size=0)) as px:  # no limit
        client = await Client.open(px.port)
        body = _pattern(5 * 1024 * 1024 + 17)
        await client.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        record = (await client.response()).json()
        assert record["body_len"] == len(body) and record["body_sha256"] == hashlib.sha256(body).hexdigest()
        # chunked upload in uneven pieces, split across writes
        await client.send(b"POST /chunked-up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = bytearray()
        for size in (1, 100, 65536, 1_000_000, 3):
            piece = _pattern(size)
            sent += piece
            wire = b"%x\r\n%b\r\n" % (size, piece)
            await client.send(wire[: len(wire) // 2])
            await client.send(wire[len(wire) // 2:])
        await client.send(b"0\r\nX-Trailer: dropped\r\n\r\n")
        record = (await client.response()).json()
        assert record["body_len"] == len(sent) and record["body_sha256"] == hashlib.sha256(sent).hexdigest()
        assert forwarded(record, "Transfer-Encoding") == ["chunked"]
        await client.close()
    backend.close()


async def test_response_bodies_large_length_and_chunked() -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        r = await client.get("/bytes/6000000")
        assert r.header("Content-Length") == "6000000" and r.body == _pattern(6_000_000)
        r = await client.get("/chunked/3000001")
        assert r.header("Transfer-Encoding") == "chunked" and r.body == _pattern(3_000_001)
        r = await client.get("/bytes/10", method="HEAD")
        assert r.status == 200 and r.header("Content-Length") == "10"
        r = await client.get("/status/204")
        assert r.status == 204
        r = await client.get("/after")  # the connection is still in step after all of the above
        assert r.json()["path"] == "/after"
        await client.close()
        assert backend.connections == 1
    backend.close()


async def test_http10_client_gets_close_delimited_body() -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        await client.send(b"GET /chunked/1000 HTTP/1.0\r\nHost: app.test\r\n\r\n")
        r = await client.response()
        assert r.body == _pattern(1000) and r.header("Transfer-Encoding") is None
        assert await client.closed()
    backend.close()


async def test_flow_control_bounds_buffers() -> None:
    """A backend that does not read: the proxy stops reading the client instead of buffering the upload."""
    release = asyncio.Event()
    total = 20 * 1024 * 1024

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: RawBackend) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()
        got = 0
        while got < total:
            got += len(await reader.read(1 << 20))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(got)), got))
        await writer.drain()

    backend = await start_raw(script)
    settings = HTTPSettings(max_body_buffer=128 * 1024, max_body_size=0)
    protocols: list[object] = []
    async with proxy(await simple_snapshot(backend), settings=settings, on_protocol=protocols.append) as px:
        client = await Client.open(px.port)
        upload = asyncio.create_task(client.send(
            b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % total + b"x" * total
        ))
        peak = 0
        for _ in range(40):  # sample while the backend is not reading
            await asyncio.sleep(0.025)
            proto = protocols[0]
            peak = max(peak, len(proto._buf))  # type: ignore[attr-defined]
            assert not upload.done()
        assert peak <= settings.max_body_buffer + 1024 * 1024  # one read of slack, never the whole upload
        release.set()
        await asyncio.wait_for(upload, 30)
        r = await client.response()
        assert r.status == 200 and r.body == str(total).encode()
        await client.close()
    backend.close()


SMUGGLING = [
    b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:\tchunked\r\nX: a\r\n b\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: app.test\nContent-Length: 40\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
]


@pytest.mark.parametrize("attack", SMUGGLING)
async def test_smuggling_vectors_refused(attack: bytes) -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        await client.send(attack + b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n")
        r = await client.response()
        assert r.status == 400
        assert r.header("Connection") == "close"
        assert await client.closed()
        await asyncio.sleep(0.05)
        assert len(backend.requests) <= 1
        assert not any(rec["path"] == "/smuggled" for rec in backend.requests)
    backend.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: app.test\r\n\r\n", 414),
        (b"GET /" + b"a" * 9000, 414),  # no end of line yet
        (b"GET / HTTP/1.1\r\nHost: app.test\r\n" + b"X-Big: " + b"b" * 40000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: app.test\r\n" + b"X-Many: 1\r\n" * 4000, 431),  # never ends
    ],
)
async def test_limits(request_bytes: bytes, status: int) -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        await client.send(request_bytes)
        assert (await client.response()).status == status
        assert await client.closed()
        assert backend.requests == []
    backend.close()


async def test_pipelined_requests_answered_in_order() -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        await client.send(b"".join(
            b"GET /p/%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % i for i in range(3)
        ) + b"POST /p/3 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc"
          + b"GET /p/4 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        paths = [(await client.response()).json()["path"] for _ in range(5)]
        assert paths == [f"/p/{i}" for i in range(5)]
        assert backend.requests[3]["body_len"] == 3
        await client.close()
    backend.close()


async def test_pipelined_request_reaches_the_backend_only_after_the_previous_response() -> None:
    """The order above would hold even if the proxy forwarded all requests at once (the echo backend
    answers in order): here the backend sends half of response N, the client receives that half through
    the proxy, and only then does the backend look for request N+1 bytes; none may have arrived."""
    early: list[bytes] = []
    halves = [asyncio.Event() for _ in range(3)]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: RawBackend) -> None:
        for half in halves:
            head = await reader.readuntil(b"\r\n\r\n")
            backend.received.append(head.partition(b"\r\n")[0])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            await writer.drain()
            await half.wait()  # the client holds the first half: the proxy is inside response N
            with contextlib.suppress(TimeoutError):  # request N+1 must not be here yet
                early.append(await asyncio.wait_for(reader.read(1), 0.3))
            writer.write(b"cd")
            await writer.drain()

    backend = await start_raw(script)
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        await client.send(b"".join(b"GET /p/%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % i for i in range(3)))
        for half in halves:
            head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert await asyncio.wait_for(client.reader.readexactly(2), 10) == b"ab"
            half.set()
            assert await asyncio.wait_for(client.reader.readexactly(2), 10) == b"cd"
        assert early == []
        assert backend.received == [b"GET /p/%d HTTP/1.1" % i for i in range(3)]
        assert backend.connections == 1
        await client.close()
    backend.close()


async def test_502_503_and_retry_to_second_endpoint() -> None:
    backend = await start_echo()
    refused = free_port()
    from dataplane.snapshot import Endpoint

    snap = snapshot(
        [vhost("app.test", ("/", "Prefix", "p"), ("/dead", "Prefix", "dead"), ("/empty", "Prefix", "empty"))],
        [pool("p", Endpoint(LOCAL, refused), backend.endpoint), pool("dead", Endpoint(LOCAL, refused)),
         pool("empty")],
    )
    async with proxy(snap) as px:
        client = await Client.open(px.port)
        for _ in range(4):
            assert (await client.get("/ok")).status == 200  # the refused endpoint is skipped (retry)
        assert px.metric("portcullis_upstream_failures_total", pool="p", reason="connect_refused") >= 1
        r = await client.get("/dead")
        assert r.status == 502 and b"refused" in r.body
        r = await Client.open(px.port)
        resp = await r.get("/empty")
        assert resp.status == 503 and b"no ready endpoint" in resp.body
        assert px.metric("portcullis_http_requests_total", host="app.test", code_class="5xx") == 2
        await client.close()
        await r.close()
    backend.close()


async def test_stale_pooled_connection_retried_once_for_idempotent() -> None:
    """The backend drops a kept-alive connection exactly when the next request arrives on it."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: RawBackend) -> None:
        conn_no = backend.connections
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            backend.received.append(head)
            if conn_no == 1 and len(backend.received) > 1:
                return  # close without answering
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    backend = await start_raw(script)
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        assert (await client.get("/1")).status == 200
        r = await client.get("/2")
        assert r.status == 200 and r.body == b"ok"
        assert backend.connections == 2
        await client.close()
    backend.close()

    backend = await start_raw(script)
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        assert (await client.get("/1")).status == 200
        r = await client.get("/2", method="POST", extra="Content-Length: 0\r\n")  # not idempotent: no retry
        assert r.status == 502
        await client.close()
    backend.close()


@pytest.mark.parametrize(
    ("response", "status", "body"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\nuntil-close", 200, b"until-close"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 502, None),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", 502, None),
        (b"NONSENSE\r\n\r\n", 502, None),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", 502, None),  # not asked for
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", None, None),  # truncated: client cut off
    ],
)
async def test_upstream_responses(response: bytes, status: int | None, body: bytes | None) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: RawBackend) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()

    backend = await start_raw(script)
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        if status is None:
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await client.response()
        else:
            r = await client.response()
            assert r.status == status
            if body is not None:
                assert r.body == body and r.header("Transfer-Encoding") == "chunked"
        await client.close()
    backend.close()


async def test_insecure_policy_redirect_allow_deny_and_acme() -> None:
    backend = await start_echo()
    snap = snapshot(
        [
            vhost("r.test", ("/", "Prefix", "p"), tls=True, insecure_policy="redirect", hsts="max-age=1"),
            vhost("a.test", ("/", "Prefix", "p"), tls=True, insecure_policy="allow"),
            vhost("d.test", ("/", "Prefix", "p"), tls=True, insecure_policy="deny"),
        ],
        [pool("p", backend.endpoint)],
    )
    for port, suffix in ((443, ""), (8443, ":8443")):
        async with proxy(snap, settings=HTTPSettings(https_redirect_port=port)) as px:
            client = await Client.open(px.port)
            r = await client.get("/path?q=1", host="r.test:8080")
            assert r.status == 308 and r.header("Location") == f"https://r.test{suffix}/path?q=1"
            assert r.header("Strict-Transport-Security") is None  # never on plain HTTP
            assert (await client.get("/x", host="a.test")).status == 200
            r = await client.get("/x", host="d.test")
            assert r.status == 403
            for host in ("r.test", "d.test"):
                r = await client.get("/.well-known/acme-challenge/token123", host=host)
                assert r.status == 200 and r.json()["path"] == "/.well-known/acme-challenge/token123"
            await client.close()
    assert not any(rec["path"] == "/path?q=1" for rec in backend.requests)
    backend.close()


async def test_no_vhost_404_keeps_connection() -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        r = await client.get("/", host="nobody.test")
        assert r.status == 404 and b"no virtual host" in r.body
        assert (await client.get("/")).status == 200
        await client.close()
    backend.close()


async def test_websocket_echo_through_proxy() -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend)) as px, aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://{LOCAL}:{px.port}/ws", headers={"Host": "app.test"}) as ws:
            for i in range(3):
                await ws.send_str(f"hello {i}")
                msg = await asyncio.wait_for(ws.receive(), 10)
                assert msg.data == f"echo:hello {i}"
            await ws.send_bytes(b"\x00" * 100_000)
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.data == b"\x00" * 100_000
        assert px.metric("portcullis_http_requests_total", host="app.test", code_class="1xx") == 1
    backend.close()


async def test_curl_client_with_expect_continue() -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend)) as px:
        body = b"y" * 200_000
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--max-time", "20", "-H", "Host: app.test", "-H", "Expect: 100-continue",
            "-H", "X-Forwarded-For: 6.6.6.6", "--data-binary", "@-", f"http://{LOCAL}:{px.port}/curl?x=1",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(body), 30)
        assert proc.returncode == 0, err
        record = json.loads(out)
        assert record["path"] == "/curl?x=1" and record["body_len"] == len(body)
        assert forwarded(record, "X-Forwarded-For") == ["127.0.0.1"]
    backend.close()


async def test_raw_response_reader_sanity() -> None:
    """The test client itself must notice a wrong body length (a test that cannot fail is a defect)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: RawBackend) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc")
        await writer.drain()

    backend = await start_raw(script)
    reader, writer = await asyncio.open_connection(LOCAL, backend.port)
    with pytest.raises(asyncio.IncompleteReadError):
        await read_response(reader)
    writer.close()
    backend.close()


async def test_client_half_close_still_gets_its_response() -> None:
    backend = await start_echo()
    async with proxy(await simple_snapshot(backend)) as px:
        client = await Client.open(px.port)
        await client.send(b"GET /half HTTP/1.1\r\nHost: app.test\r\n\r\n")
        client.writer.write_eof()
        r = await client.response()
        assert r.status == 200 and r.json()["path"] == "/half" and r.header("Connection") == "close"
        assert await client.closed()
    backend.close()
