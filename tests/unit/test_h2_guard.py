"""dataplane.http2.guard: the frame pre-scanner passes honest HTTP/2 traffic (made by the h2 library's own
client) however it is split, and names each flood once its per-second limit is crossed."""

from __future__ import annotations

import random

import h2.config
import h2.connection
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.http2.guard import CEILING_FACTOR, PER_FRAME_ALLOWANCE, PREFACE_LENGTH, FrameGuard, H2Limits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = [(":method", "POST"), (":scheme", "https"), (":path", "/upload"), (":authority", "example.com")]


def honest_client_bytes(streams: int = 50) -> bytes:
    """What a real client sends: preface, SETTINGS, then requests with bodies, a PING, a WINDOW_UPDATE."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for n in range(streams):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [*REQUEST, ("content-type", "text/plain"), ("x-n", str(n) * 100)])
        conn.send_data(sid, b"x" * 1000)
        conn.send_data(sid, b"", end_stream=True)  # an empty DATA that ends the stream is not "empty"
    conn.ping(b"12345678")
    conn.increment_flow_control_window(65535)
    data = conn.data_to_send()
    assert data.startswith(PREFACE)
    return data


def frames(*items: Frame) -> bytes:
    return b"".join(f.serialize() for f in items)


def guard(**limits: int) -> FrameGuard:
    g = FrameGuard(H2Limits(**limits), 32768)
    assert g.feed(PREFACE + SettingsFrame(0).serialize(), 0.0) is None
    return g


def headers(sid: int, end_headers: bool = True, block: bytes = b"\x82") -> HeadersFrame:
    f = HeadersFrame(sid, block)
    if end_headers:
        f.flags.add("END_HEADERS")
    return f


def test_honest_traffic_passes_in_one_read() -> None:
    assert FrameGuard(H2Limits(), 32768).feed(honest_client_bytes(), 0.0) is None


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_honest_traffic_passes_however_it_is_split(seed: int) -> None:
    data = honest_client_bytes(20)
    rng = random.Random(seed)
    g = FrameGuard(H2Limits(), 32768)
    i = 0
    while i < len(data):
        step = rng.choice([1, 2, 5, 9, 10, 24, 100, 4096])
        assert g.feed(data[i:i + step], 0.0) is None
        i += step
    # whatever the splits, the scanner ends between frames: one more PING frame header is read as a PING
    g2 = FrameGuard(H2Limits(max_pings_per_second=0), 32768)
    g2.feed(data, 0.0)
    assert g.feed(PingFrame(0).serialize(), 0.0) is None
    assert g2.feed(PingFrame(0).serialize(), 0.0) == "ping_flood"


def test_preface_split_across_reads() -> None:
    g = FrameGuard(H2Limits(max_pings_per_second=0), 32768)
    data = PREFACE + PingFrame(0).serialize()
    for i in range(PREFACE_LENGTH + 8):
        assert g.feed(data[i:i + 1], 0.0) is None
    assert g.feed(data[PREFACE_LENGTH + 8:], 0.0) == "ping_flood"


def test_rapid_reset() -> None:
    g = guard()
    burst = b"".join(frames(headers(2 * i + 1), RstStreamFrame(2 * i + 1, error_code=8)) for i in range(200))
    assert g.feed(burst, 10.0) is None  # 200 a second is the limit
    assert g.feed(frames(headers(401), RstStreamFrame(401, error_code=8)), 10.5) == "rapid_reset"
    assert g.feed(b"", 99.0) == "rapid_reset"  # sticky: the connection is going away


def test_resets_are_counted_per_second_window() -> None:
    g = guard()
    for second in range(5):
        burst = b"".join(frames(headers(1000 * second + 2 * i + 1), RstStreamFrame(1000 * second + 2 * i + 1))
                         for i in range(150))
        assert g.feed(burst, float(second)) is None


def test_continuation_frame_count() -> None:
    g = guard()
    block = [headers(1, end_headers=False, block=b"\x82")] + [ContinuationFrame(1, b"\x84") for _ in range(31)]
    last = ContinuationFrame(1, b"\x86")
    last.flags.add("END_HEADERS")
    assert g.feed(frames(*block, last), 0.0) is None  # 32 CONTINUATION frames: allowed
    g = guard()
    flood = [headers(1, end_headers=False)] + [ContinuationFrame(1, b"\x84") for _ in range(33)]
    assert g.feed(frames(*flood), 0.0) == "continuation"


def test_continuation_bytes_caught_before_the_payload_arrives() -> None:
    g = FrameGuard(H2Limits(), 1000)
    g.feed(PREFACE, 0.0)
    assert g.feed(frames(headers(1, end_headers=False, block=b"a" * 600)), 0.0) is None
    big = ContinuationFrame(1, b"b" * 600).serialize()
    assert g.feed(big[:9], 0.0) == "continuation"  # the frame header alone says the block is too long


def test_a_new_header_block_starts_a_new_count() -> None:
    g = guard(max_continuation_frames=2)
    for sid in (1, 3, 5, 7):
        c1, c2 = ContinuationFrame(sid, b"\x84"), ContinuationFrame(sid, b"\x84")
        c2.flags.add("END_HEADERS")
        assert g.feed(frames(headers(sid, end_headers=False), c1, c2), 0.0) is None


@pytest.mark.parametrize(("frame", "name", "limit"), [
    (SettingsFrame(0, {SettingsFrame.INITIAL_WINDOW_SIZE: 1}), "settings_flood", "max_settings_per_second"),
    (PingFrame(0, b"abcdefgh"), "ping_flood", "max_pings_per_second"),
    (WindowUpdateFrame(0, 1), "window_update_flood", "max_window_updates_per_second"),
    (PriorityFrame(1, depends_on=0, stream_weight=15), "priority_flood", "max_priority_per_second"),
])
def test_rate_limits(frame: Frame, name: str, limit: str) -> None:
    allowed = getattr(H2Limits(), limit)
    g = guard()
    assert g.feed(frame.serialize() * allowed, 1.0) is None
    assert g.feed(frame.serialize(), 1.9) == name
    assert g.violation == name


def test_acks_are_not_counted() -> None:
    ping_ack = PingFrame(0, b"abcdefgh")
    ping_ack.flags.add("ACK")
    settings_ack = SettingsFrame(0)
    settings_ack.flags.add("ACK")
    g = guard(max_pings_per_second=1, max_settings_per_second=1)
    assert g.feed(frames(ping_ack, settings_ack) * 500, 1.0) is None


def test_empty_frames() -> None:
    g = guard()
    empty = DataFrame(1, b"").serialize()
    assert g.feed(frames(headers(1)) + empty * 100, 0.0) is None
    assert g.feed(empty, 0.0) == "empty_frames"
    g = guard()
    assert g.feed(HeadersFrame(1, b"").serialize() * 101, 0.0) == "empty_frames"
    g = guard()
    ended = DataFrame(1, b"")
    ended.flags.add("END_STREAM")
    assert g.feed(frames(*[ended] * 500), 0.0) is None  # a stream's end is not an empty frame


def test_large_data_frames_are_skipped_not_parsed() -> None:
    g = guard(max_pings_per_second=0)
    payload = DataFrame(1, b"\x00\x00\x00\x06\x00\x00\x00\x00\x00" * 1500).serialize()  # looks like PINGs inside
    assert g.feed(payload, 0.0) is None


def grpc_unary_calls(calls: int, first_sid: int = 1) -> bytes:
    """What grpcio sends per unary call on a busy channel: HEADERS, one DATA with the message and END_STREAM, and
    WINDOW_UPDATEs for the response it received (stream and connection, here three to be generous)."""
    out = []
    for i in range(calls):
        sid = first_sid + 2 * i
        data = DataFrame(sid, b"\x00\x00\x00\x00\x05hello")
        data.flags.add("END_STREAM")
        out.append(frames(headers(sid), data, WindowUpdateFrame(sid, 100), WindowUpdateFrame(0, 100),
                          WindowUpdateFrame(0, 100)))
    return b"".join(out)


def test_window_updates_that_follow_requests_pass() -> None:
    """3,000 calls in one second: 9,000 WINDOW_UPDATEs, far beyond the base 1,000, each backed by requests."""
    g = guard()
    assert g.feed(grpc_unary_calls(3000), 5.0) is None
    assert g.feed(grpc_unary_calls(3000, 6001), 6.0) is None  # and the next second


@pytest.mark.parametrize(("kind", "frame", "limit"), [
    ("window_update_flood", WindowUpdateFrame(0, 1), "max_window_updates_per_second"),
    ("priority_flood", PriorityFrame(3, depends_on=0, stream_weight=15), "max_priority_per_second"),
])
def test_requests_raise_the_allowance_up_to_the_ceiling(kind: str, frame: Frame, limit: str) -> None:
    base = getattr(H2Limits(), limit)
    one = frame.serialize()
    g = guard()
    assert g.feed(frames(headers(1), DataFrame(1, b"x")), 0.0) is None  # two request frames: 2 x allowance more
    assert g.feed(one * (base + 2 * PER_FRAME_ALLOWANCE), 0.0) is None
    assert g.feed(one, 0.0) == kind
    # requests buy no more than the ceiling: CEILING_FACTOR x the base rate a second, however many they are
    g = guard()
    assert g.feed(b"".join(frames(headers(2 * i + 1)) for i in range(CEILING_FACTOR * base)), 0.0) is None
    assert g.feed(one * (CEILING_FACTOR * base), 0.0) is None
    assert g.feed(one, 0.0) == kind
    # the allowance lasts the window it was earned in
    g = guard()
    assert g.feed(frames(headers(1)) + one * (base + PER_FRAME_ALLOWANCE), 0.0) is None
    assert g.feed(one * (base + 1), 1.0) == kind
