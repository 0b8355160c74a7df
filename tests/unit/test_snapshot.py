"""Snapshot contract: canonical form, checksum, strict round trip, and validate() with real PEM."""

from __future__ import annotations

import dataclasses
import random

import pytest

from dataplane.snapshot import (
    CABundle,
    Certificate,
    ClientAuth,
    Endpoint,
    Pool,
    Route,
    Snapshot,
    SnapshotFormatError,
    TLSHost,
    UpstreamTLS,
    VirtualHost,
    content_id,
    validate,
)
from tests.pki import CA, unrelated_key_pem


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


def _cert(ca: CA, *names: str, expired: bool = False) -> Certificate:
    issued = ca.issue(*names, expired=expired)
    return Certificate(content_id(issued.cert_pem, issued.key_pem), issued.cert_pem, issued.key_pem, names)


def _snapshot(ca: CA) -> Snapshot:
    web = _cert(ca, "web.example.com")
    bundle = CABundle(content_id(ca.cert_pem), ca.cert_pem)
    return Snapshot(
        generation=7,
        default_certificate_id=web.id,
        certificates=(web,),
        ca_bundles=(bundle,),
        pools=(
            Pool("default/web:80", (Endpoint("10.0.0.2", 8080), Endpoint("10.0.0.1", 8080))),
            Pool("default/db:443", (Endpoint("10.0.0.3", 8443),), proxy_protocol="v2"),
            Pool("default/api:443", (Endpoint("10.0.0.4", 8443),), tls=UpstreamTLS("api.default.svc", bundle.id)),
        ),
        tls_hosts=(
            TLSHost("web.example.com", "terminate", web.id, client_auth=ClientAuth(bundle.id)),
            TLSHost("db.example.com", "passthrough", pool_id="default/db:443"),
        ),
        virtual_hosts=(
            VirtualHost(
                "web.example.com",
                (Route("/", "Prefix", "default/web:80"), Route("/api", "Prefix", "default/api:443")),
                tls=True,
                insecure_policy="redirect",
                hsts="max-age=31536000",
            ),
        ),
    )


def test_round_trip_is_exact(ca: CA) -> None:
    snap = _snapshot(ca).canonical()
    again = Snapshot.from_json(snap.to_json())
    assert again == snap
    assert again.checksum == snap.checksum
    assert validate(again) == []


def test_checksum_ignores_order_and_generation(ca: CA) -> None:
    snap = _snapshot(ca)
    shuffled = dataclasses.replace(
        snap,
        pools=tuple(random.Random(1).sample(snap.pools, len(snap.pools))),
        tls_hosts=tuple(reversed(snap.tls_hosts)),
        generation=99,
    )
    assert shuffled.canonical().checksum == snap.canonical().checksum
    assert shuffled.canonical().to_json() != snap.canonical().to_json()  # generation still travels


def test_routes_most_specific_first(ca: CA) -> None:
    vhost = _snapshot(ca).canonical().virtual_hosts[0]
    assert [r.path for r in vhost.routes] == ["/api", "/"]


def test_redaction_hides_keys(ca: CA) -> None:
    snap = _snapshot(ca).canonical()
    text = snap.to_json(redact_keys=True)
    assert "PRIVATE KEY" not in text
    assert "<redacted sha256:" in text


def test_strict_parsing_rejects_unknown_fields() -> None:
    with pytest.raises(SnapshotFormatError):
        Snapshot.from_json('{"schema": 1, "generation": 0, "pools": [{"id": "x", "bogus": 1}]}')
    with pytest.raises(SnapshotFormatError):
        Snapshot.from_json("not json")


def test_fields_added_after_schema_1_are_left_out_at_their_default() -> None:
    """A data plane of the previous release refuses unknown fields: during a rolling upgrade it must still accept
    every snapshot that does not use a new setting (docs/contracts.md, section 3)."""
    plain = Snapshot(pools=(Pool("web/svc:80"),)).canonical()
    assert "upgrade_idle_timeout" not in plain.to_json()
    previous_release_pool = set(Pool.__dataclass_fields__) - {"upgrade_idle_timeout"}
    assert set(plain.to_dict()["pools"][0]) == previous_release_pool
    assert Snapshot.from_json(plain.to_json()) == plain
    used = Snapshot(pools=(Pool("web/svc:80", upgrade_idle_timeout=86400.0),)).canonical()
    assert '"upgrade_idle_timeout":86400.0' in used.to_json()
    assert Snapshot.from_json(used.to_json()) == used and used.checksum != plain.checksum


def test_validate_finds_every_problem(ca: CA) -> None:
    good = _cert(ca, "a.example.com")
    mismatched = dataclasses.replace(_cert(ca, "b.example.com"), id="mismatch", key_pem=unrelated_key_pem())
    broken = Certificate("broken", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", good.key_pem)
    snap = Snapshot(
        default_certificate_id="missing",
        certificates=(good, mismatched, broken),
        pools=(Pool("p", (Endpoint("10.0.0.1", 0),)),),
        tls_hosts=(
            TLSHost("a.example.com", "terminate", "nope"),
            TLSHost("a.example.com", "passthrough", pool_id="absent"),
            TLSHost("*.*.example.com", "terminate", good.id),
        ),
        virtual_hosts=(VirtualHost("a.example.com", (Route("/", "Prefix", "gone"),)),),
    )
    problems = "\n".join(validate(snap))
    assert "default certificate missing" in problems
    assert "certificate mismatch: private key does not match the certificate" in problems
    assert "certificate broken: certificate or key does not parse" in problems
    assert "has no valid port" in problems
    assert "duplicate SNI" in problems
    assert "certificate nope is not in the snapshot" in problems
    assert "passthrough pool 'absent'" in problems
    assert "single leading wildcard" in problems
    assert "pool 'gone' is not in the snapshot" in problems


def test_validate_rejects_unknown_schema() -> None:
    assert "unknown schema version" in validate(Snapshot(schema=99))[0]


def test_tampered_checksum_is_refused(ca: CA) -> None:
    snap = dataclasses.replace(_snapshot(ca).canonical(), default_certificate_id=None)
    assert "checksum does not match the snapshot content" in validate(snap)


def test_expired_certificate_still_loads(ca: CA) -> None:
    """Expiry is the renderer's Warning, not a reason to refuse a snapshot (nginx serves it too)."""
    expired = _cert(ca, "old.example.com", expired=True)
    snap = Snapshot(certificates=(expired,), tls_hosts=(TLSHost("old.example.com", "terminate", expired.id),))
    assert validate(snap) == []
