"""HTTP/1.1 message framing, sans-IO: where a head ends and where a body ends, for both sides of the proxy.

The model is h11's ``_readers.py``/``_receivebuffer.py``: a ``HeadReader`` takes one complete head out
of a buffer (or says it needs more bytes, or refuses it as soon as the partial head is already invalid)
and a body reader per framing (``LengthReader``, ``ChunkedReader``, ``UntilCloseReader``) answers
``feed(data) -> (pieces, consumed)``. The client side (``connection.py``) frames requests with them and
the upstream side (``upstream.py``) frames responses with the same code, so the smuggling rules of
framing exist once. Nothing here does I/O, allocates a task or timer, or copies a body piece that
can be passed on as it is: a read that lies inside a content-length body comes back as the very
same ``bytes`` object (the zero-copy fast path).

What a head *means* (tokens, Content-Length vs Transfer-Encoding, Host) is ``parser.py``'s job.
"""

from __future__ import annotations

import re
from typing import ClassVar

# Control bytes other than HTAB, CR and LF anywhere in a head are never valid.
FORBIDDEN = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

MAX_CHUNK_LINE = 4096
MAX_TRAILER_BYTES = 16384


class ParseError(Exception):
    """A message the proxy must refuse; ``status`` is what the client gets (then the connection closes)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- heads ---------------------------------------------------------------------------------------


def partial_head_error(buf: bytes | bytearray) -> ParseError | None:
    """Whether an incomplete head (no blank line yet) is already invalid, so the peer gets its error
    now instead of waiting for a blank CRLF line that a bare-LF sender never sends."""
    lf = buf.count(b"\n")
    if lf and lf != buf.count(b"\r\n"):
        return ParseError(400, "bare LF in request head (lines must end with CRLF)")
    cr = buf.count(b"\r")
    if cr != lf and (cr != lf + 1 or buf[-1] != 13):
        return ParseError(400, "bare CR in request head")
    return None


class HeadReader:
    """Finds the end of one message head in a buffer and enforces the size limits while it grows.

    Requests: a first line longer than ``max_line`` is 414, header bytes beyond ``max_bytes`` or more
    than ``max_lines`` header lines 431, a bare CR or LF 400 at once; empty lines before a request
    line are skipped (RFC 9112 2.2). Responses (``status`` 502): one limit on the whole head, every
    refusal is 502. A complete head is handed on without checking its lines: ``parse_request_head`` /
    ``parse_response_head`` do that once, on the whole head.
    """

    __slots__ = ("max_bytes", "max_line", "max_lines", "skip_empty_lines", "status")

    def __init__(self, max_line: int, max_bytes: int, max_lines: int, status: int = 400,
                 skip_empty_lines: bool = True) -> None:
        self.max_line = max_line
        self.max_bytes = max_bytes
        self.max_lines = max_lines
        self.status = status  # 400 for requests (414/431 for the limits); 502 for responses
        self.skip_empty_lines = skip_empty_lines

    @classmethod
    def for_responses(cls, max_head: int) -> HeadReader:
        return cls(max_head, max_head, max_head, 502, skip_empty_lines=False)

    def read(self, buf: bytearray) -> bytes | None:
        """Take one complete head (without its final CRLFCRLF) out of ``buf``; None: not complete yet.
        Raises ``ParseError`` when what is buffered can no longer become a valid head."""
        if buf[:2] == b"\r\n" and self.skip_empty_lines:
            del buf[: len(buf) - len(buf.lstrip(b"\r\n"))]
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end])
            del buf[: end + 4]
            return head
        if buf:
            self._check_partial(buf)
        return None

    def _check_partial(self, buf: bytearray) -> None:
        if self.status != 400:  # response head: one limit, one status
            if len(buf) > self.max_bytes:
                raise ParseError(self.status, "response head too large")
            if partial_head_error(buf) is not None:
                raise ParseError(self.status, "bare CR or LF in response head")
            return
        first = buf.find(b"\r\n")
        if first < 0:
            if len(buf) > self.max_line:
                raise ParseError(414, "request line too long")
        elif first > self.max_line:
            raise ParseError(414, "request line too long")
        elif len(buf) - first > self.max_bytes:
            raise ParseError(431, "request headers too large")
        elif buf.count(b"\r\n") - 1 > self.max_lines:
            raise ParseError(431, f"more than {self.max_lines} request headers")
        error = partial_head_error(buf)
        if error is not None:  # e.g. bare-LF lines: the CRLFCRLF waited for never comes
            raise error


# --- bodies --------------------------------------------------------------------------------------


class BodyReader:
    """One message body's framing: ``feed(data) -> (pieces, consumed)``; bytes past ``consumed``
    belong to whatever follows the message on the connection. ``done``: the body is complete;
    ``ENDS_AT_EOF``: a close of the connection completes it (rather than truncating it)."""

    __slots__ = ()
    ENDS_AT_EOF: ClassVar[bool] = False

    @property
    def done(self) -> bool:
        raise NotImplementedError

    def feed(self, data: bytes) -> tuple[tuple[bytes, ...] | list[bytes], int]:
        raise NotImplementedError


class LengthReader(BodyReader):
    """``Content-Length: n``: the next ``n`` bytes. A read inside the body is returned as is (no copy)."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def feed(self, data: bytes) -> tuple[tuple[bytes, ...], int]:
        rem = self.remaining
        n = len(data)
        if n <= rem:
            self.remaining = rem - n
            return (data,), n
        self.remaining = 0
        return ((data[:rem],) if rem else ()), rem


