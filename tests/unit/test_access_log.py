"""Access log pieces without sockets: the formatters, line packing, dropping, and the annotation's way
into the snapshot (``portcullis.io/access-log`` -> ``Route.access_log`` / ``TLSHost.access_log``)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

from dataplane.access_log import (
    HTTP_FIELDS,
    MAX_FIELD,
    PIPE_BUF,
    AccessLog,
    _Clock,
    chunks,
    format_json,
    format_text,
    ingress_of,
    normalise,
)
from dataplane.http.table import log_source
from dataplane.snapshot import Endpoint, Snapshot, validate
from tests.unit import objects as k

KEY = "portcullis.io/access-log"


def record(**changes: Any) -> tuple[Any, ...]:
    base: dict[str, Any] = {
        "time": 1790000000.25, "client_addr": "10.1.2.3", "client_port": 40000, "sni": "a.example.com",
        "tls_version": "TLSv1.3", "tls_cipher": "TLS_AES_128_GCM_SHA256", "tls_resumed": False,
        "host": b"a.example.com", "method": b"GET", "path": "/x", "http_version": 11, "status": 200,
        "bytes_in": 80, "bytes_out": 1234, "duration": 0.0123, "upstream": Endpoint("10.0.0.9", 8080),
        "upstream_connect_time": 0.001, "upstream_response_time": 0.01, "mode": "offload",
        "request_id": b"0" * 32, "namespace": "demo", "ingress": "web", "client_subject": None,
        "protocol": "http/1.1",
    }
    base.update(changes)
    return tuple(base[name] for name in HTTP_FIELDS)


def test_json_line_has_every_field_with_its_value() -> None:
    line = format_json(normalise(record()), _Clock())
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "time": "2026-09-21T14:13:20.250Z", "client_addr": "10.1.2.3", "client_port": 40000,
        "sni": "a.example.com", "tls_version": "TLSv1.3", "tls_cipher": "TLS_AES_128_GCM_SHA256",
        "tls_resumed": False, "host": "a.example.com", "method": "GET", "path": "/x", "http_version": "HTTP/1.1",
        "status": 200, "bytes_in": 80, "bytes_out": 1234, "duration": 0.012, "upstream": "10.0.0.9:8080",
        "upstream_connect_time": 0.001, "upstream_response_time": 0.01, "mode": "offload",
        "request_id": "0" * 32, "namespace": "demo", "ingress": "web", "client_subject": None,
        "protocol": "http/1.1",
    }


def test_protocol_field_and_the_clients_http_version() -> None:
    """An h2 stream is an HTTP/1.1 exchange inside the engine; the log shows what the client spoke."""
    for protocol in ("h2", "grpc"):
        rec = normalise(record(protocol=protocol))
        parsed = json.loads(format_json(rec, _Clock()))
        assert (parsed["protocol"], parsed["http_version"]) == (protocol, "HTTP/2.0")
        text = format_text(rec, _Clock())
        assert '"GET /x HTTP/2.0" 200' in text and text.endswith(f" proto={protocol}\n")
    passthrough = normalise(record(protocol=None, method=None, http_version=None))
    assert json.loads(format_json(passthrough, _Clock()))["protocol"] is None
    assert format_text(passthrough, _Clock()).endswith(" proto=-\n")


def test_hostile_bytes_stay_inside_their_field() -> None:
    host = b'evil"\r\n{"status":999}\x00\xff'
    rec = normalise(record(host=host, upstream=Endpoint("fd00::1", 80), upstream_connect_time=-1.0))
    parsed = json.loads(format_json(rec, _Clock()))
    assert parsed["host"] == host.decode("latin-1") and parsed["status"] == 200
    assert parsed["upstream"] == "[fd00::1]:80" and parsed["upstream_connect_time"] is None
    text = format_text(rec, _Clock())
    assert text.count("\n") == 1 and '\\x22\\x0D\\x0A{\\x22status\\x22:999}\\x00' in text
    assert text.isascii()


def test_text_line_starts_like_nginx_combined() -> None:
    text = format_text(normalise(record()), _Clock())
    assert text.startswith('10.1.2.3 - - [21/Sep/2026:14:13:20 +0000] "GET /x HTTP/1.1" 200 1234 ')
    assert "mode=offload" in text and "ingress=demo/web" in text and "tls=TLSv1.3/TLS_AES_128_GCM_SHA256/f" in text


def test_long_client_fields_are_cut_so_every_line_fits_one_atomic_pipe_write() -> None:
    huge = "/" + "a" * 20000
    rec = normalise(record(path=huge, host=b"h" * 9000, sni="s" * 300, client_subject="CN=" + "x" * 9000))
    for fmt in (format_json, format_text):
        line = fmt(rec, _Clock())
        assert len(line.encode()) < PIPE_BUF
    assert json.loads(format_json(rec, _Clock()))["path"] == huge[:MAX_FIELD] + "..."
    escaped = normalise(record(path="/" + "\x01\u20ac" * 5000, host=b"\xff" * 9000, sni="\x00" * 300,
                               client_subject="\u20ac" * 9000, request_id=b"r" * 128))
    for fmt in (format_json, format_text):
        line = fmt(escaped, _Clock())
        assert len(line.encode("ascii", "backslashreplace")) < PIPE_BUF, fmt
    assert json.loads(format_json(escaped, _Clock()))["sni"].startswith("\x00")


def test_chunks_hold_whole_lines_and_stay_below_pipe_buf() -> None:
    lines = [f"line {i} " + "x" * (i * 37 % 900) + "\n" for i in range(500)]
    packed = chunks(lines)
    assert b"".join(packed).decode() == "".join(lines)
    assert all(len(c) <= PIPE_BUF and c.endswith(b"\n") for c in packed)
    assert len(packed) < len(lines) / 4  # batched, not one write per line


def test_off_and_unknown_formats() -> None:
    assert AccessLog("off").enabled is False
    with pytest.raises(ValueError, match="json"):
        AccessLog("yaml")  # type: ignore[arg-type]


async def test_records_beyond_max_pending_are_dropped_and_counted() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        while True:
            os.write(write_fd, b"x" * 65536)
    except BlockingIOError:
        os.set_blocking(write_fd, True)  # full: the writer thread blocks on its first write
    alog = AccessLog("json", fd=write_fd, max_pending=10)
    try:
        for _ in range(3):
            for _ in range(8):
                alog.add(record())
            alog.flush()
        assert alog.dropped_lines == 16  # the first batch of 8 is queued (blocked); the next two do not fit
        await asyncio.sleep(0)
    finally:
        os.close(read_fd)  # the blocked write fails (EPIPE): the thread counts the batch as dropped and goes on
        alog.close(timeout=5)
        os.close(write_fd)
    assert alog.dropped_lines == 24


def test_ingress_of_snapshot_sources() -> None:
    assert ingress_of("Ingress demo/web") == ("demo", "web")
    assert ingress_of("demo/web") == ("demo", "web")
    assert ingress_of("") == ("", "")
    assert log_source("Ingress demo/web", enabled=False) is None


# --- the annotation -------------------------------------------------------------------------------


run = k.rendered  # render as the controller does (tests/unit/objects.py)


WEB = [k.service("web"), k.endpoints("web", "10.0.0.1")]


def routes(snapshot: Snapshot) -> dict[str, bool]:
    return {r.path: r.access_log for v in snapshot.virtual_hosts for r in v.routes}


def test_annotation_false_turns_off_the_routes_of_that_ingress_only() -> None:
    quiet = k.ingress("quiet", annotations={KEY: "false"}, paths=[("/quiet", "Prefix", "web", 80)])
    loud = k.ingress("loud", paths=[("/loud", "Prefix", "web", 80)], created="2026-02-01T00:00:00Z")
    snap, problems = run(quiet, loud, *WEB)
    assert routes(snap) == {"/quiet": False, "/loud": True}
    assert not [p for p in problems if KEY in p.field]


def test_passthrough_rows_carry_it() -> None:
    snap, _ = run(k.ingress("shop", annotations={"portcullis.io/tls-mode": "passthrough", KEY: "off"},
                            service="web", port=443), *WEB)
    [row] = [h for h in snap.tls_hosts if h.mode == "passthrough"]
    assert row.access_log is False


def test_invalid_value_is_a_problem_and_the_default_logs() -> None:
    snap, problems = run(k.ingress("a", annotations={KEY: "sometimes"}), *WEB)
    assert all(routes(snap).values())
    assert any(p.reason == "InvalidAnnotation" and KEY in p.field for p in problems)


def test_snapshot_refuses_a_non_boolean_access_log() -> None:
    snap, _ = run(k.ingress("a"), *WEB)
    data = snap.to_dict()
    data["virtual_hosts"][0]["routes"][0]["access_log"] = "no"
    assert any("access_log must be true or false" in p for p in validate(Snapshot.from_dict(data)))
