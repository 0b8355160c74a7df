"""ClientHello parser: real ClientHellos from OpenSSL (via Python's ssl), fragmentation, and fuzzing."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane import clienthello as ch


def real_client_hello(server_name: str | None = "app.example.com", alpn: list[str] | None = None,
                      min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> bytes:
    """The exact bytes OpenSSL sends first as a client."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = min_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def split_records(hello: bytes, sizes: list[int]) -> bytes:
    """Re-frame one ClientHello record as several records with payloads of the given sizes."""
    assert hello[0] == 22
    header, payload = hello[:5], hello[5:]
    out = bytearray()
    pos = 0
    for size in [*sizes, len(payload)]:
        chunk = payload[pos : pos + size]
        if not chunk:
            break
        out += header[:3] + struct.pack("!H", len(chunk)) + chunk
        pos += len(chunk)
    assert pos == len(payload)
    return bytes(out)


def test_real_client_hello_gives_sni_and_alpn() -> None:
    hello = real_client_hello("App.Example.com", ["h2", "http/1.1"])
    result = ch.parse(hello)
    assert result == ch.Complete("app.example.com", ("h2", "http/1.1"), len(hello))


def test_no_sni_and_no_alpn() -> None:
    hello = real_client_hello(None)
    assert ch.parse(hello) == ch.Complete(None, (), len(hello))


def test_ip_address_server_hostname_sends_no_sni() -> None:
    hello = real_client_hello("127.0.0.1")
    assert ch.parse(hello) == ch.Complete(None, (), len(hello))


def test_every_prefix_needs_more_and_need_is_monotonic() -> None:
    hello = real_client_hello("a.example.com", ["http/1.1"])
    last_need = 0
    for cut in range(len(hello)):
        result = ch.parse(hello[:cut])
        assert isinstance(result, ch.NeedMore), (cut, result)
        assert cut < result.need <= len(hello)
        assert result.need >= last_need
        last_need = result.need
    assert isinstance(ch.parse(hello), ch.Complete)


@pytest.mark.parametrize("sizes", [[1], [4], [3, 1, 1], [50, 50], [1] * 40])
def test_client_hello_across_records(sizes: list[int]) -> None:
    hello = split_records(real_client_hello("multi.example.com", ["http/1.1"]), sizes)
    result = ch.parse(hello)
    assert result == ch.Complete("multi.example.com", ("http/1.1",), len(hello))
    for cut in range(len(hello)):
        assert isinstance(ch.parse(hello[:cut]), ch.NeedMore)


def test_bytes_after_the_hello_are_not_counted() -> None:
    hello = real_client_hello("x.example.com")
    result = ch.parse(hello + b"\x17\x03\x03\x00\x05hello")
    assert result == ch.Complete("x.example.com", (), len(hello))


def test_plain_http_is_not_tls() -> None:
    assert ch.parse(b"GET / HTTP/1.1\r\n") == ch.NotTLS()
    assert ch.parse(b"\x16\x01\x00\x00\x01") == ch.NotTLS()
    assert ch.parse(b"\x80\x2e\x01\x03\x01") == ch.NotTLS()  # SSLv2-style hello


def test_not_a_client_hello() -> None:
    assert isinstance(ch.parse(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"), ch.Malformed)


def test_garbage_inside_a_record_is_malformed() -> None:
    body = b"\x01\x00\x00\x05\x03\x03\x00\x00\x00"
    assert isinstance(ch.parse(b"\x16\x03\x01" + struct.pack("!H", len(body)) + body), ch.Malformed)


def test_interrupted_by_other_record_type() -> None:
    hello = split_records(real_client_hello("y.example.com"), [10])
    first_len = 5 + 10
    broken = hello[:first_len] + b"\x17" + hello[first_len + 1 :]
    assert isinstance(ch.parse(broken), ch.Malformed)


def test_too_large_is_known_from_the_handshake_header() -> None:
    header = b"\x16\x03\x01\x40\x00" + b"\x01" + (70000).to_bytes(3, "big")
    assert ch.parse(header, max_bytes=65536) == ch.TooLarge()


def test_too_large_when_records_never_end() -> None:
    hello = real_client_hello("z.example.com")
    assert ch.parse(hello, max_bytes=len(hello) - 1) == ch.TooLarge()


def test_non_ascii_sni_is_malformed() -> None:
    hello = bytearray(real_client_hello("aaaa.example.com"))
    pos = bytes(hello).find(b"aaaa.example.com")
    hello[pos] = 0xC3
    assert isinstance(ch.parse(bytes(hello)), ch.Malformed)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_never_raises(data: bytes) -> None:
    assert isinstance(ch.parse(data), ch.NeedMore | ch.Complete | ch.NotTLS | ch.Malformed | ch.TooLarge)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_with_a_handshake_record_header(payload: bytes) -> None:
    data = b"\x16\x03\x01" + struct.pack("!H", len(payload)) + payload
    result = ch.parse(data)
    assert isinstance(result, ch.NeedMore | ch.Complete | ch.Malformed | ch.TooLarge)


_HELLO = real_client_hello("fuzz.example.com", ["http/1.1"])


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, len(_HELLO) - 1), st.integers(0, 255))
def test_fuzz_single_byte_mutations_of_a_real_hello(index: int, value: int) -> None:
    mutated = bytearray(_HELLO)
    mutated[index] = value
    result = ch.parse(bytes(mutated))
    assert isinstance(result, ch.NeedMore | ch.Complete | ch.NotTLS | ch.Malformed | ch.TooLarge)
    if isinstance(result, ch.Complete):
        assert result.length <= len(mutated)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=20))
def test_any_record_split_parses_the_same(sizes: list[int]) -> None:
    framed = split_records(_HELLO, sizes)
    assert ch.parse(framed) == ch.Complete("fuzz.example.com", ("http/1.1",), len(framed))
