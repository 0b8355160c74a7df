"""The HTTP/2 bench tools' pure parts: h2flood's raw frames are what an HTTP/2 server (the h2 library the data plane
uses) reads as intended, and the h2load summary parser reads h2load 1.52's real output."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events

from bench import h2flood, loadgen


def server() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    return conn


def test_repeated_request_blocks_are_two_requests_with_the_same_fields() -> None:
    conn = server()
    block = h2flood.request_block("app.test", "/x")
    wire = h2flood.PREFACE + h2flood.frame(h2flood.SETTINGS, 0, 0, struct.pack(">HI", 0x2, 0)) + b"".join(
        h2flood.frame(h2flood.HEADERS, h2flood.END_HEADERS | h2flood.END_STREAM, sid, block) for sid in (1, 3))
    events = conn.receive_data(wire)
    requests = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    assert [r.stream_id for r in requests] == [1, 3]
    expected: list[tuple[str | bytes, str | bytes]] = [
        (":method", "GET"), (":scheme", "https"), (":authority", "app.test"), (":path", "/x"),
        ("user-agent", "h2flood")]
    assert [list(r.headers or ()) for r in requests] == [expected, expected]
    assert not conn.decoder.header_table.dynamic_entries  # the dynamic table was never touched: repeatable bytes


def test_rapid_reset_batch_opens_and_cancels_each_stream() -> None:
    conn = server()
    data, frames, streams = h2flood.batches("rapid-reset", "app.test", "/", 1024)(8)
    assert (frames, streams) == (8, 4)
    events = conn.receive_data(h2flood.PREFACE + h2flood.frame(h2flood.SETTINGS, 0, 0) + data)
    opened = [e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)]
    reset = [(e.stream_id, e.error_code) for e in events if isinstance(e, h2.events.StreamReset)]
    assert opened == [1, 3, 5, 7]
    assert reset == [(s, h2.errors.ErrorCodes.CANCEL) for s in opened]


def test_continuation_flood_is_one_unfinished_header_block() -> None:
    data, frames, streams = h2flood.batches("continuation", "app.test", "/", 512)(4)
    assert (frames, streams) == (4, 1)
    pos, seen = 0, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        seen.append((data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5:pos + 9], "big"), length))
        pos += 9 + length
    assert pos == len(data)
    assert [(t, f, s) for t, f, s, _ in seen] == [(h2flood.HEADERS, 0, 1)] + [(h2flood.CONTINUATION, 0, 1)] * 3
    assert all(480 <= n <= 512 for *_, n in seen[1:])


H2LOAD_OUTPUT = """\
finished in 3.00s, 72306.33 req/s, 8.90MB/s
requests: 216919 total, 217019 started, 216919 done, 216900 succeeded, 12 failed, 7 errored, 0 timeout
status codes: 216890 2xx, 0 3xx, 10 4xx, 0 5xx
traffic: 26.69MB (27983041) total, 21.72MB (22776495) headers (space savings 39.31%), 1.24MB (1301514) data
                     min         max         mean         sd        +/- sd
time for request:       30us      7.18ms      1.30ms       628us    72.16%
time for connect:     1.74ms     14.68ms      9.70ms      5.41ms    80.00%
"""


def test_parse_h2load_summary() -> None:
    data = loadgen.parse_h2load(H2LOAD_OUTPUT)
    assert data["requests"] == 216919
    assert data["seconds"] == 3.0
    assert round(data["rps"]) == 72306
    assert data["bytes"] == 27983041
    assert data["errors"] == 12 + 7 + 10
    assert data["mean_us"] == 1300.0
    assert data["max_us"] == 7180.0
