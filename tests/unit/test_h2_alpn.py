"""ALPN per TLS row (h2 then http/1.1 unless the row opts out) and the app factory's choice of engine.

The handshakes here are real (two ``SSLObject``s over memory BIOs), so what is checked is what OpenSSL
negotiates, not what a list says.
"""

from __future__ import annotations

import argparse
import ssl
from dataclasses import replace

import pytest

from dataplane.http.connection import HTTPProtocol
from dataplane.http.info import ConnectionInfo
from dataplane.http2.guard import H2Limits
from dataplane.http2.server import H2ServerProtocol
from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.server import add_arguments, config_from_args
from dataplane.snapshot import Certificate, Snapshot, TLSHost, content_id
from dataplane.tls import build_tls_table, generate_fallback_certificate, server_context
from tests.pki import CA

FALLBACK = generate_fallback_certificate()


def negotiate(server: ssl.SSLContext, offer: list[str] | None, name: str = "web.example.com") -> str | None:
    """The protocol a real handshake between ``server`` and a client offering ``offer`` selects."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    if offer:
        client.set_alpn_protocols(offer)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = True
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                done = False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done:
            break
    assert c.selected_alpn_protocol() == s.selected_alpn_protocol()
    return c.selected_alpn_protocol()


@pytest.fixture(scope="module")
def cert() -> Certificate:
    issued = CA("alpn test CA").issue("web.example.com")
    return Certificate(content_id(issued.cert_pem, issued.key_pem), issued.cert_pem, issued.key_pem,
                       ("web.example.com",))


def test_server_context_offers_h2_first(cert: Certificate) -> None:
    ctx = server_context(cert)
    assert negotiate(ctx, ["h2", "http/1.1"]) == "h2"
    assert negotiate(ctx, ["http/1.1", "h2"]) == "h2"  # the server's preference decides
    assert negotiate(ctx, ["http/1.1"]) == "http/1.1"
    assert negotiate(ctx, None) is None


def test_server_context_without_http2(cert: Certificate) -> None:
    ctx = server_context(cert, http2=False)
    assert negotiate(ctx, ["h2", "http/1.1"]) == "http/1.1"


def snapshot(cert: Certificate) -> Snapshot:
    rows = (TLSHost("web.example.com", "terminate", cert.id),
            TLSHost("old.example.com", "terminate", cert.id, http2=False))
    return Snapshot(generation=1, certificates=(cert,), tls_hosts=rows).canonical()


def test_tls_table_rows_and_default(cert: Certificate) -> None:
    tls, errors = build_tls_table(snapshot(cert), FALLBACK)
    assert tls is not None, errors
    h2_row, h1_row = tls.lookup("web.example.com"), tls.lookup("old.example.com")
    assert negotiate(tls.context_for(h2_row), ["h2", "http/1.1"]) == "h2"
    assert negotiate(tls.context_for(h1_row), ["h2", "http/1.1"]) == "http/1.1"
    assert negotiate(tls.context_for(None), ["h2", "http/1.1"]) == "h2"  # default certificate
    # same certificate, different ALPN: two contexts, each kept for the next apply
    assert tls.context_for(h2_row) is not tls.context_for(h1_row)
    again, _ = build_tls_table(snapshot(cert), FALLBACK, tls)
    assert again is not None
    assert again.context_for(again.lookup("old.example.com")) is tls.context_for(h1_row)
    assert again.context_for(again.lookup("web.example.com")) is tls.context_for(h2_row)


def test_tls_table_without_h2_at_all(cert: Certificate) -> None:
    tls, _ = build_tls_table(snapshot(cert), FALLBACK, offer_h2=False)
    assert tls is not None
    for name in ("web.example.com", "old.example.com"):
        assert negotiate(tls.context_for(tls.lookup(name)), ["h2", "http/1.1"]) == "http/1.1"
    assert negotiate(tls.context_for(None), ["h2", "http/1.1"]) == "http/1.1"
    assert negotiate(tls.context_for(None), ["h2"]) is None  # no overlap: no protocol, not h2


async def test_app_factory_picks_the_engine_by_protocol() -> None:
    dp = DataPlane(DataPlaneConfig(admin_enabled=False))
    app = dp._app_factory()
    info = ConnectionInfo("https", ("127.0.0.1", 1), 443)
    assert isinstance(app(info), HTTPProtocol)
    assert isinstance(app(replace(info, protocol="h2")), H2ServerProtocol)
    assert isinstance(app(ConnectionInfo("http")), HTTPProtocol)


async def test_http2_switched_off_offers_http11_only(cert: Certificate) -> None:
    dp = DataPlane(DataPlaneConfig(admin_enabled=False, http2=False))
    assert dp.apply(snapshot(cert)) == []
    tls = dp.tls_table
    assert negotiate(tls.context_for(tls.lookup("web.example.com")), ["h2", "http/1.1"]) == "http/1.1"
    assert negotiate(tls.context_for(None), ["h2", "http/1.1"]) == "http/1.1"


def test_h2_limits_from_config() -> None:
    cfg = DataPlaneConfig(h2_max_resets_per_second=7, h2_max_concurrent_streams=3)
    limits = cfg.h2_limits()
    assert (limits.max_resets_per_second, limits.max_concurrent_streams) == (7, 3)
    assert limits.max_pings_per_second == 50


def cli_config(*argv: str) -> DataPlaneConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_cli_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    default = cli_config()
    assert default.http2 and default.h2_limits() == H2Limits()
    cfg = cli_config("--http2", "false", "--h2-max-resets-per-second", "20", "--h2-max-continuation-frames", "4",
                     "--h2-max-concurrent-streams", "10", "--h2-max-pings-per-second", "5",
                     "--h2-max-settings-per-second", "6", "--h2-max-empty-frames-per-second", "7",
                     "--h2-max-window-updates-per-second", "8", "--h2-max-priority-per-second", "9")
    assert not cfg.http2
    assert cfg.h2_limits() == H2Limits(10, 20, 4, 6, 5, 7, 8, 9)
    monkeypatch.setenv("PORTCULLIS_H2_MAX_RESETS_PER_SECOND", "99")  # as the chart sets flags
    assert cli_config().h2_max_resets_per_second == 99
    monkeypatch.setenv("PORTCULLIS_H2_MAX_PRIORITY_PER_SECOND", "77")
    assert cli_config().h2_limits().max_priority_per_second == 77
    for bad in (("--h2-max-resets-per-second", "0"), ("--http2", "maybe"), ("--h2-max-pings-per-second", "x")):
        with pytest.raises(SystemExit):
            cli_config(*bad)
