"""Access log end to end: real clients through a real data plane; the lines are read from the pipe it writes.

Every JSON line is checked against ``SCHEMA`` (each field present, of its type, nothing else), then the
values that request should have produced. A stdout nobody reads must not slow serving: lines are dropped
and counted instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dataplane.access_log import HTTP_FIELDS, AccessLog, AccessLogFormat
from dataplane.metrics import Metrics
from dataplane.runtime import DataPlane, DataPlaneConfig
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
from examples.backends import HTTPEcho, TLSEcho, server_context
from tests.integration.conftest import TOKEN, certificate, client_context, tls_roundtrip
from tests.integration.http_fixtures import Client
from tests.pki import CA
from tests.waiting import eventually

STR, INT, NUM, BOOL, NULL = (str,), (int,), (int, float), (bool,), (type(None),)
# field -> the JSON types it may have (a JSON Schema "type" list, spelled as Python types)
SCHEMA: dict[str, tuple[type, ...]] = {
    "time": STR, "client_addr": STR, "client_port": INT, "sni": STR + NULL, "tls_version": STR + NULL,
    "tls_cipher": STR + NULL, "tls_resumed": BOOL + NULL, "host": STR + NULL, "method": STR + NULL,
    "path": STR + NULL, "http_version": STR + NULL, "status": INT, "bytes_in": INT, "bytes_out": INT,
    "duration": NUM, "upstream": STR + NULL, "upstream_connect_time": NUM + NULL,
    "upstream_response_time": NUM + NULL, "mode": STR, "request_id": STR + NULL, "namespace": STR + NULL,
    "ingress": STR + NULL, "client_subject": STR + NULL, "protocol": STR + NULL,
}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def check_schema(line: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(line)
    assert set(record) == set(SCHEMA) == set(HTTP_FIELDS), sorted(set(record) ^ set(SCHEMA))
    for name, types in SCHEMA.items():
        value = record[name]
        assert isinstance(value, types) and not (isinstance(value, bool) and bool not in types), (name, value)
    assert TIME.match(record["time"]), record["time"]
    assert record["mode"] in ("http", "offload", "reencrypt", "passthrough")
    assert record["duration"] >= 0 and record["bytes_in"] >= 0 and record["bytes_out"] >= 0
    return record


class LogPipe:
    """The read end of the pipe the access log writes to, read without blocking."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self._data = b""

    def lines(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 65536):
                self._data += chunk
        return self._data.decode().splitlines()

    async def wait_lines(self, n: int) -> list[str]:
        """The lines written so far, once there are at least ``n``."""
        await eventually(lambda: len(self.lines()) >= n, what=f"{n} access-log lines")
        return self.lines()

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


@dataclass
class Rig:
    dp: DataPlane
    log: LogPipe
    metrics: Metrics

    async def all_written(self) -> list[str]:
        """Every line of the exchanges so far, once the data plane has nothing left to log: no passthrough
        connection open (a tunnel is logged as it closes), the buffer handed over, the writer thread done."""
        await eventually(lambda: self.metrics.registry.get_sample_value(
            "portcullis_active_connections", {"listener": "https", "mode": "passthrough"}) == 0,
            what="passthrough connections closed")
        self.dp.access_log.flush()
        await eventually(lambda: self.dp.access_log.pending == 0, what="the access-log writer idle")
        return self.log.lines()


@contextlib.asynccontextmanager
async def rig(fmt: AccessLogFormat = "json", pipe: LogPipe | None = None, max_pending: int = 20000,
              ) -> AsyncIterator[Rig]:
    pipe = pipe or LogPipe()
    metrics = Metrics()
    alog = AccessLog(fmt, metrics.access_log_dropped_lines, metrics.access_log_lines, fd=pipe.write_fd,
                     max_pending=max_pending)
    dp = DataPlane(DataPlaneConfig(bind="127.0.0.1", https_port=0, http_port=0, admin_port=0, admin_token=TOKEN,
                                   drain_timeout=0.5, access_log=fmt), metrics, access_log=alog)
    await dp.start()
    try:
        yield Rig(dp, pipe, metrics)
    finally:
        await dp.stop(drain_timeout=0)
        pipe.close()


