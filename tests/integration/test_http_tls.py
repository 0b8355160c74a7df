"""TLS on both sides of the HTTP engine: reencrypt to real TLS backends (verification never silently
skipped), and HTTPS in front (SNI row vs Host, HSTS, client-certificate headers, curl)."""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from pathlib import Path

import pytest

from dataplane.snapshot import ClientAuth, TLSHost, UpstreamTLS
from tests.integration.http_fixtures import (
    LOCAL,
    Client,
    ca_bundle,
    certificate,
    client_context,
    forwarded,
    pool,
    proxy,
    server_context,
    snapshot,
    start_echo,
    vhost,
)
from tests.pki import CA

LOOPS = ("asyncio", "uvloop")  # production runs uvloop, whose transports differ in detail

BACKEND_NAME = "secure-web.demo.svc"


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    ca, other = CA("Backend CA"), CA("Unrelated CA")
    return {
        "ca": ca,
        "other": other,
        "backend": ca.issue(BACKEND_NAME),
        "client": ca.issue(client=True, common_name="portcullis-proxy"),
        "front_ca": (front := CA("Front CA")),
        "front": front.issue("secure.test", "app.test", "m.test"),
        "alice": front.issue(client=True, common_name="alice"),
    }


def reencrypt_snapshot(backend_port: int, tls: UpstreamTLS, pki: dict[str, object], **kw: object):  # type: ignore[no-untyped-def]
    from dataplane.snapshot import Endpoint

    cas = tuple(ca_bundle(pki[k]) for k in ("ca", "other"))  # type: ignore[arg-type]
    certs = (certificate(pki["client"]),)  # type: ignore[arg-type]
    return snapshot([vhost("app.test", ("/", "Prefix", "tls"))], [pool("tls", Endpoint(LOCAL, backend_port), tls=tls)],
                    cas=cas, certs=certs)


async def test_reencrypt_verifies_and_reuses_connections(pki: dict[str, object]) -> None:
    backend = await start_echo(server_context(pki["backend"]))  # type: ignore[arg-type]
    tls = UpstreamTLS(BACKEND_NAME, ca_bundle(pki["ca"]).id)  # type: ignore[arg-type]
    async with proxy(reencrypt_snapshot(backend.port, tls, pki)) as px:
        client = await Client.open(px.port)
        for i in range(5):
            r = await client.get(f"/r/{i}")
            assert r.status == 200 and r.json()["path"] == f"/r/{i}"
        await client.close()
        second = await Client.open(px.port)
        assert (await second.get("/again")).status == 200
        await second.close()
        assert backend.connections == 1  # one handshake for six requests from two clients
        assert px.table.upstreams["tls"].connects == 1
        assert px.metric("portcullis_insecure_upstream_pools") == 0
    backend.close()


@pytest.mark.parametrize(
    ("ca_key", "server_name", "reason"),
    [
        ("other", BACKEND_NAME, "tls_verify"),  # wrong CA
        ("ca", "wrong-name.demo.svc", "tls_verify"),  # right CA, wrong name
        (None, BACKEND_NAME, "tls_verify"),  # system trust does not know our private CA
    ],
)
async def test_reencrypt_never_silently_succeeds(
    pki: dict[str, object], ca_key: str | None, server_name: str, reason: str
) -> None:
    backend = await start_echo(server_context(pki["backend"]))  # type: ignore[arg-type]
    ca_id = ca_bundle(pki[ca_key]).id if ca_key else None  # type: ignore[arg-type]
    async with proxy(reencrypt_snapshot(backend.port, UpstreamTLS(server_name, ca_id), pki)) as px:
        client = await Client.open(px.port)
        r = await client.get("/secret")
        assert r.status == 502 and b"verification failed" in r.body
        assert px.metric("portcullis_upstream_failures_total", pool="tls", reason=reason) >= 1
        await client.close()
    assert backend.requests == []
    backend.close()


async def test_verify_false_is_explicit_and_counted(pki: dict[str, object]) -> None:
    backend = await start_echo(server_context(pki["backend"]))  # type: ignore[arg-type]
    tls = UpstreamTLS("anything", ca_bundle(pki["other"]).id, verify=False)  # type: ignore[arg-type]
    async with proxy(reencrypt_snapshot(backend.port, tls, pki)) as px:
        client = await Client.open(px.port)
        assert (await client.get("/")).status == 200
        assert px.metric("portcullis_insecure_upstream_pools") == 1
        await client.close()
    backend.close()


async def test_client_certificate_to_backend(pki: dict[str, object]) -> None:
    ca: CA = pki["ca"]  # type: ignore[assignment]
    ctx = server_context(pki["backend"])  # type: ignore[arg-type]
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca.cert_pem)
    backend = await start_echo(ctx)
    with_cert = UpstreamTLS(BACKEND_NAME, ca_bundle(ca).id, client_cert_id=certificate(pki["client"]).id)  # type: ignore[arg-type]
    async with proxy(reencrypt_snapshot(backend.port, with_cert, pki)) as px:
        client = await Client.open(px.port)
        assert (await client.get("/mtls")).status == 200
        await client.close()
    without = UpstreamTLS(BACKEND_NAME, ca_bundle(ca).id)
    async with proxy(reencrypt_snapshot(backend.port, without, pki)) as px:
        client = await Client.open(px.port)
        assert (await client.get("/mtls")).status == 502
        await client.close()
    assert [r["path"] for r in backend.requests] == ["/mtls"]
    backend.close()


