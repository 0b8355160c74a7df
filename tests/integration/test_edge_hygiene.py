"""Request hygiene at the edge, end to end: real clients -> the data plane (real TLS, optional client
auth) -> stdlib wsgiref backends, which map ``_`` and ``-`` in header names to the same environ key
(as gunicorn < 22, uWSGI and PHP do). Proves that no spelling of a trusted header and no spelling
of a path gets past the edge, and that malformed heads are answered at once."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from dataplane.runtime import DataPlane
from dataplane.snapshot import CABundle, ClientAuth, Endpoint, Pool, Route, Snapshot, VirtualHost, content_id
from tests.integration.conftest import certificate, client_context, raw_connect, terminate_host
from tests.integration.http_fixtures import Client, Response, proxy, read_response, start_echo
from tests.pki import CA, Issued

LOCAL = "127.0.0.1"
SPOOF = "6.6.6.6"
DROPPED = "portcullis_http_dropped_request_headers_total"
LOOPS = ("asyncio", "uvloop")


# --- a real WSGI backend -------------------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class WSGIBackend:
    """wsgiref in a thread; answers with the environ keys a WSGI application would read."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[dict[str, str]] = []
        self.server: WSGIServer = make_server(LOCAL, 0, self._app, handler_class=_Quiet)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        record = {k: str(v) for k, v in environ.items()
                  if k.startswith("HTTP_") or k in ("PATH_INFO", "QUERY_STRING", "REQUEST_METHOD")}
        record["backend"] = self.name
        self.requests.append(record)
        body = json.dumps(record).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def wsgi() -> Iterator[tuple[WSGIBackend, WSGIBackend]]:
    admin, public = WSGIBackend("A"), WSGIBackend("B")
    admin.thread.start()
    public.thread.start()
    try:
        yield admin, public
    finally:
        admin.close()
        public.close()


@pytest.fixture(scope="module")
def client_ca() -> CA:
    return CA("Hygiene Client CA")


def hygiene_snapshot(ca: CA, client_ca: CA, admin_port: int, public_port: int) -> Snapshot:
    cert = certificate(ca.issue("wsgi.test", "under.test", "deny.test"), "wsgi.test", "under.test", "deny.test")
    cca = CABundle(content_id(client_ca.cert_pem), client_ca.cert_pem)
    auth = ClientAuth(cca.id, "optional", forward_headers=True)
    a = Pool("demo/admin:80", (Endpoint(LOCAL, admin_port),))
    b = Pool("demo/public:80", (Endpoint(LOCAL, public_port),))
    routes = (Route("/admin", "Prefix", a.id), Route("/", "Prefix", b.id))
    return Snapshot(
        generation=1,
        certificates=(cert,),
        ca_bundles=(cca,),
        pools=(a, b),
        tls_hosts=(terminate_host("wsgi.test", cert, auth), terminate_host("under.test", cert, auth),
                   terminate_host("deny.test", cert)),
        virtual_hosts=(
            VirtualHost("wsgi.test", routes, tls=True, insecure_policy="redirect"),
            VirtualHost("under.test", routes, tls=True, insecure_policy="redirect", allow_underscore_headers=True),
            VirtualHost("deny.test", routes, tls=True, insecure_policy="deny"),
            VirtualHost("plain.test", routes),
        ),
    ).canonical()


@pytest.fixture
async def edge(dataplane: DataPlane, ca: CA, client_ca: CA,
               wsgi: tuple[WSGIBackend, WSGIBackend]) -> AsyncIterator[DataPlane]:
    assert dataplane.apply(hygiene_snapshot(ca, client_ca, wsgi[0].port, wsgi[1].port)) == []
    yield dataplane


async def https_get(dp: DataPlane, ca: CA, host: str, path: str, headers: list[tuple[str, str]],
                    cert: Issued | None = None) -> Response:
    client = await Client.open(dp.https_port, client_context(ca.cert_pem, cert=cert), host)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
        return await client.get(path, host=host, extra=extra)
    finally:
        await client.close()


async def plain(dp: DataPlane, raw: bytes) -> Response:
    client = await Client.open(dp.http_port)
    try:
        await client.send(raw)
        return await client.response()
    finally:
        await client.close()


def dropped(dp: DataPlane, reason: str) -> float:
    return dp.metrics.registry.get_sample_value(DROPPED, {"reason": reason}) or 0.0


# --- 1. header names ------------------------------------------------------------------------------

SPOOFED = [
    ("ssl_client_subject_dn", "CN=admin"), ("SSL_Client_Subject_DN", "CN=admin"), ("ssl_client_verify", "SUCCESS"),
    ("ssl-client_issuer_dn", "CN=evil"), ("ssl_client_cert", "evil"), ("X_Forwarded_For", SPOOF),
    ("x_forwarded-for", SPOOF), ("X_Real_IP", SPOOF), ("X_Forwarded_Proto", "http"), ("X_Forwarded_Host", "evil"),
    ("Proxy", "http://evil:1"), ("Forwarded", "for=6.6.6.6"),
]


