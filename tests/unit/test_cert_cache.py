"""The certificate-parse cache: a render with it equals a render without it, and it stays bounded."""

from __future__ import annotations

import time
from typing import Any

import pytest

from controller.certificates import ParseCache, ca_bundle, serving_certificate
from controller.model import Inputs, Secret
from controller.problems import ObjectRef
from controller.render import RenderConfig, render
from tests.pki import CA, unrelated_key_pem
from tests.unit import objects as k


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


def world(ca: CA, n: int, broken: int = -1) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [k.service("web"), k.endpoints("web", "10.0.0.1"), k.ingress_class("portcullis"),
                                  k.ca_secret("client-ca", ca.cert_pem)]
    for i in range(n):
        host = f"h{i}.example.com"
        issued = ca.issue(host)
        key = unrelated_key_pem() if i == broken else issued.key_pem
        annotations = {"portcullis.io/client-auth": "required", "portcullis.io/client-auth-secret": "client-ca"} \
            if i == 0 else None
        objs += [k.tls_secret(f"s{i}", issued.cert_pem, key),
                 k.ingress(f"i{i}", host, tls_secret=f"s{i}", annotations=annotations)]
    return objs


def secret(name: str, data: dict[str, str]) -> Secret:
    return Secret(ObjectRef("Secret", "shop", name), "kubernetes.io/tls", {k: v.encode() for k, v in data.items()})


def test_render_with_cache_equals_render_without(ca: CA) -> None:
    inputs, _ = Inputs.from_objects(world(ca, 6, broken=3))
    config = RenderConfig(now=int(time.time()))
    plain = render(inputs, config)
    cache = ParseCache()
    first = render(inputs, config, cache)
    assert cache.misses == 7 and cache.hits == 0  # 6 key pairs + the client CA
    second = render(inputs, config, cache)
    assert cache.misses == 7 and cache.hits == 7  # nothing parsed again
    for snapshot, problems in (first, second):
        assert snapshot.to_json() == plain[0].to_json() and snapshot.checksum == plain[0].checksum
        assert problems == plain[1]
    assert any(p.reason == "InvalidSecret" and "does not match" in p.message for p in plain[1])


def test_warnings_follow_the_clock_not_the_cache(ca: CA) -> None:
    issued = ca.issue("soon.example.com", days=5)
    cache = ParseCache()
    s = secret("soon", {"tls.crt": issued.cert_pem, "tls.key": issued.key_pem})
    far_past = int(time.time()) - 365 * 86400
    assert serving_certificate(s, far_past, cache).warnings == ()
    soon = serving_certificate(s, int(time.time()), cache)
    assert cache.hits == 1 and soon.warnings and "expires soon" in soon.warnings[0]
    assert soon == serving_certificate(s, int(time.time()))  # identical to an uncached check
    later = serving_certificate(s, int(time.time()) + 30 * 86400, cache)
    assert "expired" in later.warnings[0]
    expired_ca = CA("Old CA")
    bundle = secret("old", {"ca.crt": expired_ca.cert_pem})
    assert ca_bundle(bundle, int(time.time()) + 3651 * 86400, cache).warnings
    assert ca_bundle(bundle, int(time.time()), cache).warnings == ()


def test_keyed_by_content_not_by_name(ca: CA) -> None:
    a, b = ca.issue("a.example.com"), ca.issue("b.example.com")
    cache = ParseCache()
    one = serving_certificate(secret("x", {"tls.crt": a.cert_pem, "tls.key": a.key_pem}), 0, cache)
    other = serving_certificate(secret("x", {"tls.crt": b.cert_pem, "tls.key": b.key_pem}), 0, cache)
    assert one.certificate is not None and other.certificate is not None
    assert one.certificate.names == ("a.example.com",) and other.certificate.names == ("b.example.com",)
    assert cache.misses == 2
    # Same certificate with the wrong key: another entry, and the error is not served from the good one.
    wrong = serving_certificate(secret("y", {"tls.crt": a.cert_pem, "tls.key": b.key_pem}), 0, cache)
    assert wrong.certificate is None and "does not match" in wrong.error and cache.misses == 3
    # A missing key names the Secret: never cached, never confused between Secrets.
    assert "shop/z" in serving_certificate(secret("z", {"tls.crt": a.cert_pem}), 0, cache).error


def test_bounded_least_recently_used() -> None:
    cache = ParseCache(max_entries=2)
    calls: list[str] = []

    def parse(value: str) -> str:
        calls.append(value)
        return value

    for value in ("a", "b", "a", "c", "a", "b"):
        assert cache.get("t", (value.encode(),), lambda v=value: parse(v)) == value  # type: ignore[misc]
    assert len(cache) == 2
    assert calls == ["a", "b", "c", "b"]  # "a" stayed (recently used), "b" was evicted by "c"
    # Length-prefixed parts: ("ab", "c") and ("a", "bc") are different keys.
    assert cache.get("t", (b"ab", b"c"), lambda: 1) == 1
    assert cache.get("t", (b"a", b"bc"), lambda: 2) == 2
    with pytest.raises(ValueError):
        ParseCache(0)
