"""ChunkedReader keeps a response's trailers when asked (the HTTP/2 side turns them into trailing HEADERS:
gRPC's grpc-status travels there), still validated and bounded, and drops them by default."""

from __future__ import annotations

import pytest

from dataplane.http.framing import MAX_TRAILER_BYTES, ChunkedReader, ParseError

BODY = b"5\r\nhello\r\n0\r\nGrpc-Status: 0\r\ngrpc-message:  ok%20then \t\r\n\r\n"


def test_trailers_kept_lower_case_and_stripped() -> None:
    reader = ChunkedReader(502, keep_trailers=True)
    pieces, used = reader.feed(BODY)
    assert b"".join(pieces) == b"hello"
    assert used == len(BODY)
    assert reader.done
    assert reader.trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok%20then")]


def test_trailers_kept_across_byte_by_byte_feeds() -> None:
    reader = ChunkedReader(502, keep_trailers=True)
    out = bytearray()
    for i in range(len(BODY)):
        pieces, used = reader.feed(BODY[i:i + 1])
        assert used == 1
        out += b"".join(pieces)
    assert bytes(out) == b"hello"
    assert reader.done
    assert reader.trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok%20then")]


def test_trailers_dropped_by_default() -> None:
    reader = ChunkedReader(502)
    reader.feed(BODY)
    assert reader.done
    assert reader.trailers == []


@pytest.mark.parametrize("bad", [b"no colon here", b"bad name: x", b"x: a\x01b"])
def test_kept_trailers_are_still_validated(bad: bytes) -> None:
    reader = ChunkedReader(502, keep_trailers=True)
    with pytest.raises(ParseError) as err:
        reader.feed(b"0\r\n" + bad + b"\r\n\r\n")
    assert err.value.status == 502


def test_kept_trailers_are_still_bounded() -> None:
    reader = ChunkedReader(502, keep_trailers=True)
    line = b"x-pad: " + b"a" * 1000 + b"\r\n"
    with pytest.raises(ParseError, match="trailer section too large"):
        reader.feed(b"0\r\n" + line * (MAX_TRAILER_BYTES // len(line) + 2) + b"\r\n")
    assert len(reader.trailers) <= MAX_TRAILER_BYTES // 1000
