"""Real backends, a real proxy listener and a small raw HTTP client for the HTTP engine tests.

The echo backend is aiohttp's server (an independent HTTP implementation, so a framing bug in the
proxy's own parser cannot hide behind the same bug in the backend). It counts TCP connections and
requests, so tests can prove keep-alive reuse and "the backend saw at most one request".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from dataplane import pem
from dataplane.http.connection import ConnectionInfo, HTTPProtocol
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import HTTPTable, build_http_table
from dataplane.metrics import Metrics
from dataplane.snapshot import (
    CABundle,
    Certificate,
    Endpoint,
    Pool,
    Route,
    Snapshot,
    TLSHost,
    UpstreamTLS,
    VirtualHost,
    content_id,
)
from tests.pki import CA, Issued

LOCAL = "127.0.0.1"


# --- backends ----------------------------------------------------------------------------------


@dataclass
class EchoBackend:
    port: int = 0
    connections: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(LOCAL, self.port)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _echo(request: web.Request, backend: EchoBackend) -> web.StreamResponse:
    digest = hashlib.sha256()
    size = 0
    async for piece in request.content.iter_any():
        digest.update(piece)
        size += len(piece)
    record = {
        "method": request.method,
        "path": request.path_qs,
        "version": f"{request.version.major}.{request.version.minor}",
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body_len": size,
        "body_sha256": digest.hexdigest(),
        "backend_port": backend.port,
    }
    backend.requests.append(record)
    parts = request.path.strip("/").split("/")
    if parts[0] == "slow":
        await asyncio.sleep(float(parts[1]))
    if parts[0] == "bytes":  # /bytes/N: N bytes with a Content-Length
        n = int(parts[1])
        return web.Response(body=_pattern(n), content_type="application/octet-stream")
    if parts[0] == "chunked":  # /chunked/N: N bytes, chunked, in 64 KiB writes
        n = int(parts[1])
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        data = _pattern(n)
        for i in range(0, n, 65536):
            await resp.write(data[i:i + 65536])
        await resp.write_eof()
        return resp
    if parts[0] == "status":
        return web.Response(status=int(parts[1]), text="status\n")
    if parts[0] == "hsts":
        return web.Response(text="x", headers={"Strict-Transport-Security": "max-age=1"})
    return web.json_response(record)


def _pattern(n: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


async def _ws(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == web.WSMsgType.TEXT:
            await ws.send_str("echo:" + msg.data)
        elif msg.type == web.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def start_echo(ssl_context: ssl.SSLContext | None = None) -> EchoBackend:
    backend = EchoBackend()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/ws" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await _ws(request)
        return await _echo(request, backend)

    server = web.Server(handler)

    def factory() -> asyncio.Protocol:
        backend.connections += 1
        return server()  # type: ignore[no-any-return]

    loop = asyncio.get_running_loop()
    backend.server = await loop.create_server(factory, LOCAL, 0, ssl=ssl_context)
    backend.port = backend.server.sockets[0].getsockname()[1]
    return backend


@dataclass
class RawBackend:
    """A backend that runs ``script(reader, writer)`` per connection: for responses no real server sends."""

    port: int = 0
    connections: int = 0
    received: list[bytes] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(LOCAL, self.port)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def start_raw(script: Callable[[asyncio.StreamReader, asyncio.StreamWriter, RawBackend], Awaitable[None]],
                    ssl_context: ssl.SSLContext | None = None) -> RawBackend:
    backend = RawBackend()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend.connections += 1
        try:
            await script(reader, writer, backend)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    backend.server = await asyncio.start_server(handle, LOCAL, 0, ssl=ssl_context)
    backend.port = backend.server.sockets[0].getsockname()[1]
    return backend


async def eof_or_reset(reader: asyncio.StreamReader, timeout: float = 10.0) -> bool:
    """Read until the server closes; True on EOF or reset within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(1 << 20):
                pass
    except (ConnectionError, ssl.SSLError):
        return True
    return True


def free_port() -> int:
    """A port nothing listens on (bound then released): connects to it are refused."""
    import socket

    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


# --- TLS material ------------------------------------------------------------------------------


def server_context(issued: Issued, client_ca: CA | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pem.load_key_pair(ctx, issued.cert_pem, issued.key_pem)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cadata=client_ca.cert_pem)
    return ctx


