"""Offload and reencrypt end to end: real clients -> the edge (TLS) -> the HTTP engine -> real echo backends."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dataplane.runtime import DataPlane
from dataplane.snapshot import (
    CABundle,
    ClientAuth,
    Endpoint,
    Pool,
    Route,
    Snapshot,
    TLSHost,
    UpstreamTLS,
    VirtualHost,
    content_id,
)
from examples.backends import HTTPEcho, server_context
from tests.integration.conftest import certificate, client_context, common_name, server_certificate, terminate_host
from tests.pki import CA

LOOPS = ("asyncio", "uvloop")


@pytest.fixture
async def backends(backend_ca: CA) -> AsyncIterator[tuple[HTTPEcho, HTTPEcho]]:
    issued = backend_ca.issue("secure-web.demo.svc")
    plain, secure = HTTPEcho("web"), HTTPEcho("secure-web", server_context(issued.cert_pem, issued.key_pem))
    await plain.start()
    await secure.start()
    try:
        yield plain, secure
    finally:
        await plain.close()
        await secure.close()


def http_snapshot(ca: CA, backend_ca: CA, plain: int, secure: int, generation: int = 1,
                  cert_cn: str | None = None, client_ca: CA | None = None) -> Snapshot:
    app = certificate(ca.issue("app.example.com", "bridge.example.com", common_name=cert_cn), "app.example.com")
    bca = CABundle(content_id(backend_ca.cert_pem), backend_ca.cert_pem)
    bundles = [bca]
    auth = None
    if client_ca is not None:
        cca = CABundle(content_id(client_ca.cert_pem), client_ca.cert_pem)
        bundles.append(cca)
        auth = ClientAuth(cca.id, "required", forward_headers=True)
    web = Pool("demo/web:80", (Endpoint("127.0.0.1", plain),))
    sweb = Pool("demo/secure-web:443", (Endpoint("127.0.0.1", secure),), tls=UpstreamTLS("secure-web.demo.svc", bca.id))
    return Snapshot(
        generation=generation,
        certificates=(app,),
        ca_bundles=tuple(bundles),
        pools=(web, sweb),
        tls_hosts=(
            terminate_host("app.example.com", app, auth),
            TLSHost("bridge.example.com", "terminate", app.id),
        ),
        virtual_hosts=(
            VirtualHost("app.example.com", (Route("/", "Prefix", web.id),), tls=True, insecure_policy="redirect",
                        hsts="max-age=31536000"),
            VirtualHost("bridge.example.com", (Route("/", "Prefix", sweb.id),), tls=True),
        ),
    ).canonical()


async def request(port: int, host: str, ctx: ssl.SSLContext | None, path: str = "/",
                  connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
                  ) -> tuple[int, dict[str, str], Any, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """One HTTP/1.1 request (keep-alive) on a new or given connection; returns status, headers, JSON body."""
    if connection is None:
        connection = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=host if ctx else None), 10)
    reader, writer = connection
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    parsed = json.loads(body) if headers.get("content-type", "").startswith("application/json") else body
    return status, headers, parsed, connection


def backend_headers(echo: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in echo["headers"]}


async def test_offload_backend_gets_plain_http_with_forwarding_headers(
    dataplane: DataPlane, backends: tuple[HTTPEcho, HTTPEcho], ca: CA, backend_ca: CA
) -> None:
    plain, secure = backends
    assert dataplane.apply(http_snapshot(ca, backend_ca, plain.port, secure.port)) == []
    status, headers, echo, (_, writer) = await request(dataplane.https_port, "app.example.com",
                                                       client_context(ca.cert_pem), "/hello?x=1")
    assert status == 200
    assert echo["server"] == "web" and echo["tls"] is None and echo["path"] == "/hello?x=1"
    sent = backend_headers(echo)
    assert sent["x-forwarded-proto"] == "https"
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-port"] == str(dataplane.https_port)
    assert headers["strict-transport-security"] == "max-age=31536000"
    writer.close()


async def test_reencrypt_backend_gets_verified_tls_with_its_service_name(
    dataplane: DataPlane, backends: tuple[HTTPEcho, HTTPEcho], ca: CA, backend_ca: CA
) -> None:
    plain, secure = backends
    dataplane.apply(http_snapshot(ca, backend_ca, plain.port, secure.port))
    status, _, echo, (_, writer) = await request(dataplane.https_port, "bridge.example.com",
                                                 client_context(ca.cert_pem), "/secure")
    assert status == 200
    assert echo["server"] == "secure-web"
    assert echo["tls"]["sni"] == "secure-web.demo.svc"
    assert echo["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    writer.close()


async def test_reencrypt_refuses_a_backend_it_cannot_verify(
    dataplane: DataPlane, backends: tuple[HTTPEcho, HTTPEcho], ca: CA
) -> None:
    plain, secure = backends
    dataplane.apply(http_snapshot(ca, CA("Some Other CA"), plain.port, secure.port))
    status, _, _, (_, writer) = await request(dataplane.https_port, "bridge.example.com", client_context(ca.cert_pem))
    assert status == 502
    writer.close()


async def test_client_certificate_reaches_the_backend_as_headers(
    dataplane: DataPlane, backends: tuple[HTTPEcho, HTTPEcho], ca: CA, backend_ca: CA
) -> None:
    plain, secure = backends
    client_ca = CA("Client CA")
    dataplane.apply(http_snapshot(ca, backend_ca, plain.port, secure.port, client_ca=client_ca))
    alice = client_ca.issue(client=True, common_name="alice")
    status, _, echo, (_, writer) = await request(dataplane.https_port, "app.example.com",
                                                 client_context(ca.cert_pem, cert=alice))
    assert status == 200
    sent = backend_headers(echo)
    assert sent["ssl-client-verify"] == "SUCCESS"
    assert sent["ssl-client-subject-dn"] == "CN=alice"
    assert sent["ssl-client-issuer-dn"] == "CN=Client CA"
    writer.close()


async def test_host_must_match_the_sni_row(
    dataplane: DataPlane, backends: tuple[HTTPEcho, HTTPEcho], ca: CA, backend_ca: CA
) -> None:
    """Handshake as bridge (no client auth), then ask for app (client auth required): 421."""
    plain, secure = backends
    dataplane.apply(http_snapshot(ca, backend_ca, plain.port, secure.port, client_ca=CA("Client CA")))
    ctx = client_context(ca.cert_pem)
    connection = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", dataplane.https_port, ssl=ctx, server_hostname="bridge.example.com"), 10)
    status, _, _, (_, writer) = await request(dataplane.https_port, "app.example.com", ctx, connection=connection)
    assert status == 421
    writer.close()


async def test_plain_listener_redirects_tls_hosts(
    dataplane: DataPlane, backends: tuple[HTTPEcho, HTTPEcho], ca: CA, backend_ca: CA
) -> None:
    plain, secure = backends
    dataplane.apply(http_snapshot(ca, backend_ca, plain.port, secure.port))
    status, headers, _, (_, writer) = await request(dataplane.http_port, "app.example.com", None, "/x?y=1")
    assert status == 308
    assert headers["location"] == "https://app.example.com/x?y=1"  # https_redirect_port 443 is omitted
    writer.close()


async def test_rotation_keeps_a_keepalive_connection_and_new_handshakes_get_the_new_certificate(
    dataplane: DataPlane, backends: tuple[HTTPEcho, HTTPEcho], ca: CA, backend_ca: CA
) -> None:
    plain, secure = backends
    dataplane.apply(http_snapshot(ca, backend_ca, plain.port, secure.port, 1, cert_cn="first"))
    ctx = client_context(ca.cert_pem)
    status, _, _, connection = await request(dataplane.https_port, "app.example.com", ctx)
    assert status == 200
    assert common_name(await server_certificate(dataplane.https_port, "app.example.com")) == "first"
    assert dataplane.apply(http_snapshot(ca, backend_ca, plain.port, secure.port, 2, cert_cn="second")) == []
    assert common_name(await server_certificate(dataplane.https_port, "app.example.com")) == "second"
    status, headers, echo, (reader, writer) = await request(dataplane.https_port, "app.example.com", ctx, "/again",
                                                            connection=connection)
    assert status == 200 and echo["path"] == "/again"
    # the session was made with the old certificate: served, then closed so the client shakes hands anew
    assert headers.get("connection") == "close"
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_curl_through_offload(
    dataplane: DataPlane, backends: tuple[HTTPEcho, HTTPEcho], ca: CA, backend_ca: CA, tmp_path: Path
) -> None:
    assert shutil.which("curl"), "curl is installed by scripts/install-system-deps"
    plain, secure = backends
    dataplane.apply(http_snapshot(ca, backend_ca, plain.port, secure.port))
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(ca.cert_pem)
    port = dataplane.https_port
    result = await asyncio.to_thread(
        subprocess.run,
        ["curl", "-sS", "--max-time", "15", "--cacert", str(ca_file), "--resolve", f"app.example.com:{port}:127.0.0.1",
         f"https://app.example.com:{port}/via-curl"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["path"] == "/via-curl" and echo["server"] == "web"