@pytest.fixture
async def backends(backend_ca: CA) -> AsyncIterator[tuple[HTTPEcho, HTTPEcho, TLSEcho]]:
    issued = backend_ca.issue("secure-web.demo.svc")
    plain, secure = HTTPEcho("web"), HTTPEcho("secure-web", server_context(issued.cert_pem, issued.key_pem))
    leaf = backend_ca.issue("direct.example.com")
    direct = TLSEcho(server_context(leaf.cert_pem, leaf.key_pem))
    for b in (plain, secure, direct):
        await b.start()
    try:
        yield plain, secure, direct
    finally:
        for b in (plain, secure, direct):
            await b.close()


def world(ca: CA, backend_ca: CA, client_ca: CA, plain: int, secure: int, direct: int,
          quiet: bool = False) -> Snapshot:
    """app.example.com (offload, client certificates verified), bridge.example.com (reencrypt), plain
    http.example.com with /quiet from an Ingress that opted out, direct.example.com (passthrough)."""
    app = certificate(ca.issue("app.example.com", "bridge.example.com"), "app.example.com")
    bca = CABundle(content_id(backend_ca.cert_pem), backend_ca.cert_pem)
    cca = CABundle(content_id(client_ca.cert_pem), client_ca.cert_pem)
    web = Pool("demo/web:80", (Endpoint("127.0.0.1", plain),))
    sweb = Pool("demo/secure-web:443", (Endpoint("127.0.0.1", secure),), tls=UpstreamTLS("secure-web.demo.svc", bca.id))
    tcp = Pool("demo/direct:443", (Endpoint("127.0.0.1", direct),))
    return Snapshot(
        generation=1, certificates=(app,), ca_bundles=(bca, cca), pools=(web, sweb, tcp),
        tls_hosts=(
            TLSHost("app.example.com", "terminate", app.id, client_auth=ClientAuth(cca.id, "optional"),
                    source="Ingress demo/app"),
            TLSHost("bridge.example.com", "terminate", app.id, source="Ingress demo/bridge"),
            TLSHost("direct.example.com", "passthrough", pool_id=tcp.id, source="Ingress demo/direct",
                    access_log=not quiet),
        ),
        virtual_hosts=(
            VirtualHost("app.example.com", (Route("/", "Prefix", web.id, source="Ingress demo/app"),), tls=True),
            VirtualHost("bridge.example.com", (Route("/", "Prefix", sweb.id, source="Ingress demo/bridge"),),
                        tls=True),
            VirtualHost("http.example.com", (
                Route("/", "Prefix", web.id, source="Ingress demo/loud"),
                Route("/quiet", "Prefix", web.id, source="Ingress demo/quiet", access_log=False),
            )),
        ),
    ).canonical()


async def get(port: int, host: str, path: str, ctx: ssl.SSLContext | None = None, extra: str = "") -> int:
    client = await Client.open(port, ctx, host)
    try:
        return (await client.get(path, host, extra + "Connection: close\r\n")).status
    finally:
        await client.close()


@pytest.fixture(scope="module")
def client_ca() -> CA:
    return CA("Access Log Client CA")


