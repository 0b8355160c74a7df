"""Push encoding: bounded inflation (a bomb is refused, not inflated) and deltas that rebuild exactly the
rendered snapshot or are refused."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import replace

import pytest

from dataplane.push_body import BaseMismatch, BodyError, apply_delta, compress, decode_body, make_delta
from dataplane.snapshot import Certificate, Snapshot, SnapshotFormatError, TLSHost, content_id
from tests.pki import CA


def test_round_trip_and_identity() -> None:
    body = b'{"schema": 1}' * 1000
    assert decode_body(compress(body), "gzip", len(body)) == body
    assert decode_body(gzip.compress(body), " GZip ", len(body)) == body  # any spelling of the token
    assert decode_body(zlib.compress(body), "deflate", len(body)) == body
    assert decode_body(body, None, len(body)) == body
    assert decode_body(body, "identity", len(body)) == body


@pytest.mark.parametrize(("body", "encoding", "status", "words"), [
    (compress(b"\0" * 50_000_000), "gzip", 413, "inflates past"),  # 49 KB that would be 50 MB
    (zlib.compress(b"\0" * 50_000_000), "deflate", 413, "inflates past"),
    (b"x" * 1001, None, 413, "larger than the limit"),
    (compress(b"{}" * 100)[:-12], "gzip", 400, "truncated"),
    (b"\x1f\x8b\x08\x00garbage-not-deflate", "gzip", 400, "corrupt"),
    (compress(b"{}") + b"tail", "gzip", 400, "trailing"),
    (b"{}", "br", 415, "not supported"),
])
def test_bad_bodies_are_clear_4xx(body: bytes, encoding: str | None, status: int, words: str) -> None:
    with pytest.raises(BodyError) as info:
        decode_body(body, encoding, 1000)
    assert info.value.status == status and words in str(info.value)


def test_a_bomb_never_inflates_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inflater is asked for at most the limit plus one chunk, whatever the ratio."""
    asked: list[int] = []
    real = zlib.decompressobj

    class Spy:
        def __init__(self, wbits: int) -> None:
            self.inner = real(wbits)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            asked.append(max_length)
            return self.inner.decompress(data, max_length)

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Spy)
    with pytest.raises(BodyError):
        decode_body(compress(b"\0" * 200_000_000), "gzip", 1_000_000)
    assert asked and all(0 < n <= 64 * 1024 for n in asked) and len(asked) < 40


@pytest.fixture(scope="module")
def snapshots() -> tuple[Snapshot, Snapshot]:
    ca = CA()
    certs = []
    for name in ("a", "b", "c"):
        issued = ca.issue(f"{name}.example.com")
        certs.append(Certificate(content_id(issued.cert_pem, issued.key_pem), issued.cert_pem, issued.key_pem,
                                 (f"{name}.example.com",), 0))
    hosts = [TLSHost(f"{n}.example.com", "terminate", c.id) for n, c in zip("abc", certs, strict=True)]
    base = Snapshot(generation=5, certificates=tuple(certs[:2]), tls_hosts=tuple(hosts[:2])).canonical()
    target = Snapshot(generation=9, certificates=(certs[0], certs[2]), tls_hosts=(hosts[0], hosts[2])).canonical()
    return base, target


def test_delta_rebuilds_exactly_the_target(snapshots: tuple[Snapshot, Snapshot]) -> None:
    base, target = snapshots
    delta = make_delta(base, target)
    assert delta["keep_certificates"] == [c.id for c in base.certificates if c in target.certificates]
    assert len(delta["keep_certificates"]) == 1 and delta["base"] == base.checksum
    assert len(delta["snapshot"]["certificates"]) == 1  # only the new one travels
    rebuilt = apply_delta(base, base.checksum, delta)
    assert rebuilt.canonical().checksum == target.checksum == rebuilt.checksum
    assert rebuilt.canonical().to_json() == target.to_json() and rebuilt.generation == 9


def test_delta_on_another_base_is_refused(snapshots: tuple[Snapshot, Snapshot]) -> None:
    base, target = snapshots
    delta = make_delta(base, target)
    with pytest.raises(BaseMismatch):
        apply_delta(target, target.checksum, delta)  # this data plane serves something else
    with pytest.raises(BaseMismatch):
        apply_delta(None, None, delta)  # nothing applied yet (a restarted pod)
    stripped = replace(base, certificates=())
    with pytest.raises(BaseMismatch, match="does not hold"):
        apply_delta(stripped, base.checksum, delta)


@pytest.mark.parametrize("mangle", [
    lambda d: [],
    lambda d: {**d, "extra": 1},
    lambda d: {**d, "base": ""},
    lambda d: {**d, "keep_certificates": "x"},
    lambda d: {**d, "snapshot": {**d["snapshot"], "checksum": ""}},
    lambda d: {**d, "snapshot": "x"},
])
def test_malformed_deltas_are_format_errors(snapshots: tuple[Snapshot, Snapshot], mangle: object) -> None:
    base, target = snapshots
    with pytest.raises(SnapshotFormatError):
        apply_delta(base, base.checksum, mangle(make_delta(base, target)))  # type: ignore[operator]