def client_context(ca: CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem)
    return ctx


def ca_bundle(ca: CA) -> CABundle:
    return CABundle(content_id(ca.cert_pem), ca.cert_pem)


def certificate(issued: Issued) -> Certificate:
    return Certificate(content_id(issued.cert_pem, issued.key_pem), issued.cert_pem, issued.key_pem)


# --- snapshots ---------------------------------------------------------------------------------


def pool(pool_id: str, *endpoints: Endpoint, tls: UpstreamTLS | None = None, **kw: Any) -> Pool:
    return Pool(pool_id, tuple(endpoints), tls, **kw)


def vhost(host: str, *routes: tuple[str, str, str], **kw: Any) -> VirtualHost:
    """routes: (path, pathType, pool_id)."""
    return VirtualHost(host, tuple(Route(p, t, pid) for p, t, pid in routes), **kw)


def snapshot(
    vhosts: list[VirtualHost], pools: list[Pool], tls_hosts: tuple[TLSHost, ...] = (),
    cas: tuple[CABundle, ...] = (), certs: tuple[Certificate, ...] = (),
) -> Snapshot:
    snap = Snapshot(
        certificates=certs, ca_bundles=cas, pools=tuple(pools), tls_hosts=tls_hosts, virtual_hosts=tuple(vhosts)
    ).canonical()
    from dataplane.snapshot import validate

    problems = validate(snap)
    assert not problems, problems
    return snap


# --- the proxy under test ----------------------------------------------------------------------


@dataclass
class Proxy:
    port: int
    table: HTTPTable
    metrics: Metrics
    server: asyncio.AbstractServer

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels`` (labels left out: any value)."""
        return sum(sample.value for family in self.metrics.registry.collect() for sample in family.samples
                   if sample.name == name and labels.items() <= sample.labels.items())


@contextlib.asynccontextmanager
async def proxy(
    snap: Snapshot,
    scheme: str = "http",
    ssl_context: ssl.SSLContext | None = None,
    tls_host: TLSHost | None = None,
    settings: HTTPSettings | None = None,
    table: HTTPTable | None = None,
    on_protocol: Callable[[HTTPProtocol], object] | None = None,
) -> AsyncIterator[Proxy]:
    metrics = table.metrics if table is not None else Metrics()
    table = table or build_http_table(snap, None, metrics, settings or HTTPSettings())
    info = ConnectionInfo(scheme, tls_host=tls_host)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()

    def factory() -> HTTPProtocol:
        proto = HTTPProtocol(table, info, metrics)
        if on_protocol is not None:
            on_protocol(proto)
        return proto

    server = await loop.create_server(factory, LOCAL, 0, ssl=ssl_context)
    try:
        yield Proxy(server.sockets[0].getsockname()[1], table, metrics, server)
    finally:
        server.close()
        for up in table.upstreams.values():
            up.close_idle()


# --- a raw client ------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    resp = Response(status, headers, b"")
    if head_request or status in (204, 304) or status < 200:
        return resp
    if (resp.header("transfer-encoding") or "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        resp.body = bytes(body)
    elif resp.header("content-length") is not None:
        resp.body = await asyncio.wait_for(reader.readexactly(int(resp.header("content-length") or 0)), 30)
    else:
        resp.body = await asyncio.wait_for(reader.read(), 30)
    return resp


class Client:
    """One client connection; ``request`` sends raw bytes (or a simple GET) and reads one response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, ssl_context: ssl.SSLContext | None = None,
                   server_hostname: str | None = None) -> Client:
        reader, writer = await asyncio.open_connection(
            LOCAL, port, ssl=ssl_context, server_hostname=server_hostname if ssl_context else None,
            limit=1 << 24,
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def get(self, path: str = "/", host: str = "app.test", extra: str = "", method: str = "GET") -> Response:
        await self.send(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        return await read_response(self.reader, head_request=method == "HEAD")

    async def response(self) -> Response:
        return await read_response(self.reader)

    async def closed(self) -> bool:
        """True when the server closed the connection (EOF within a few seconds)."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
        except (ConnectionError, TimeoutError):
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def forwarded(record: dict[str, Any], name: str) -> list[str]:
    """Values of one header as the backend received it."""
    return [v for k, v in record["headers"] if k.lower() == name.lower()]
