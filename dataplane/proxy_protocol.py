"""PROXY protocol v1/v2 headers (haproxy's spec), so passthrough backends see the client address.

Building is what the edge needs; parsing is here too because the example TLS backend and the
tests read the header back, and one module keeps both directions honest with each other.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_VERSION_PROXY = 0x21  # version 2, command PROXY
V2_TCP4 = 0x11
V2_TCP6 = 0x21
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
V1_MAX = 107


Address = tuple[str, int]


def _normalise(source: Address, dest: Address) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int,
                                                         ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """Both addresses in one family: v4-mapped IPv6 (a dual-stack listener) becomes IPv4 when both can."""
    src = ipaddress.ip_address(source[0].split("%", 1)[0])
    dst = ipaddress.ip_address(dest[0].split("%", 1)[0])
    if isinstance(src, ipaddress.IPv6Address) and src.ipv4_mapped is not None:
        src = src.ipv4_mapped
    if isinstance(dst, ipaddress.IPv6Address) and dst.ipv4_mapped is not None:
        dst = dst.ipv4_mapped
    if src.version != dst.version:
        src = src if src.version == 6 else ipaddress.IPv6Address(f"::ffff:{src}")
        dst = dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")
    return src, source[1], dst, dest[1]


def v1_header(source: Address, dest: Address) -> bytes:
    src, sport, dst, dport = _normalise(source, dest)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def v2_header(source: Address, dest: Address, authority: str | None = None, alpn: str | None = None) -> bytes:
    """Binary header; ``authority`` is the SNI the client sent (TLV PP2_TYPE_AUTHORITY)."""
    src, sport, dst, dport = _normalise(source, dest)
    if src.version == 4:
        family, addresses = V2_TCP4, src.packed + dst.packed + struct.pack("!HH", sport, dport)
    else:
        family, addresses = V2_TCP6, src.packed + dst.packed + struct.pack("!HH", sport, dport)
    tlvs = b""
    if authority:
        value = authority.encode("ascii")
        tlvs += struct.pack("!BH", PP2_TYPE_AUTHORITY, len(value)) + value
    if alpn:
        value = alpn.encode("ascii")
        tlvs += struct.pack("!BH", PP2_TYPE_ALPN, len(value)) + value
    body = addresses + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", V2_VERSION_PROXY, family, len(body)) + body


def header(version: str, source: Address, dest: Address, authority: str | None = None) -> bytes:
    """The header a pool's ``proxy_protocol`` setting asks for (``off``: nothing)."""
    if version == "v1":
        return v1_header(source, dest)
    if version == "v2":
        return v2_header(source, dest, authority)
    return b""


@dataclass(frozen=True)
class ProxyHeader:
    source: Address | None  # None: LOCAL command or UNKNOWN family
    dest: Address | None
    tlvs: tuple[tuple[int, bytes], ...]
    length: int  # bytes the header occupied

    @property
    def authority(self) -> str | None:
        return next((v.decode("ascii", "replace") for t, v in self.tlvs if t == PP2_TYPE_AUTHORITY), None)


class NeedMoreData(Exception):
    pass


class ProxyHeaderError(ValueError):
    pass


def starts_like_proxy(data: bytes) -> bool:
    """True when the bytes so far could be (the start of) a PROXY header."""
    n = min(len(data), len(V2_SIGNATURE))
    return data[:n] == V2_SIGNATURE[:n] or data[: min(len(data), 6)] == b"PROXY "[: min(len(data), 6)]


def parse(data: bytes) -> ProxyHeader:
    """Parse a v1 or v2 header at the start of ``data``; raises NeedMoreData or ProxyHeaderError."""
    if len(data) < 6 and starts_like_proxy(data):
        raise NeedMoreData
    if data.startswith(b"PROXY "):
        return _parse_v1(data)
    if len(data) < 16:
        if starts_like_proxy(data):
            raise NeedMoreData
        raise ProxyHeaderError("no PROXY header")
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("no PROXY header")
    return _parse_v2(data)


def _parse_v1(data: bytes) -> ProxyHeader:
    end = data.find(b"\r\n", 0, V1_MAX + 1)
    if end < 0:
        if len(data) > V1_MAX:
            raise ProxyHeaderError("PROXY v1 line too long")
        raise NeedMoreData
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(None, None, (), end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 line")
    try:
        return ProxyHeader((parts[2], int(parts[4])), (parts[3], int(parts[5])), (), end + 2)
    except ValueError as exc:
        raise ProxyHeaderError("malformed PROXY v1 ports") from exc


def _parse_v2(data: bytes) -> ProxyHeader:
    version, family, length = struct.unpack("!BBH", data[12:16])
    total = 16 + length
    if len(data) < total:
        raise NeedMoreData
    if version >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY version")
    body = data[16:total]
    if version & 0x0F == 0 or family not in (V2_TCP4, V2_TCP6):
        return ProxyHeader(None, None, (), total)
    size = 4 if family == V2_TCP4 else 16
    if len(body) < 2 * size + 4:
        raise ProxyHeaderError("PROXY v2 address block too short")
    src = str(ipaddress.ip_address(body[:size]))
    dst = str(ipaddress.ip_address(body[size : 2 * size]))
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    tlvs: list[tuple[int, bytes]] = []
    rest = body[2 * size + 4 :]
    while rest:
        if len(rest) < 3:
            raise ProxyHeaderError("truncated PROXY v2 TLV")
        kind, tlv_len = struct.unpack("!BH", rest[:3])
        if len(rest) < 3 + tlv_len:
            raise ProxyHeaderError("truncated PROXY v2 TLV")
        tlvs.append((kind, bytes(rest[3 : 3 + tlv_len])))
        rest = rest[3 + tlv_len :]
    return ProxyHeader((src, sport), (dst, dport), tuple(tlvs), total)