async def test_one_json_line_per_request_and_per_passthrough_connection(
        ca: CA, backend_ca: CA, client_ca: CA, backends: tuple[HTTPEcho, HTTPEcho, TLSEcho]) -> None:
    plain, secure, direct = backends
    async with rig() as r:
        assert r.dp.apply(world(ca, backend_ca, client_ca, plain.port, secure.port, direct.port)) == []
        https = r.dp.https_port
        user = client_ca.issue("alice", client=True)
        assert await get(r.dp.http_port, "http.example.com", "/a/../b?token=secret",
                         extra="Authorization: Bearer hunter2\r\nCookie: s=hunter3\r\n") == 200
        assert await get(https, "app.example.com", "/x", client_context(ca.cert_pem, cert=user)) == 200
        assert await get(https, "bridge.example.com", "/y", client_context(ca.cert_pem)) == 200
        assert await get(r.dp.http_port, "nowhere.example.com", "/") == 404
        echo, _, _ = await tls_roundtrip(https, "direct.example.com", client_context(backend_ca.cert_pem))
        assert echo == b"ping\n"
        lines = await r.log.wait_lines(5)
        raw = "\n".join(lines)
        for secret in ("hunter2", "hunter3", "token=secret", "Bearer"):
            assert secret not in raw  # no credentials, no query string
        records = [check_schema(line) for line in lines]
        by_host = {rec["sni"] if rec["mode"] == "passthrough" else rec["host"]: rec for rec in records}
        assert len(records) == 5

        plain_rec = by_host["http.example.com"]
        assert plain_rec | {"time": "", "client_port": 0, "duration": 0, "upstream_connect_time": 0,
                            "upstream_response_time": 0, "request_id": "", "bytes_in": 0, "bytes_out": 0} == {
            "time": "", "client_addr": "127.0.0.1", "client_port": 0, "sni": None, "tls_version": None,
            "tls_cipher": None, "tls_resumed": None, "host": "http.example.com", "method": "GET", "path": "/b",
            "http_version": "HTTP/1.1", "status": 200, "bytes_in": 0, "bytes_out": 0, "duration": 0,
            "upstream": f"127.0.0.1:{plain.port}", "upstream_connect_time": 0, "upstream_response_time": 0,
            "mode": "http", "request_id": "", "namespace": "demo", "ingress": "loud", "client_subject": None,
            "protocol": "http/1.1",
        }
        assert plain_rec["client_port"] > 0 and len(plain_rec["request_id"]) == 32
        assert plain_rec["bytes_in"] > 60 and plain_rec["bytes_out"] > 100
        assert 0 <= plain_rec["upstream_connect_time"] <= plain_rec["upstream_response_time"] \
            <= plain_rec["duration"]

        offload = by_host["app.example.com"]
        assert (offload["mode"], offload["sni"], offload["path"], offload["ingress"]) == \
            ("offload", "app.example.com", "/x", "app")
        assert offload["tls_version"] in ("TLSv1.2", "TLSv1.3") and offload["tls_cipher"]
        assert offload["tls_resumed"] is False
        assert offload["client_subject"] == "CN=alice"

        reencrypt = by_host["bridge.example.com"]
        assert (reencrypt["mode"], reencrypt["upstream"], reencrypt["client_subject"]) == \
            ("reencrypt", f"127.0.0.1:{secure.port}", None)

        unknown = by_host["nowhere.example.com"]
        assert (unknown["status"], unknown["upstream"], unknown["ingress"], unknown["upstream_connect_time"]) == \
            (404, None, "", None)

        tunnel = by_host["direct.example.com"]
        assert (tunnel["mode"], tunnel["status"], tunnel["upstream"], tunnel["namespace"], tunnel["ingress"]) == \
            ("passthrough", 200, f"127.0.0.1:{direct.port}", "demo", "direct")
        assert tunnel["method"] is None and tunnel["tls_version"] is None and tunnel["protocol"] is None
        assert tunnel["bytes_in"] > 200 and tunnel["bytes_out"] > 200  # handshakes both ways, then the echo
        assert r.metrics.registry.get_sample_value("portcullis_access_log_lines_total") == 5


async def test_an_ingress_that_opts_out_is_not_logged_and_others_on_the_host_still_are(
        ca: CA, backend_ca: CA, client_ca: CA, backends: tuple[HTTPEcho, HTTPEcho, TLSEcho]) -> None:
    plain, secure, direct = backends
    async with rig() as r:
        assert r.dp.apply(world(ca, backend_ca, client_ca, plain.port, secure.port, direct.port, quiet=True)) == []
        assert await get(r.dp.http_port, "http.example.com", "/quiet/1") == 200
        echo, _, _ = await tls_roundtrip(r.dp.https_port, "direct.example.com", client_context(backend_ca.cert_pem))
        assert echo == b"ping\n"
        assert await get(r.dp.http_port, "http.example.com", "/loud") == 200
        lines = await r.all_written()  # had the quiet ones been logged, they would be here
        assert [check_schema(line)["path"] for line in lines] == ["/loud"]


