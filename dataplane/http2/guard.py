"""The HTTP/2 flood guard: a sans-IO pre-scan of a client's frames, before libnghttp2 sees them.

The known HTTP/2 denial-of-service attacks are all cheap frames that cost the server more than the client: streams
opened and reset at once (rapid reset, CVE-2023-44487), a header block that never ends (CONTINUATION flood,
CVE-2024-27316: the byte bound here applies before any payload arrives), SETTINGS
and PING frames that each force an ACK, frames that carry nothing (empty DATA, HEADERS or CONTINUATION:
CVE-2019-9518), PRIORITY floods (CVE-2019-9513) and WINDOW_UPDATE floods. Each needs a count per connection and a
threshold with a metric and a clear GOAWAY (nghttp2's own limits, where it has them, are set
above these so the guard answers first); so the connection hands every byte from the client to ``FrameGuard.feed`` first
and, on a violation, sends GOAWAY ENHANCE_YOUR_CALM and closes without giving that data to nghttp2.

Reading frame headers only (9 bytes each, RFC 9113 4.1) keeps the cost one small step per frame whatever the
payload size; payloads are skipped, never copied. Rates are counted in one-second windows (a fixed window may
let up to twice a limit through across a window edge: the limits are far above honest traffic and far below
what an attack needs). The guard decides nothing about validity: nghttp2 still checks every frame it is given.

WINDOW_UPDATE and PRIORITY are counted relative to the client's own requests, because honest clients send them
in proportion to their traffic: grpcio answers every message with WINDOW_UPDATEs (about two per unary call, so a
flat 1,000 a second ended a channel doing 700 calls a second). Envoy bounds them by the DATA frames it *sent*; the
guard sees only inbound frames, so each HEADERS or DATA frame from the client in the window allows
``PER_FRAME_ALLOWANCE`` more of each, on top of the flag's base rate (what a connection may send with no requests
at all, e.g. while it downloads), and never more than ``CEILING_FACTOR`` times that base. A flood of either alone
trips at the base rate; a flood hidden among requests is bounded by the requests' own (larger) cost.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFACE_LENGTH = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": nghttp2 checks its bytes, the guard only skips it
FRAME_HEADER = 9
# Frame types (RFC 9113 6) and flags the guard looks at.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING = 0, 1, 2, 3, 4, 5, 6
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = 0x1
ACK = 0x1

# Violation names: the ``reason`` label of ``portcullis_h2_violations_total``.
RAPID_RESET = "rapid_reset"
CONTINUATION_FLOOD = "continuation"
SETTINGS_FLOOD = "settings_flood"
PING_FLOOD = "ping_flood"
EMPTY_FRAMES = "empty_frames"
WINDOW_UPDATE_FLOOD = "window_update_flood"
PRIORITY_FLOOD = "priority_flood"
PER_FRAME_ALLOWANCE = 10  # WINDOW_UPDATE and PRIORITY frames allowed per client HEADERS/DATA frame (Envoy: 10)
CEILING_FACTOR = 20  # ... but never more than this many times the base rate a second


@dataclass(frozen=True, slots=True)
class H2Limits:
    """Per-connection HTTP/2 limits (data-plane flags ``--h2-*``); a rate beyond its limit ends the connection."""

    max_concurrent_streams: int = 128  # SETTINGS_MAX_CONCURRENT_STREAMS we announce
    max_resets_per_second: int = 200  # client RST_STREAM frames (rapid reset)
    max_continuation_frames: int = 32  # CONTINUATION frames in one header block (the block's bytes: max_header_bytes)
    max_settings_per_second: int = 50  # SETTINGS frames that need an ACK
    max_pings_per_second: int = 50  # PING frames that need an ACK
    max_empty_frames_per_second: int = 100  # DATA without payload or END_STREAM, HEADERS/CONTINUATION without payload
    max_window_updates_per_second: int = 1000  # base rate, plus PER_FRAME_ALLOWANCE per HEADERS/DATA frame
    max_priority_per_second: int = 100  # PRIORITY frames (CVE-2019-9513): base rate, as for WINDOW_UPDATE


class FrameGuard:
    """One client connection's frame scanner (see the module docstring). ``feed`` returns a violation name
    (sticky: every later call returns it too) or None."""

    __slots__ = ("_block_bytes", "_block_frames", "_empty", "_header", "_limits", "_max_block", "_pings",
                 "_preface", "_priorities", "_requests", "_resets", "_settings", "_skip", "_updates", "_window",
                 "violation")

    def __init__(self, limits: H2Limits, max_header_bytes: int) -> None:
        self._limits = limits
        self._max_block = max_header_bytes
        self._preface = PREFACE_LENGTH
        self._skip = 0  # payload bytes of the current frame still to pass
        self._header = bytearray()  # a frame header split across reads
        self._block_bytes = 0
        self._block_frames = 0
        self._window = float("-inf")
        self._resets = self._settings = self._pings = self._empty = self._updates = 0
        self._priorities = self._requests = 0  # _requests: HEADERS and DATA frames, the allowance's basis
        self.violation: str | None = None

    def _empty_frame(self) -> str | None:
        """One more frame without payload that ends nothing (CVE-2019-9518): a violation past the limit."""
        self._empty += 1
        return EMPTY_FRAMES if self._empty > self._limits.max_empty_frames_per_second else None

    def feed(self, data: bytes, now: float) -> str | None:
        """Scan the next bytes from the client (``now``: a monotonic clock in seconds)."""
        if self.violation is not None:
            return self.violation
        if now - self._window >= 1.0:
            self._window = now
            self._resets = self._settings = self._pings = self._empty = self._updates = 0
            self._priorities = self._requests = 0
        i = 0
        n = len(data)
        if self._preface:
            i = min(self._preface, n)
            self._preface -= i
        header = self._header
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                i += take
                continue
            if header or n - i < FRAME_HEADER:
                take = min(FRAME_HEADER - len(header), n - i)
                header += data[i:i + take]
                i += take
                if len(header) < FRAME_HEADER:
                    break
                found = self._frame(header, 0)
                header.clear()
            else:
                found = self._frame(data, i)
                i += FRAME_HEADER
            if found is not None:
                self.violation = found
                return found
        return None

    def _frame(self, buf: bytes | bytearray, at: int) -> str | None:
        length = (buf[at] << 16) | (buf[at + 1] << 8) | buf[at + 2]
        kind = buf[at + 3]
        flags = buf[at + 4]
        self._skip = length
        limits = self._limits
        if kind == DATA:
            self._requests += 1
            return self._empty_frame() if not length and not flags & END_STREAM else None
        if kind in (HEADERS, PUSH_PROMISE):
            self._requests += 1
            self._block_bytes = length  # a header block starts (its CONTINUATIONs add to it)
            self._block_frames = 0
            if length > self._max_block:
                return CONTINUATION_FLOOD
            return None if length else self._empty_frame()
        if kind == CONTINUATION:
            # Outside a block nghttp2 raises a protocol error itself; inside, count before any payload arrives.
            self._block_bytes += length
            self._block_frames += 1
            if self._block_frames > limits.max_continuation_frames or self._block_bytes > self._max_block:
                return CONTINUATION_FLOOD
            return None if length else self._empty_frame()
        if kind == RST_STREAM:
            self._resets += 1
            return RAPID_RESET if self._resets > limits.max_resets_per_second else None
        if kind == SETTINGS:
            if not flags & ACK:
                self._settings += 1
                if self._settings > limits.max_settings_per_second:
                    return SETTINGS_FLOOD
            return None
        if kind == PING:
            if not flags & ACK:
                self._pings += 1
                if self._pings > limits.max_pings_per_second:
                    return PING_FLOOD
            return None
        if kind == WINDOW_UPDATE:
            self._updates += 1
            return WINDOW_UPDATE_FLOOD if _over(self._updates, limits.max_window_updates_per_second,
                                                self._requests) else None
        if kind == PRIORITY:
            self._priorities += 1
            return PRIORITY_FLOOD if _over(self._priorities, limits.max_priority_per_second, self._requests) else None
        return None


def _over(count: int, base: int, requests: int) -> bool:
    """Whether ``count`` WINDOW_UPDATE or PRIORITY frames in a window exceed what is allowed with ``requests``
    HEADERS/DATA frames from the client in it (the module docstring says why)."""
    return count > base and count > min(base + PER_FRAME_ALLOWANCE * requests, CEILING_FACTOR * base)
