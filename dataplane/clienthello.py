"""A pure, total parser for the TLS ClientHello: SNI and ALPN from the bytes received so far.

The edge peeks at the kernel's receive buffer until this parser says ``Complete``; only then does
it decide between passthrough and termination. The parser never raises: every input, however
short, long or hostile, maps to one of five answers, so the edge's loop is a simple ``match``.

A ClientHello is one handshake message that may span several TLS records (RFC 8446 section 5.1
allows a record layer to fragment a handshake message arbitrarily; post-quantum key shares make
ClientHellos larger than one MTU, and some middleboxes split them on purpose). ``NeedMore.need``
is the smallest total byte count that can make progress, which the edge uses as its receive
low-water mark so it is woken only when that many bytes are there.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORD_HEADER = 5
HANDSHAKE_HEADER = 4
MAX_RECORD_PAYLOAD = 16384 + 2048  # RFC 8446 allows 2^14 plaintext; be lenient by the ciphertext allowance
CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
SNI_HOST_NAME = 0


@dataclass(frozen=True)
class NeedMore:
    need: int  # total bytes (from the start of the connection) worth waiting for


@dataclass(frozen=True)
class Complete:
    sni: str | None
    alpn: tuple[str, ...]
    length: int  # bytes of the records that carry the ClientHello


@dataclass(frozen=True)
class NotTLS:
    pass


@dataclass(frozen=True)
class Malformed:
    reason: str


@dataclass(frozen=True)
class TooLarge:
    pass


Result = NeedMore | Complete | NotTLS | Malformed | TooLarge


def parse(data: bytes, max_bytes: int = 65536) -> Result:
    """Classify ``data``, the first bytes a client sent, as far as they allow."""
    try:
        return _parse(bytes(data), max_bytes)
    except Exception as exc:  # totality: a parser bug must never kill the accept path
        return Malformed(f"parser error: {type(exc).__name__}")


def _parse(data: bytes, max_bytes: int) -> Result:
    if not data:
        return NeedMore(RECORD_HEADER)
    if data[0] != CONTENT_HANDSHAKE:
        return NotTLS()
    message = bytearray()
    offset = 0
    message_length: int | None = None
    while True:
        if len(data) < offset + RECORD_HEADER:
            return _need(offset + RECORD_HEADER, max_bytes)
        content_type, major, _minor = data[offset], data[offset + 1], data[offset + 2]
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if content_type != CONTENT_HANDSHAKE:
            if offset == 0:
                return NotTLS()
            return Malformed("ClientHello interrupted by a non-handshake record")
        if major != 3:
            return NotTLS() if offset == 0 else Malformed("record version is not TLS")
        if length == 0:
            return Malformed("empty handshake record")
        if length > MAX_RECORD_PAYLOAD:
            return Malformed("record longer than TLS allows")
        end = offset + RECORD_HEADER + length
        if end > max_bytes:
            return TooLarge()
        available = data[offset + RECORD_HEADER : min(end, len(data))]
        message += available
        if message_length is None and len(message) >= HANDSHAKE_HEADER:
            if message[0] != HANDSHAKE_CLIENT_HELLO:
                return Malformed("first handshake message is not a ClientHello")
            message_length = HANDSHAKE_HEADER + int.from_bytes(message[1:4], "big")
            if message_length > max_bytes:
                return TooLarge()
        if len(data) < end:
            return _need(end, max_bytes)
        if message_length is not None and len(message) >= message_length:
            if len(message) > message_length:
                return Malformed("trailing bytes after the ClientHello in its record")
            return _client_hello(bytes(message[HANDSHAKE_HEADER:]), end)
        offset = end


def _need(total: int, max_bytes: int) -> Result:
    if total > max_bytes:
        return TooLarge()
    return NeedMore(total)


class _Truncated(Exception):
    pass


class _Reader:
    """Bounds-checked cursor: every read past the end raises ``_Truncated``."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Truncated
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.uint(length_bytes))

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def _client_hello(body: bytes, length: int) -> Result:
    reader = _Reader(body)
    try:
        version = reader.uint(2)
        if version >> 8 != 3:
            return Malformed("ClientHello version is not TLS")
        reader.take(32)  # random
        session_id = reader.vector(1)
        if len(session_id) > 32:
            return Malformed("session id longer than 32 bytes")
        suites = reader.vector(2)
        if not suites or len(suites) % 2:
            return Malformed("cipher suite list is empty or odd")
        if not reader.vector(1):
            return Malformed("compression method list is empty")
        if reader.done:
            return Complete(None, (), length)
        extensions = _Reader(reader.vector(2))
        if not reader.done:
            return Malformed("bytes after the extensions")
        sni: str | None = None
        alpn: tuple[str, ...] = ()
        seen: set[int] = set()
        while not extensions.done:
            ext_type = extensions.uint(2)
            ext_data = extensions.vector(2)
            if ext_type in seen:
                return Malformed(f"duplicate extension {ext_type}")
            seen.add(ext_type)
            if ext_type == EXT_SERVER_NAME:
                parsed_sni = _server_name(ext_data)
                if isinstance(parsed_sni, Malformed):
                    return parsed_sni
                sni = parsed_sni
            elif ext_type == EXT_ALPN:
                parsed_alpn = _alpn(ext_data)
                if isinstance(parsed_alpn, Malformed):
                    return parsed_alpn
                alpn = parsed_alpn
    except _Truncated:
        return Malformed("ClientHello field runs past its end")
    return Complete(sni, alpn, length)


def _server_name(data: bytes) -> str | Malformed | None:
    reader = _Reader(data)
    names = _Reader(reader.vector(2))
    if not reader.done:
        return Malformed("bytes after the server name list")
    host: str | None = None
    while not names.done:
        name_type = names.uint(1)
        name = names.vector(2)
        if name_type != SNI_HOST_NAME:
            continue
        if host is not None:
            return Malformed("more than one host name in SNI")
        checked = _host_name(name)
        if isinstance(checked, Malformed):
            return checked
        host = checked
    return host


def _host_name(raw: bytes) -> str | Malformed:
    """SNI carries an ASCII DNS name (A-labels); anything else is not a name we can route."""
    if not raw or len(raw) > 255:
        return Malformed("SNI host name is empty or too long")
    if any(b <= 0x20 or b >= 0x7F for b in raw):
        return Malformed("SNI host name is not printable ASCII")
    name = raw.decode("ascii").lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or any(not label for label in name.split(".")):
        return Malformed("SNI host name has an empty label")
    return name


def _alpn(data: bytes) -> tuple[str, ...] | Malformed:
    reader = _Reader(data)
    protocols = _Reader(reader.vector(2))
    if not reader.done:
        return Malformed("bytes after the ALPN list")
    result: list[str] = []
    while not protocols.done:
        proto = protocols.vector(1)
        if not proto:
            return Malformed("empty ALPN protocol name")
        result.append(proto.decode("latin-1"))
    if not result:
        return Malformed("empty ALPN list")
    return tuple(result)