async def test_text_format_is_nginx_combined_like(
        ca: CA, backend_ca: CA, client_ca: CA, backends: tuple[HTTPEcho, HTTPEcho, TLSEcho]) -> None:
    plain, secure, direct = backends
    async with rig("text") as r:
        assert r.dp.apply(world(ca, backend_ca, client_ca, plain.port, secure.port, direct.port)) == []
        status = await get(r.dp.http_port, "http.example.com", '/a"b%0Ac?q=1')  # the backend's answer
        [line] = await r.log.wait_lines(1)
        match = re.match(r'^127\.0\.0\.1 - - \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] "GET (\S+) HTTP/1\.1" '
                         rf'{status} (\d+) host="http\.example\.com" port=\d+ in=\d+ rt=\d+\.\d{{3}} '
                         r'upstream=127\.0\.0\.1:\d+ uct=\d+\.\d{3} urt=\d+\.\d{3} mode=http id=[0-9a-f]{32} '
                         r'ingress=demo/loud sni="-" '
                         r'tls=- subject="-" proto=http/1\.1$', line)
        assert match, line
        assert '"' not in match.group(2) and "\n" not in match.group(2) and "q=1" not in match.group(2)
        assert int(match.group(3)) > 100  # bytes sent: head and body


async def test_off_writes_nothing(ca: CA, backend_ca: CA, client_ca: CA,
                                  backends: tuple[HTTPEcho, HTTPEcho, TLSEcho]) -> None:
    plain, secure, direct = backends
    async with rig("off") as r:
        assert r.dp.apply(world(ca, backend_ca, client_ca, plain.port, secure.port, direct.port)) == []
        assert await get(r.dp.http_port, "http.example.com", "/") == 200
        echo, _, _ = await tls_roundtrip(r.dp.https_port, "direct.example.com", client_context(backend_ca.cert_pem))
        assert echo == b"ping\n"
        assert await r.all_written() == []


@contextlib.contextmanager
def full_pipe() -> Iterator[LogPipe]:
    """A pipe whose buffer is already full and which nobody reads: every write to it blocks."""
    pipe = LogPipe()
    os.set_blocking(pipe.write_fd, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(pipe.write_fd, b"x" * 65536)
    os.set_blocking(pipe.write_fd, True)
    yield pipe


async def test_a_stdout_nobody_reads_never_stalls_serving_and_counts_dropped_lines(
        ca: CA, backend_ca: CA, client_ca: CA, backends: tuple[HTTPEcho, HTTPEcho, TLSEcho]) -> None:
    plain, secure, direct = backends
    with full_pipe() as pipe:
        async with rig(pipe=pipe, max_pending=50) as r:
            assert r.dp.apply(world(ca, backend_ca, client_ca, plain.port, secure.port, direct.port)) == []
            client = await Client.open(r.dp.http_port)
            started = time.monotonic()
            for i in range(400):
                assert (await client.get(f"/{i}", "http.example.com")).status == 200
            elapsed = time.monotonic() - started
            await client.close()
            r.dp.access_log.flush()
            dropped = r.metrics.registry.get_sample_value("portcullis_access_log_dropped_lines_total")
            assert dropped is not None and dropped >= 400 - 50 - 256  # at most what is queued and buffered stays
            assert r.metrics.registry.get_sample_value("portcullis_access_log_lines_total") == 0
            assert elapsed < 20, elapsed  # serving went on (a blocked write on the loop would hang here)
            # the admin API answers too
            reader, writer = await asyncio.open_connection("127.0.0.1", r.dp.admin_port)
            writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
            writer.close()
