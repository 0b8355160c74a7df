"""``portcullis dataplane`` as a process (uvloop, TLS admin API), driven by real clients: curl and openssl."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dataplane.snapshot import Snapshot
from examples.backends import TLSEcho, server_context
from tests.integration.conftest import TOKEN, certificate, passthrough_snapshot, terminate_host
from tests.integration.processes import PORTCULLIS, ROOT, stop
from tests.pki import CA
from tests.waiting import eventually, eventually_sync


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    def __init__(self, proc: subprocess.Popen[bytes], https: int, http: int, admin: int, ca_file: Path) -> None:
        self.proc, self.https, self.http, self.admin, self.ca_file = proc, https, http, admin, ca_file


def accepts(port: int) -> bool:
    """Whether something listens on ``port`` (a connect succeeds)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"data plane exited with {proc.returncode}")
        return accepts(port)

    eventually_sync(listening, timeout, interval=0.05, what=f"port {port} listening")


@pytest.fixture(scope="module")
def admin_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CA, Path, Path, Path, Path]:
    ca = CA("Admin CA")
    issued = ca.issue("portcullis-dataplane", "127.0.0.1")
    d = tmp_path_factory.mktemp("admin")
    (d / "ca.crt").write_text(ca.cert_pem)
    (d / "tls.crt").write_text(issued.cert_pem)
    (d / "tls.key").write_text(issued.key_pem)
    (d / "token").write_text(TOKEN + "\n")
    return ca, d / "ca.crt", d / "tls.crt", d / "tls.key", d / "token"


