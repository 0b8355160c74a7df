"""Example backends for local mode and the tests: they answer with what they received.

- ``HTTPEcho``: plain or HTTPS; every request gets a JSON description of itself (method, path,
  headers, body, peer, TLS details), and ``Upgrade: websocket`` requests get a WebSocket echo.
- ``TLSEcho``: a passthrough backend doing its own TLS. It accepts an optional PROXY v1/v2 header
  in front of the ClientHello and records it, so tests can see the client address the edge passed
  on. By default it echoes raw bytes back (what the tests drive); with ``http=True`` it answers one
  HTTP/1.1 request with a JSON description of what it saw (its SNI, its own certificate, the TLS
  session, the client address from the PROXY header), so ``curl`` and a browser show passthrough
  end to end.

``python -m examples.backends --examples deploy/examples`` starts the three backends the examples
point at (docs/contracts.md section 5), with certificates read from the examples' Secrets. These
are development tools, not part of the product: they live outside ``dataplane/`` (they read the
manifests with the controller's loader).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from cryptography import x509

from controller.manifests import ManifestError, load_paths  # a development tool may lean on the controller
from controller.model import Secret, project
from dataplane import pem, proxy_protocol

log = logging.getLogger(__name__)


def server_context(cert_pem: str, key_pem: str, client_ca_pem: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pem.load_key_pair(ctx, cert_pem, key_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    if client_ca_pem:
        pem.load_trust(ctx, client_ca_pem)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class _SNIRecorder:
    """Server-side SNI is only visible in the SNI callback; remember it per TLS object."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.names: dict[int, str | None] = {}
        ctx.sni_callback = self._callback

    def _callback(self, obj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        self.names[id(obj)] = name

    def pop(self, obj: Any) -> str | None:
        return self.names.pop(id(obj), None) if obj is not None else None


def _tls_details(obj: Any, sni: str | None) -> dict[str, Any] | None:
    if obj is None:
        return None
    cert = obj.getpeercert()
    subject = None
    if cert:
        subject = ",".join("=".join(pair) for rdn in cert.get("subject", ()) for pair in rdn)
    return {
        "version": obj.version(),
        "cipher": (obj.cipher() or ("",))[0],
        "alpn": obj.selected_alpn_protocol(),
        "sni": sni,
        "client_subject": subject,
    }


class HTTPEcho:
    def __init__(self, name: str = "echo", ssl_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.ssl_context = ssl_context
        self.sni = _SNIRecorder(ssl_context) if ssl_context is not None else None
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.requests = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(next(iter(self.runner.addresses))[1])
        return self.port

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body = await request.read()
        obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        sni = None
        if self.sni is not None and obj is not None:
            sni = self.sni.names.get(id(obj))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        description = {
            "server": self.name,
            "method": request.method,
            "path": request.path_qs,
            "version": f"{request.version.major}.{request.version.minor}",
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", "replace"),
            "body_length": len(body),
            "peer": list(peer[:2]) if peer else None,
            "tls": _tls_details(obj, sni),
        }
        status = int(request.query.get("status", "200")) if request.query.get("status", "").isdigit() else 200
        return web.json_response(description, status=status, headers={"X-Echo-Server": self.name})

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws


@dataclass
class TLSConnectionRecord:
    peer: tuple[str, int]
    proxy: proxy_protocol.ProxyHeader | None = None
    sni: str | None = None
    bytes_echoed: int = 0
    closed: bool = False
    errors: list[str] = field(default_factory=list)


def describe_certificate(cert_pem: str) -> dict[str, Any]:
    """Subject, DNS names and expiry of the first certificate in ``cert_pem`` (what a passthrough client saw)."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    return {"subject": cert.subject.rfc4514_string(), "dns_names": names,
            "not_after": cert.not_valid_after_utc.isoformat()}


MAX_REQUEST_HEAD = 16384


class TLSEcho:
    """TLS over ``SSLObject``/``MemoryBIO``, so a PROXY header can be stripped before TLS.

    ``http``: answer one HTTP/1.1 request with what this backend saw instead of echoing bytes;
    ``certificate`` is then reported as the certificate the client was shown (``describe_certificate``).
    """

    def __init__(self, ssl_context: ssl.SSLContext, name: str = "tls-echo", http: bool = False,
                 certificate: dict[str, Any] | None = None) -> None:
        self.ssl_context = ssl_context
        self.name = name
        self.http = http
        self.certificate = certificate
        self.sni = _SNIRecorder(ssl_context)
        self.records: list[TLSConnectionRecord] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._handle, host, port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        record = TLSConnectionRecord((str(peer[0]), int(peer[1])))
        self.records.append(record)
        try:
            await self._serve(reader, writer, record)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, proxy_protocol.ProxyHeaderError) as exc:
            record.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            record.closed = True
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     record: TLSConnectionRecord) -> None:
        buffered = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buffered += chunk
            if not proxy_protocol.starts_like_proxy(buffered):
                break
            try:
                record.proxy = proxy_protocol.parse(buffered)
            except proxy_protocol.NeedMoreData:
                continue
            buffered = buffered[record.proxy.length :]
            break
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.ssl_context.wrap_bio(incoming, outgoing, server_side=True)
        incoming.write(buffered)

        async def flush() -> None:
            data = outgoing.read()
            if data:
                writer.write(data)
                await writer.drain()

        async def fill() -> bool:
            data = await reader.read(65536)
            if not data:
                incoming.write_eof()
                return False
            incoming.write(data)
            return True

        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await flush()
                if not await fill():
                    return
        record.sni = self.sni.pop(obj)
        await flush()
        if self.http:
            await self._answer(obj, record, flush, fill)
            return
        while True:
            data = await _tls_read(obj, flush, fill)
            if data is None:
                with contextlib.suppress(ssl.SSLError):
                    obj.unwrap()
                await flush()
                return
            if not data:
                return
            obj.write(data)
            record.bytes_echoed += len(data)
            await flush()


    async def _answer(self, obj: ssl.SSLObject, record: TLSConnectionRecord,
                      flush: Callable[[], Awaitable[None]], fill: Callable[[], Awaitable[bool]]) -> None:
        """Read one request head (bounded), answer it with a JSON description, close with close_notify."""
        head = b""
        while b"\r\n\r\n" not in head:
            if len(head) > MAX_REQUEST_HEAD:
                record.errors.append("request head too long")
                return
            data = await _tls_read(obj, flush, fill)
            if not data:
                return
            head += data
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path = rest.rpartition(" ")[0] or rest
        source = record.proxy.source if record.proxy is not None else None
        body = json.dumps({
            "server": self.name,
            "mode": "passthrough: this backend terminated the client's TLS itself",
            "sni": record.sni,
            "certificate": self.certificate,
            "tls": {"version": obj.version(), "cipher": (obj.cipher() or ("",))[0],
                    "alpn": obj.selected_alpn_protocol()},
            "peer": list(record.peer),
            "proxy_protocol": None if record.proxy is None else {
                "source": list(source) if source else None,
                "dest": list(record.proxy.dest) if record.proxy.dest else None},
            "client": list(source) if source else list(record.peer),
            "method": method,
            "path": path,
            "headers": [[name.strip(), value.strip()] for name, _, value in (line.partition(":") for line in lines[1:])
                        if name.strip()],
        }, indent=2).encode() + b"\n"
        obj.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\nX-Echo-Server: %s\r\n\r\n" % (len(body), self.name.encode()) + body)
        record.bytes_echoed += len(body)
        with contextlib.suppress(ssl.SSLError):
            obj.unwrap()
        await flush()


# --- the examples' backends ------------------------------------------------------------------


def read_tls_secret(paths: Sequence[str], namespace: str, name: str) -> tuple[str, str]:
    """``tls.crt``/``tls.key`` of a kubernetes.io/tls Secret found in YAML files or folders.

    Reads the manifests the way ``portcullis local`` does (the controller's loader and Secret
    projection), so the example backends and the proxy can never disagree about a file.
    """

    for obj in load_paths(paths):
        view = project(obj)
        if isinstance(view, Secret) and (view.ref.namespace, view.ref.name) == (namespace, name):
            cert, key = view.data.get("tls.crt", b""), view.data.get("tls.key", b"")
            if cert and key:
                return cert.decode(), key.decode()
    raise LookupError(f"no kubernetes.io/tls Secret {namespace}/{name} with tls.crt and tls.key in {list(paths)}")


async def serve_examples(args: argparse.Namespace) -> int:
    paths = [args.examples]
    web_cert = read_tls_secret(paths, "demo", "secure-web-serving")
    app_cert = read_tls_secret(paths, "demo", "tls-app-serving")
    servers: list[HTTPEcho | TLSEcho] = [
        HTTPEcho("web"),
        HTTPEcho("secure-web", server_context(*web_cert)),
        TLSEcho(server_context(*app_cert), "tls-app", http=True, certificate=describe_certificate(app_cert[0])),
    ]
    ports = [args.http_port, args.https_port, args.tls_port]
    for server, port in zip(servers, ports, strict=True):
        await server.start(args.bind, port)
        log.info("echo backend listening", extra={"backend": server.name, "port": server.port})
        print(f"{server.name}: {args.bind}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        await server.close()
    return 0

async def _tls_read(obj: ssl.SSLObject, flush: Callable[[], Awaitable[None]],
                    fill: Callable[[], Awaitable[bool]]) -> bytes | None:
    """The next decrypted bytes (b"" when the peer's socket closed, None on its close_notify),
    feeding the SSLObject from the socket as it needs."""
    while True:
        try:
            return obj.read(65536)
        except ssl.SSLWantReadError:
            await flush()
            if not await fill():
                return b""
        except ssl.SSLZeroReturnError:
            return None



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.backends", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default="deploy/examples", help="folder with the example manifests")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=9001)
    parser.add_argument("--https-port", type=int, default=9443)
    parser.add_argument("--tls-port", type=int, default=9444)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return asyncio.run(serve_examples(args))
    except (LookupError, ManifestError) as exc:  # a missing Secret, an unreadable manifest
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

