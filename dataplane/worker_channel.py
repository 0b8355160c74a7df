"""Frames between the supervisor and its worker processes (``--workers N``).

The channel is one end of a ``socketpair`` each (AF_UNIX, inherited by the worker as a file
descriptor): never a network port, never a path in the file system, so nothing but the two
processes can read it. It carries snapshots, that is private keys.

A frame is two big-endian u32 lengths, a JSON header and raw body bytes (a snapshot as JSON: kept
out of the header so it is not escaped a second time).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

_LENGTHS = struct.Struct(">II")
MAX_HEADER = 1024 * 1024


class ChannelClosed(ConnectionError):
    """The other process closed its end (it exited)."""


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _LENGTHS.pack(len(head), len(body)) + head + body


async def read(reader: asyncio.StreamReader, max_body: int) -> tuple[dict[str, Any], bytes]:
    """One frame; ``ChannelClosed`` at end of stream, ``ValueError`` for a frame that cannot be ours."""
    try:
        head_len, body_len = _LENGTHS.unpack(await reader.readexactly(_LENGTHS.size))
        if head_len > MAX_HEADER or body_len > max_body:
            raise ValueError(f"frame of {head_len}+{body_len} bytes is larger than allowed")
        head = await reader.readexactly(head_len)
        body = await reader.readexactly(body_len) if body_len else b""
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ChannelClosed("channel closed") from exc
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("frame header is not an object")
    return header, body
