"""PROXY protocol headers: exact bytes of the spec's examples, round trips, and hostile input."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane import proxy_protocol as pp


def test_v1_ipv4_exact_bytes() -> None:
    assert pp.v1_header(("192.0.2.1", 56324), ("198.51.100.7", 443)) == (
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"
    )


def test_v1_ipv6_and_mapped_addresses() -> None:
    expected = b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 443\r\n"
    assert pp.v1_header(("2001:db8::1", 1000), ("2001:db8::2", 443)) == expected
    assert pp.v1_header(("::ffff:10.0.0.1", 1), ("::ffff:10.0.0.2", 2)) == b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"
    mixed = pp.parse(pp.v1_header(("10.0.0.1", 1), ("2001:db8::2", 2)))
    assert mixed.source is not None and ipaddress.IPv6Address(mixed.source[0]).ipv4_mapped == ipaddress.IPv4Address(
        "10.0.0.1"
    )


def test_v2_ipv4_with_authority_exact_bytes() -> None:
    data = pp.v2_header(("192.0.2.1", 56324), ("198.51.100.7", 443), authority="db.example.com")
    assert data[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    assert data[12:14] == b"\x21\x11"
    assert int.from_bytes(data[14:16], "big") == 12 + 3 + len("db.example.com")
    assert data[16:20] == bytes([192, 0, 2, 1])
    assert data[-17:] == b"\x02\x00\x0edb.example.com"


@pytest.mark.parametrize("authority", [None, "a.example.com"])
@pytest.mark.parametrize("src,dst", [(("10.1.2.3", 5), ("10.9.9.9", 443)), (("2001:db8::1", 6), ("::1", 8443))])
def test_round_trip(src: tuple[str, int], dst: tuple[str, int], authority: str | None) -> None:
    for data in (pp.v1_header(src, dst), pp.v2_header(src, dst, authority)):
        parsed = pp.parse(data + b"\x16\x03\x01")
        assert parsed.source == src and parsed.dest == dst and parsed.length == len(data)
    assert pp.parse(pp.v2_header(src, dst, authority)).authority == authority


def test_header_dispatch() -> None:
    assert pp.header("off", ("1.1.1.1", 1), ("2.2.2.2", 2)) == b""
    assert pp.header("v1", ("1.1.1.1", 1), ("2.2.2.2", 2)).startswith(b"PROXY TCP4")
    assert pp.header("v2", ("1.1.1.1", 1), ("2.2.2.2", 2)).startswith(pp.V2_SIGNATURE)


def test_partial_headers_need_more() -> None:
    for data in (pp.v1_header(("1.1.1.1", 1), ("2.2.2.2", 2)), pp.v2_header(("1.1.1.1", 1), ("2.2.2.2", 2), "x")):
        for cut in range(1, len(data)):
            with pytest.raises(pp.NeedMoreData):
                pp.parse(data[:cut])


def test_not_proxy() -> None:
    with pytest.raises(pp.ProxyHeaderError):
        pp.parse(b"\x16\x03\x01\x02\x00" + b"\x00" * 20)
    with pytest.raises(pp.ProxyHeaderError):
        pp.parse(b"PROXY " + b"A" * 200)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([b"", b"PROXY ", pp.V2_SIGNATURE]), st.binary(max_size=120))
def test_fuzz_only_documented_errors(prefix: bytes, rest: bytes) -> None:
    with contextlib.suppress(pp.NeedMoreData, pp.ProxyHeaderError):
        pp.parse(prefix + rest)