def assert_nothing_spoofed(env: dict[str, str]) -> None:
    assert env["HTTP_X_FORWARDED_FOR"] == LOCAL
    assert env["HTTP_X_REAL_IP"] == LOCAL
    assert env["HTTP_X_FORWARDED_PROTO"] == "https"
    assert "HTTP_PROXY" not in env and "HTTP_FORWARDED" not in env
    assert "evil" not in env.get("HTTP_X_FORWARDED_HOST", "")
    assert not any(SPOOF in v or "CN=admin" in v or "CN=evil" in v for v in env.values()), env


async def test_spoofed_trusted_headers_never_reach_a_wsgi_backend(
    edge: DataPlane, ca: CA, client_ca: CA, wsgi: tuple[WSGIBackend, WSGIBackend]
) -> None:
    # optional client auth, no certificate: the edge says NONE and the spoofed subject is gone
    r = await https_get(edge, ca, "wsgi.test", "/", SPOOFED)
    assert r.status == 200
    env = r.json()
    assert env["backend"] == "B"
    assert env["HTTP_SSL_CLIENT_VERIFY"] == "NONE"
    assert "HTTP_SSL_CLIENT_SUBJECT_DN" not in env
    assert_nothing_spoofed(env)
    assert dropped(edge, "trusted") == len(SPOOFED)
    # with a verified certificate: the backend reads the real subject, never the spoofed one
    user = client_ca.issue("user.test", client=True, common_name="user")
    r = await https_get(edge, ca, "wsgi.test", "/", SPOOFED, cert=user)
    env = r.json()
    assert env["HTTP_SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert "CN=user" in env["HTTP_SSL_CLIENT_SUBJECT_DN"]
    assert_nothing_spoofed(env)


async def test_underscore_names_dropped_by_default_allowed_per_host(
    edge: DataPlane, ca: CA, wsgi: tuple[WSGIBackend, WSGIBackend]
) -> None:
    headers = [("My_Header", "kept"), ("X_Forwarded_For", SPOOF), ("Other-Header", "dash")]
    env = (await https_get(edge, ca, "wsgi.test", "/", headers)).json()
    assert "HTTP_MY_HEADER" not in env and env["HTTP_OTHER_HEADER"] == "dash"
    assert dropped(edge, "underscore") == 1
    env = (await https_get(edge, ca, "under.test", "/", headers)).json()
    assert env["HTTP_MY_HEADER"] == "kept" and env["HTTP_OTHER_HEADER"] == "dash"
    assert_nothing_spoofed(env)  # allowed underscores never extend to trusted names


async def test_curl_cannot_spoof_with_underscores(
    edge: DataPlane, ca: CA, tmp_path: Path, wsgi: tuple[WSGIBackend, WSGIBackend]
) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(ca.cert_pem)
    port = edge.https_port
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20", "--cacert", str(ca_file), "--resolve", f"wsgi.test:{port}:{LOCAL}",
        "--path-as-is", "-H", "X_Forwarded_For: 6.6.6.6", "-H", "ssl_client_subject_dn: CN=admin",
        f"https://wsgi.test:{port}/public/../admin", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    env = json.loads(out)
    assert env["backend"] == "A" and env["PATH_INFO"] == "/admin"
    assert_nothing_spoofed(env)


# --- 2. paths -------------------------------------------------------------------------------------

ADMIN_SPELLINGS = ["/admin", "/%61dmin", "/%61%64%6D%69%6E", "//admin", "/./admin", "/x/../admin", "/%2E/admin",
                   "/x/%2e%2e/admin", "///admin//", "/admin;x", "/;x/admin", "/admin;jsessionid=1/page",
                   "/public/../admin/page"]


def tomcat_view(path: str) -> str:
    """The path as Tomcat/Spring match it: ";params" removed per segment, empty segments merged."""
    return "/" + "/".join(seg.split(";")[0] for seg in path.split("/") if seg.split(";")[0])


@pytest.mark.parametrize("path", ADMIN_SPELLINGS)
async def test_every_spelling_of_admin_reaches_admin(
    edge: DataPlane, path: str, wsgi: tuple[WSGIBackend, WSGIBackend]
) -> None:
    r = await plain(edge, f"GET {path} HTTP/1.1\r\nHost: plain.test\r\n\r\n".encode())
    assert r.status == 200
    env = r.json()
    assert env["backend"] == "A", (path, env["PATH_INFO"])
    # what the framework reads (with or without Tomcat-style ";params" stripping) is what was routed
    assert env["PATH_INFO"].startswith(("/admin", "/;x/admin")) and tomcat_view(env["PATH_INFO"]).startswith("/admin")
    assert "//" not in env["PATH_INFO"] and "/." not in env["PATH_INFO"]
    assert wsgi[1].requests == []


@pytest.mark.parametrize(("path", "expected"), [("/", "/"), ("/adminx", "/adminx"), ("/%7Eu", "/~u"),
                                                ("/a?q=/../admin", "/a")])
async def test_other_paths_reach_the_default_backend(
    edge: DataPlane, path: str, expected: str, wsgi: tuple[WSGIBackend, WSGIBackend]
) -> None:
    env = (await plain(edge, f"GET {path} HTTP/1.1\r\nHost: plain.test\r\n\r\n".encode())).json()
    assert (env["backend"], env["PATH_INFO"]) == ("B", expected)


@pytest.mark.parametrize("path", ["/admin%2Fx", "/a%2fadmin", "/a%5Cadmin", "/a%00", "/a\\admin", "/..",
                                  "/../admin", "/%zz", "/a%2", "/public/..;/admin", "/public/.;/admin",
                                  "/public/%2e%2e;x/admin"])
async def test_unsafe_paths_refused(edge: DataPlane, path: str, wsgi: tuple[WSGIBackend, WSGIBackend]) -> None:
    r = await plain(edge, f"GET {path} HTTP/1.1\r\nHost: plain.test\r\n\r\n".encode())
    assert r.status == 400
    assert wsgi[0].requests == [] and wsgi[1].requests == []


@pytest.mark.parametrize(("host", "status"), [("wsgi.test", 308), ("deny.test", 403)])
async def test_acme_prefix_cannot_smuggle_dot_segments(
    edge: DataPlane, host: str, status: int, wsgi: tuple[WSGIBackend, WSGIBackend]
) -> None:
    for path in ("/.well-known/acme-challenge/../../admin", "/.well-known/acme-challenge/%2E%2E/x",
                 "/.well-known/acme-challenge/..%2F..%2Fadmin".replace("%2F", "/")):
        r = await plain(edge, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert r.status == status, path
        if status == 308:
            assert r.header("Location") in ("https://wsgi.test/admin", "https://wsgi.test/.well-known/x"), path
    assert wsgi[0].requests == [] and wsgi[1].requests == []
    r = await plain(edge, f"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert r.status == 200 and r.json()["PATH_INFO"] == "/.well-known/acme-challenge/tok"


async def test_options_asterisk_and_absolute_form(edge: DataPlane, wsgi: tuple[WSGIBackend, WSGIBackend]) -> None:
    r = await plain(edge, b"GET http://plain.test/x/../admin?q=1 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
    env = r.json()
    assert (env["backend"], env["PATH_INFO"], env["QUERY_STRING"]) == ("A", "/admin", "q=1")
    r = await plain(edge, b"OPTIONS * HTTP/1.1\r\nHost: plain.test\r\n\r\n")
    assert r.status in (200, 404)  # routed as "*" (no route matches "*" exactly): never a 400


# --- 3. framing: bare LF, header count -------------------------------------------------------------


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            return data
        data += piece


@pytest.mark.parametrize("raw", [b"GET / HTTP/1.1\nHost: plain.test\n\n", b"GET / HTTP/1.1\n",
                                 b"GET / HTTP/1.1\r\nHost: plain.test\n\n"])
async def test_bare_lf_answered_400_at_once(edge: DataPlane, raw: bytes) -> None:
    loop = asyncio.get_running_loop()
    sock = raw_connect(edge.http_port)
    sock.settimeout(5)  # the header timeout is 30 s: a hang fails this test
    try:
        started = time.monotonic()
        sock.sendall(raw)
        data = await loop.run_in_executor(None, _read_all, sock)
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert elapsed < 2.0


async def test_header_count_limit() -> None:
    """100 header lines pass, 101 get 431 and the connection closes (an aiohttp backend: wsgiref has a
    100-line limit of its own, which the edge's forwarding headers would trip first)."""
    def head(n: int) -> bytes:  # Host plus n-1 others: n header lines
        return b"GET / HTTP/1.1\r\nHost: plain.test\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(n - 1)) + \
            b"\r\n"

    backend = await start_echo()
    snap = Snapshot(pools=(Pool("p", (backend.endpoint,)),),
                    virtual_hosts=(VirtualHost("plain.test", (Route("/", "Prefix", "p"),)),)).canonical()
    async with proxy(snap) as px:
        client = await Client.open(px.port)
        try:
            await client.send(head(100))
            r = await read_response(client.reader)
            assert r.status == 200 and len(r.json()["headers"]) > 100
            await client.send(head(101))
            r = await read_response(client.reader)
            assert r.status == 431
            assert await client.closed()
        finally:
            await client.close()
    assert len(backend.requests) == 1
    backend.close()
