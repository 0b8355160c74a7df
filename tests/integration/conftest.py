"""Shared pieces for edge/admin integration tests: a CA, snapshots, a running data plane, backends, clients."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from dataplane.edge import AppFactory
from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.snapshot import Certificate, ClientAuth, Endpoint, Pool, Snapshot, TLSHost, content_id
from examples.backends import TLSEcho, server_context
from tests.integration.http_fixtures import EchoBackend, start_echo
from tests.pki import CA, Issued

TOKEN = "test-token-0123456789"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Modules that set ``LOOPS = ("asyncio", "uvloop")`` run every async test on both event loops."""
    module = getattr(item, "module", None)
    names = getattr(module, "LOOPS", ("asyncio",))
    factories: dict[str, Callable[[], Any]] = {"asyncio": asyncio.new_event_loop}
    if "uvloop" in names:
        import uvloop

        factories["uvloop"] = uvloop.new_event_loop
    return {name: factories[name] for name in names}


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA("Edge Test CA")


@pytest.fixture(scope="session")
def backend_ca() -> CA:
    return CA("Backend Test CA")


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    """A plain echo backend for one test (a module may define its own ``backend`` instead)."""
    echo = await start_echo()
    try:
        yield echo
    finally:
        echo.close()


def certificate(issued: Issued, *names: str) -> Certificate:
    return Certificate(content_id(issued.cert_pem, issued.key_pem), issued.cert_pem, issued.key_pem, names,
                       int(issued.cert.not_valid_after_utc.timestamp()))


def passthrough_snapshot(host: str, port: int, generation: int = 1, proxy: str = "off",
                         extra_hosts: Iterable[TLSHost] = (), certificates: Iterable[Certificate] = (),
                         default: str | None = None, **kwargs: Any) -> Snapshot:
    pool = Pool(f"demo/{host}:443", (Endpoint("127.0.0.1", port),), proxy_protocol=proxy)  # type: ignore[arg-type]
    return Snapshot(
        generation=generation,
        default_certificate_id=default,
        certificates=tuple(certificates),
        pools=(pool,),
        tls_hosts=(TLSHost(host, "passthrough", pool_id=pool.id), *extra_hosts),
        **kwargs,
    ).canonical()


def terminate_host(host: str, cert: Certificate | None, client_auth: ClientAuth | None = None,
                   min_version: str = "1.2") -> TLSHost:
    return TLSHost(host, "terminate", cert.id if cert else None, client_auth=client_auth,
                   min_version=min_version)  # type: ignore[arg-type]


@asynccontextmanager
async def running_dataplane(app: AppFactory | None = None, **config: Any) -> AsyncIterator[DataPlane]:
    """A started in-process data plane on ephemeral loopback ports (``app`` replaces the HTTP engine)."""
    dp = DataPlane(DataPlaneConfig(**{"bind": "127.0.0.1", "https_port": 0, "http_port": 0, "admin_port": 0,
                                      "admin_token": TOKEN, **config}), app=app)
    await dp.start()
    try:
        yield dp
    finally:
        await dp.stop(drain_timeout=0)


@pytest.fixture
async def dataplane() -> AsyncIterator[DataPlane]:
    async with running_dataplane(drain_timeout=0.5, clienthello_timeout=3.0) as dp:
        yield dp


@pytest.fixture
async def tls_backend(backend_ca: CA) -> AsyncIterator[tuple[TLSEcho, Issued]]:
    issued = backend_ca.issue("direct.example.com")
    echo = TLSEcho(server_context(issued.cert_pem, issued.key_pem))
    await echo.start()
    try:
        yield echo, issued
    finally:
        await echo.close()


def client_context(ca_pem: str | None = None, verify: bool = True, cert: Issued | None = None,
                   alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        from dataplane import pem

        pem.load_key_pair(ctx, cert.cert_pem, cert.key_pem)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


async def tls_roundtrip(port: int, server_name: str | None, ctx: ssl.SSLContext, payload: bytes = b"ping\n",
                        timeout: float = 10.0) -> tuple[bytes, dict[str, Any], bytes]:
    """Connect, handshake, send, read the echo; returns (echo, peer certificate dict, peer cert DER)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name), timeout)
    try:
        obj = writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True)
        info = obj.getpeercert() or {}
        writer.write(payload)
        await writer.drain()
        echo = await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
        return echo, info, der
    finally:
        writer.close()
        with contextlib_suppress():
            await writer.wait_closed()


def contextlib_suppress() -> Any:
    import contextlib

    return contextlib.suppress(OSError, ssl.SSLError, ConnectionError)


async def server_certificate(port: int, server_name: str | None) -> Any:
    """The leaf the edge presents for ``server_name`` (no verification), as a cryptography object."""
    from cryptography import x509

    ctx = client_context(verify=False)
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name), 10)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    with contextlib_suppress():
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


def common_name(cert: Any) -> str:
    from cryptography.x509.oid import NameOID

    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


__all__ = ["TOKEN", "certificate", "client_context", "common_name", "passthrough_snapshot", "raw_connect",
           "replace", "server_certificate", "terminate_host", "tls_roundtrip"]