def https_snapshot(backend_port: int, pki: dict[str, object]):  # type: ignore[no-untyped-def]
    from dataplane.snapshot import Endpoint

    front_ca: CA = pki["front_ca"]  # type: ignore[assignment]
    rows = (
        TLSHost("secure.test", "terminate"),
        TLSHost("m.test", "terminate", client_auth=ClientAuth(ca_bundle(front_ca).id, "optional",
                                                                forward_headers=True)),
    )
    return snapshot(
        [vhost("secure.test", ("/", "Prefix", "p"), tls=True, insecure_policy="redirect", hsts="max-age=31536000"),
         vhost("m.test", ("/", "Prefix", "p"), tls=True),
         vhost("app.test", ("/", "Prefix", "p"))],
        [pool("p", Endpoint(LOCAL, backend_port))],
        tls_hosts=rows, cas=(ca_bundle(front_ca),),
    ), rows


async def test_https_host_must_match_sni_row_and_hsts(pki: dict[str, object]) -> None:
    backend = await start_echo()
    snap, rows = https_snapshot(backend.port, pki)
    front_ctx = server_context(pki["front"])  # type: ignore[arg-type]
    async with proxy(snap, "https", front_ctx, tls_host=rows[0]) as px:
        ctx = client_context(pki["front_ca"])  # type: ignore[arg-type]
        client = await Client.open(px.port, ctx, "secure.test")
        r = await client.get("/", host="secure.test")
        assert r.status == 200 and r.header("Strict-Transport-Security") == "max-age=31536000"
        record = r.json()
        assert forwarded(record, "X-Forwarded-Proto") == ["https"]
        assert forwarded(record, "ssl-client-verify") == []  # this row does not forward cert headers
        r = await client.get("/", host="m.test")  # needs another SNI row (the one with client auth)
        assert r.status == 421
        r = await client.get("/", host="app.test")  # no row at all, but the connection used one
        assert r.status == 421
        await client.close()
    async with proxy(snap, "https", front_ctx, tls_host=None) as px:  # default certificate
        client = await Client.open(px.port, client_context(pki["front_ca"]), "app.test")  # type: ignore[arg-type]
        assert (await client.get("/", host="app.test")).status == 200
        assert (await client.get("/", host="secure.test")).status == 421
        await client.close()
    backend.close()


async def test_client_certificate_headers_forwarded(pki: dict[str, object]) -> None:
    backend = await start_echo()
    snap, rows = https_snapshot(backend.port, pki)
    front_ca: CA = pki["front_ca"]  # type: ignore[assignment]
    front_ctx = server_context(pki["front"], client_ca=front_ca)  # type: ignore[arg-type]
    alice = pki["alice"]
    async with proxy(snap, "https", front_ctx, tls_host=rows[1]) as px:
        ctx = client_context(front_ca)
        from dataplane import pem

        pem.load_key_pair(ctx, alice.cert_pem, alice.key_pem)  # type: ignore[attr-defined]
        client = await Client.open(px.port, ctx, "m.test")
        r = await client.get("/", host="m.test", extra="ssl-client-subject-dn: CN=admin\r\n")
        record = r.json()
        assert forwarded(record, "ssl-client-verify") == ["SUCCESS"]
        assert forwarded(record, "ssl-client-subject-dn") == ["CN=alice"]
        assert forwarded(record, "ssl-client-issuer-dn") == ["CN=Front CA"]
        sent = urllib.parse.unquote(forwarded(record, "ssl-client-cert")[0])
        assert ssl.PEM_cert_to_DER_cert(sent) == ssl.PEM_cert_to_DER_cert(alice.cert_pem)  # type: ignore[attr-defined]
        await client.close()
        anonymous = await Client.open(px.port, client_context(front_ca), "m.test")
        record = (await anonymous.get("/", host="m.test", extra="ssl-client-verify: SUCCESS\r\n")).json()
        assert forwarded(record, "ssl-client-verify") == ["NONE"]
        assert forwarded(record, "ssl-client-subject-dn") == []
        await anonymous.close()
    backend.close()


async def test_curl_over_https(pki: dict[str, object], tmp_path: Path) -> None:
    backend = await start_echo()
    snap, rows = https_snapshot(backend.port, pki)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(pki["front_ca"].cert_pem)  # type: ignore[attr-defined]
    async with proxy(snap, "https", server_context(pki["front"]), tls_host=rows[0]) as px:  # type: ignore[arg-type]
        url = f"https://secure.test:{px.port}/curl"
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-i", "--max-time", "20", "--cacert", str(ca_file),
            "--resolve", f"secure.test:{px.port}:{LOCAL}", url, url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        text = out.decode()
        assert text.count("HTTP/1.1 200") == 2
        assert "strict-transport-security: max-age=31536000" in text.lower()
        assert backend.connections == 1 and len(backend.requests) == 2
    backend.close()
