"""``portcullis local`` as users run it: the real CLI process, the example manifests, real backends,
and curl / openssl / Python ssl as clients."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from examples.backends import HTTPEcho, TLSEcho, describe_certificate, read_tls_secret, server_context
from tests.pki import CA

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
CA_FILE = str(EXAMPLES / "ca.crt")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Local:
    folder: Path
    https: int
    http: int
    admin: int
    process: subprocess.Popen[str]

    def curl(self, host: str, path: str = "/", *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "5", "--cacert", CA_FILE, "--resolve", f"{host}:{self.https}:127.0.0.1",
             *extra, f"https://{host}:{self.https}{path}"],
            capture_output=True, text=True, timeout=10, check=False,
        )

    def echo(self, host: str, path: str = "/", *extra: str) -> dict[str, Any]:
        result = self.curl(host, path, *extra)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))


def _point_backends(folder: Path, ports: dict[str, int]) -> None:
    """The examples name fixed ports (9001/9443/9444); tests use ephemeral ones."""
    path = folder / "10-backends.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        if doc["kind"] == "EndpointSlice":
            doc["ports"][0]["port"] = ports[doc["metadata"]["labels"]["kubernetes.io/service-name"]]
    path.write_text(yaml.safe_dump_all(docs))


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[Path]:
    folder = tmp_path / "examples"
    shutil.copytree(EXAMPLES, folder)
    web = HTTPEcho("web")
    secure = HTTPEcho("secure-web", server_context(*read_tls_secret([str(folder)], "demo", "secure-web-serving")))
    app_cert = read_tls_secret([str(folder)], "demo", "tls-app-serving")
    app = TLSEcho(server_context(*app_cert), "tls-app", http=True, certificate=describe_certificate(app_cert[0]))
    ports = {"web": await web.start(), "secure-web": await secure.start(), "tls-app": await app.start()}
    _point_backends(folder, ports)
    yield folder
    for server in (web, secure, app):
        await server.close()


def _start(folder: Path) -> Local:
    https, http, admin = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "local", "-f", str(folder), "--https-port", str(https),
         "--http-port", str(http), "--admin-port", str(admin), "--watch-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return Local(folder, https, http, admin, process)


async def _ready(local: Local) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert local.process.poll() is None, local.process.communicate()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", local.admin)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("portcullis local did not start listening")


@pytest.fixture
async def local(backends: Path) -> AsyncIterator[Local]:
    server = _start(backends)
    try:
        await _ready(server)
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()


def _headers(echo: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in echo["headers"]}


async def test_offload_backend_gets_plain_http_with_forwarding_headers(local: Local) -> None:
    echo = await asyncio.to_thread(local.echo, "edge.portcullis.test", "/hello?x=1", "-H", "X-Forwarded-For: 6.6.6.6")
    headers = _headers(echo)
    assert echo["server"] == "web" and echo["tls"] is None and echo["path"] == "/hello?x=1"
    assert headers["x-forwarded-proto"] == "https" and headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-host"] == f"edge.portcullis.test:{local.https}"  # the Host the client sent


async def test_reencrypt_backend_gets_verified_tls_with_the_service_name(local: Local) -> None:
    for host in ("bridge.portcullis.test", "legacy.portcullis.test"):
        echo = await asyncio.to_thread(local.echo, host)
        assert echo["server"] == "secure-web"
        assert echo["tls"]["sni"] == "secure-web.demo.svc"


async def test_passthrough_client_sees_the_backends_own_certificate(local: Local) -> None:
    backend_cert, _ = read_tls_secret([str(local.folder)], "demo", "tls-app-serving")
    context = ssl.create_default_context(cafile=CA_FILE)
    reader, writer = await asyncio.open_connection("127.0.0.1", local.https, ssl=context,
                                                   server_hostname="direct.portcullis.test")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert ssl.DER_cert_to_PEM_cert(der).split() == backend_cert.split()
    writer.write(b"GET /through HTTP/1.1\r\nHost: direct.portcullis.test\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)  # the backend closes after one answer
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b'"server": "tls-app"' in answer
    writer.close()

    # What the README shows: curl through the proxy, answered over the backend's own TLS.
    echo = await asyncio.to_thread(local.echo, "direct.portcullis.test", "/seen?x=1")
    assert echo["server"] == "tls-app" and echo["sni"] == "direct.portcullis.test" and echo["path"] == "/seen?x=1"
    assert "direct.portcullis.test" in echo["certificate"]["dns_names"]
    assert echo["proxy_protocol"] is None and echo["client"][0] == "127.0.0.1"  # the example sends no PROXY header

    s_client = await asyncio.to_thread(
        subprocess.run,
        ["openssl", "s_client", "-connect", f"127.0.0.1:{local.https}", "-servername", "direct.portcullis.test",
         "-CAfile", CA_FILE, "-verify_return_error", "-brief"],
        input="", capture_output=True, text=True, timeout=10, check=False,
    )
    assert "Verification: OK" in s_client.stderr, s_client.stderr


async def test_client_certificate_auth(local: Local) -> None:
    denied = await asyncio.to_thread(local.curl, "mtls.portcullis.test")
    assert denied.returncode != 0
    echo = await asyncio.to_thread(
        local.echo, "mtls.portcullis.test", "/", "--cert", str(EXAMPLES / "client.crt"), "--key",
        str(EXAMPLES / "client.key"), "-H", "ssl-client-verify: SUCCESS-forged", "-H", "ssl-client-subject-dn: CN=root",
    )
    headers = _headers(echo)
    assert headers["ssl-client-verify"] == "SUCCESS"
    assert "CN=demo-client" in headers["ssl-client-subject-dn"]


async def test_plain_http_listener_redirects_tls_hosts_and_serves_http_hosts(local: Local) -> None:
    def get(host: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                               "-H", f"Host: {host}", f"http://127.0.0.1:{local.http}/a?b=c"],
                              capture_output=True, text=True, timeout=10, check=False)

    redirect = await asyncio.to_thread(get, "edge.portcullis.test")
    assert redirect.stdout == f"308 https://edge.portcullis.test:{local.https}/a?b=c"
    assert (await asyncio.to_thread(get, "plain.portcullis.test")).stdout.startswith("200")


async def test_unknown_sni_gets_a_certificate_and_metrics_move(local: Local) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", local.https, ssl=context,
                                              server_hostname="unknown.example.org")
    assert writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await asyncio.to_thread(local.echo, "edge.portcullis.test")
    reader, writer = await asyncio.open_connection("127.0.0.1", local.admin)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await asyncio.wait_for(reader.read(), 5)).decode()
    assert 'portcullis_http_requests_total{code_class="2xx",host="edge.portcullis.test",protocol="h2"}' \
        in text
    assert "portcullis_snapshot_generation 1.0" in text


def _rotate(folder: Path, secret: str, cert_pem: str, key_pem: str) -> None:
    import base64

    path = folder / "20-secrets.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        if doc["metadata"]["name"] == secret:
            doc["data"] = {"tls.crt": base64.b64encode(cert_pem.encode()).decode(),
                           "tls.key": base64.b64encode(key_pem.encode()).decode()}
    path.write_text(yaml.safe_dump_all(docs))


async def _served_cert(local: Local, host: str, cafile: str) -> str:
    context = ssl.create_default_context(cafile=cafile)
    _, writer = await asyncio.open_connection("127.0.0.1", local.https, ssl=context, server_hostname=host)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return ssl.DER_cert_to_PEM_cert(der)


async def test_certificate_rotation_in_watched_files_keeps_open_connections(local: Local, tmp_path: Path) -> None:
    # an open keep-alive connection, made before the rotation
    context = ssl.create_default_context(cafile=CA_FILE)
    reader, writer = await asyncio.open_connection("127.0.0.1", local.https, ssl=context,
                                                   server_hostname="edge.portcullis.test")

    async def request() -> bytes:
        writer.write(b"GET /keepalive HTTP/1.1\r\nHost: edge.portcullis.test\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await asyncio.wait_for(reader.readexactly(length), 5)
        return head

    assert (await request()).startswith(b"HTTP/1.1 200")
    new_ca = CA("Rotated CA")
    issued = new_ca.issue("edge.portcullis.test")
    (tmp_path / "new-ca.crt").write_text(new_ca.cert_pem)
    _rotate(local.folder, "edge-tls", issued.cert_pem, issued.key_pem)
    deadline = time.monotonic() + 2.0 + 1.0  # 2 s contract, plus slack for a loaded CI machine
    while True:
        try:
            served = await _served_cert(local, "edge.portcullis.test", str(tmp_path / "new-ca.crt"))
            break
        except ssl.SSLError:
            assert time.monotonic() < deadline, "rotated certificate not served in time"
            await asyncio.sleep(0.1)
    assert served.split() == issued.cert_pem.split()
    assert (await request()).startswith(b"HTTP/1.1 200"), "the connection from before the rotation still works"
    writer.close()


def _stderr_report(process: subprocess.Popen[str], start: str, end: str) -> str:
    """The process's stderr from the next line containing ``start`` through the line containing ``end``
    (a report can span lines: YAML errors do); what was read so far at EOF."""
    assert process.stderr is not None
    text = ""
    for line in process.stderr:
        if text or start in line:
            text += line
            if end in line:
                break
    return text


async def test_broken_edit_keeps_the_last_good_snapshot(local: Local) -> None:
    (local.folder / "31-edge.yaml").write_text("kind: Ingress\nmetadata: [")
    # Evidence the edit was read and refused, not just time passing: the watcher reports it.
    report = await asyncio.wait_for(
        asyncio.to_thread(_stderr_report, local.process, "cannot read manifests", "still serving generation"), 15)
    assert "31-edge.yaml" in report and "still serving generation 1" in report, report
    assert local.process.poll() is None
    echo = await asyncio.to_thread(local.echo, "edge.portcullis.test")
    assert echo["server"] == "web"