@pytest.fixture
def process(admin_pki: tuple[CA, Path, Path, Path, Path]) -> Iterator[Process]:
    _, ca_file, cert, key, token = admin_pki
    https, http, admin = free_port(), free_port(), free_port()
    env = dict(os.environ, PORTCULLIS_ADMIN_TOKEN_FILE=str(token), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [*PORTCULLIS, "dataplane", "--bind", "127.0.0.1", "--https-port", str(https), "--http-port", str(http),
         "--admin-port", str(admin), "--admin-cert-file", str(cert), "--admin-key-file", str(key),
         "--drain-timeout", "5"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_listening(admin, proc)
        yield Process(proc, https, http, admin, ca_file)
    finally:
        stop(proc, 10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("curl"), "curl is installed by scripts/install-system-deps"
    return subprocess.run(["curl", "-sS", "--max-time", "15", *args], capture_output=True, text=True, timeout=30)


def openssl_echo(args: list[str], line: bytes) -> bytes:
    """Send one line through ``openssl s_client`` and return the first line that comes back."""
    proc = subprocess.Popen(["openssl", "s_client", "-quiet", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(line)
        proc.stdin.flush()
        timer = threading.Timer(20, proc.kill)  # bounded: a hang becomes an empty answer, and a failure
        timer.start()
        try:
            return proc.stdout.readline()
        finally:
            timer.cancel()
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def push(p: Process, snapshot: Snapshot, tmp: Path, token: str = TOKEN) -> tuple[int, str]:
    body = tmp / f"snapshot-{snapshot.generation}.json"
    body.write_text(snapshot.to_json())
    result = curl("-o", "-", "-w", "\n%{http_code}", "--cacert", str(p.ca_file), "-X", "PUT",
                  "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
                  "--data-binary", f"@{body}", f"https://127.0.0.1:{p.admin}/snapshot")
    text, _, code = result.stdout.rpartition("\n")
    return int(code or 0), text


@pytest.fixture
async def backend() -> AsyncIterator[tuple[TLSEcho, CA]]:
    backend_ca = CA("Backend CA")
    issued = backend_ca.issue("direct.example.com")
    echo = TLSEcho(server_context(issued.cert_pem, issued.key_pem))
    await echo.start()
    try:
        yield echo, backend_ca
    finally:
        await echo.close()


async def test_process_admin_over_tls_then_passthrough_with_openssl_and_terminate_with_curl(
    process: Process, backend: tuple[TLSEcho, CA], ca: CA, tmp_path: Path
) -> None:
    echo, backend_ca = backend
    readyz = await asyncio.to_thread(curl, "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                                     str(process.ca_file), f"https://127.0.0.1:{process.admin}/readyz")
    assert readyz.stdout == "503"
    web = certificate(ca.issue("web.example.com"), "web.example.com")
    snap = passthrough_snapshot("direct.example.com", echo.port, generation=1, certificates=(web,),
                                extra_hosts=(terminate_host("web.example.com", web),))
    code, _ = await asyncio.to_thread(push, process, snap, tmp_path, "wrong-token")
    assert code == 401
    code, body = await asyncio.to_thread(push, process, snap, tmp_path)
    assert code == 200, body
    assert snap.checksum in body
    readyz = await asyncio.to_thread(curl, "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                                     str(process.ca_file), f"https://127.0.0.1:{process.admin}/readyz")
    assert readyz.stdout == "200"

    # passthrough, spoken by openssl s_client: the backend's certificate verifies against the backend CA
    ca_file = tmp_path / "backend-ca.crt"
    ca_file.write_text(backend_ca.cert_pem)
    line = await asyncio.to_thread(
        openssl_echo, ["-connect", f"127.0.0.1:{process.https}", "-servername", "direct.example.com",
                       "-verify_hostname", "direct.example.com", "-CAfile", str(ca_file), "-verify_return_error"],
        b"hello from openssl\n")
    assert line == b"hello from openssl\n"
    assert echo.records and echo.records[-1].sni == "direct.example.com"

    # terminate: curl verifies the edge's certificate for web.example.com with the edge CA
    edge_ca = tmp_path / "edge-ca.crt"
    edge_ca.write_text(ca.cert_pem)
    result = await asyncio.to_thread(
        curl, "-o", "/dev/null", "-w", "%{ssl_verify_result} %{http_version}", "--cacert", str(edge_ca),
        "--resolve", f"web.example.com:{process.https}:127.0.0.1", f"https://web.example.com:{process.https}/")
    assert result.stdout.startswith("0 "), result.stderr  # handshake verified; the HTTP answer is the engine's

    metrics = await asyncio.to_thread(curl, "--cacert", str(process.ca_file),
                                      f"https://127.0.0.1:{process.admin}/metrics")
    assert 'portcullis_passthrough_connections_total{result="routed"}' in metrics.stdout


async def test_sigterm_drains_a_live_passthrough_connection(
    process: Process, backend: tuple[TLSEcho, CA], tmp_path: Path
) -> None:
    echo, backend_ca = backend
    code, body = await asyncio.to_thread(push, process, passthrough_snapshot("direct.example.com", echo.port),
                                         tmp_path)
    assert code == 200, body
    ctx = ssl.create_default_context(cadata=backend_ca.cert_pem)
    reader, writer = await asyncio.open_connection("127.0.0.1", process.https, ssl=ctx,
                                                   server_hostname="direct.example.com")
    process.proc.send_signal(signal.SIGTERM)
    # new connections are refused once the listener is closed; the live one still works
    await eventually(lambda: not accepts(process.https), interval=0.05, what="new connections refused")
    assert process.proc.poll() is None  # still draining: refused by the closed listener, not a dead process
    writer.write(b"during drain")
    assert await asyncio.wait_for(reader.readexactly(12), 10) == b"during drain"
    writer.close()
    assert await asyncio.to_thread(process.proc.wait, 15) == 0


def test_refuses_plain_admin_on_public_bind() -> None:
    result = subprocess.run([*PORTCULLIS, "dataplane", "--bind", "0.0.0.0", "--https-port", "0", "--http-port", "0",
                             "--admin-port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 2
    assert "plain HTTP" in result.stderr


def test_echo_backends_for_the_examples(tmp_path: Path) -> None:
    """``python -m examples.backends --examples deploy/examples``: HTTP echo, HTTPS echo and TLS echo with the
    certificates of the examples' Secrets (verified against the examples' CA)."""
    http, https, tls = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.backends", "--examples", str(ROOT / "deploy" / "examples"),
         "--http-port", str(http), "--https-port", str(https), "--tls-port", str(tls)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        for port in (http, https, tls):
            wait_listening(port, proc)
        result = curl(f"http://127.0.0.1:{http}/hi", "-H", "X-Test: 1")
        echo = json.loads(result.stdout)
        assert echo["path"] == "/hi" and ["X-Test", "1"] in echo["headers"] and echo["tls"] is None
        ca_file = ROOT / "deploy" / "examples" / "ca.crt"
        result = curl("--cacert", str(ca_file), "--resolve", f"secure-web.demo.svc:{https}:127.0.0.1",
                      f"https://secure-web.demo.svc:{https}/s")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["tls"]["sni"] == "secure-web.demo.svc"
        # The passthrough backend answers HTTP over its own TLS with what it saw (curl, not HTTP/0.9).
        result = curl("--cacert", str(ca_file), "--resolve", f"direct.portcullis.test:{tls}:127.0.0.1",
                      f"https://direct.portcullis.test:{tls}/p")
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen["server"] == "tls-app" and seen["sni"] == "direct.portcullis.test" and seen["path"] == "/p"
        assert "direct.portcullis.test" in seen["certificate"]["dns_names"] and seen["proxy_protocol"] is None
    finally:
        stop(proc, 10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_a_worker_count_out_of_range_is_refused() -> None:
    result = subprocess.run([sys.executable, "-m", "controller.cli", "dataplane", "--workers", "0"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and "--workers 0" in result.stderr