class UntilCloseReader(BodyReader):
    """A response with neither Content-Length nor chunked coding: everything until the backend closes."""

    __slots__ = ()
    ENDS_AT_EOF = True

    @property
    def done(self) -> bool:
        return False

    def feed(self, data: bytes) -> tuple[tuple[bytes, ...], int]:
        return (data,), len(data)


class ChunkedReader(BodyReader):
    """Incremental, strict ``Transfer-Encoding: chunked`` decoder: chunk sizes of 1-16 hex digits,
    CRLF (never a bare CR or LF) after every line and after chunk data, bounded size lines and
    trailer section (validated, then dropped unless ``keep_trailers``: the HTTP/2 side reads a response's
    trailers, gRPC's ``grpc-status``, from ``trailers`` as (lower-case name, stripped value) pairs).
    ``status`` is the error for the peer (400 for request bodies, 502 for response bodies)."""

    __slots__ = ("_keep", "_line", "_remaining", "_state", "_trailer_bytes", "status", "trailers")

    # states
    SIZE, DATA, DATA_CRLF, TRAILER, DONE = range(5)

    def __init__(self, status: int = 400, keep_trailers: bool = False) -> None:
        self._state = ChunkedReader.SIZE
        self._remaining = 0
        self._line = bytearray()
        self._trailer_bytes = 0
        self.status = status
        self._keep = keep_trailers
        self.trailers: list[tuple[bytes, bytes]] = []

    @property
    def done(self) -> bool:
        return self._state == ChunkedReader.DONE

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        i = 0
        n = len(data)
        data_state = ChunkedReader.DATA
        done_state = ChunkedReader.DONE
        while i < n:
            state = self._state
            if state == data_state:
                take = min(self._remaining, n - i)
                out.append(data[i:i + take] if (i or take != n) else data)
                i += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = ChunkedReader.DATA_CRLF
            elif state == done_state:
                break
            else:
                j = data.find(b"\n", i)
                if j < 0:
                    self._line += data[i:]
                    self._check_line_length()
                    i = n
                    break
                self._line += data[i:j + 1]
                i = j + 1
                self._check_line_length()
                line = bytes(self._line)
                self._line.clear()
                if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                    raise ParseError(self.status, "bare CR or LF in chunked framing")
                self._line_done(line[:-2])
        return out, i

    def _check_line_length(self) -> None:
        if len(self._line) > MAX_CHUNK_LINE:
            raise ParseError(self.status, "chunk size line too long")

    def _line_done(self, line: bytes) -> None:
        state = self._state
        if state == ChunkedReader.SIZE:
            size, _, ext = line.partition(b";")
            if _HEX.fullmatch(size) is None or FORBIDDEN.search(ext) is not None:
                raise ParseError(self.status, "invalid chunk size")
            self._remaining = int(size, 16)
            self._state = ChunkedReader.DATA if self._remaining else ChunkedReader.TRAILER
        elif state == ChunkedReader.DATA_CRLF:
            if line:
                raise ParseError(self.status, "missing CRLF after chunk data")
            self._state = ChunkedReader.SIZE
        else:  # trailer section: validated (and kept when asked)
            if not line:
                self._state = ChunkedReader.DONE
                return
            self._trailer_bytes += len(line)
            if self._trailer_bytes > MAX_TRAILER_BYTES:
                raise ParseError(self.status, "trailer section too large")
            name, colon, value = line.partition(b":")
            if not colon or TOKEN.fullmatch(name) is None or FORBIDDEN.search(line) is not None:
                raise ParseError(self.status, "malformed trailer")
            if self._keep:
                self.trailers.append((name.lower(), value.strip(b" \t")))


def chunk(data: bytes) -> bytes:
    """One chunk of chunked transfer coding."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

# Fields that frame or route a message: never valid as trailers (RFC 9110 6.5.1), so never forwarded as one.
_NOT_TRAILERS = frozenset({
    b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"te", b"trailer", b"upgrade", b"host",
})
_BAD_VALUE = re.compile(rb"[\x00\r\n]")


def last_chunk(trailers: list[tuple[bytes, bytes]]) -> bytes:
    """The end of a chunked body carrying ``trailers`` ((lower-case name, value) pairs, as an HTTP/2
    backend sent them): fields whose name is not a token or whose value holds CR, LF or NUL are dropped
    (they would split or smuggle lines), and so are framing fields."""
    lines = [b"0\r\n"]
    for name, value in trailers:
        if TOKEN.fullmatch(name) is None or name.lower() in _NOT_TRAILERS or _BAD_VALUE.search(value) is not None:
            continue
        lines.append(b"%b: %b\r\n" % (name, value.strip(b" \t")))
    lines.append(b"\r\n")
    return b"".join(lines)
