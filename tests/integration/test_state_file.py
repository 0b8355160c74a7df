"""``--state-file``: a restarted data plane serves its last pushed snapshot at once (issue 11 item 3), keeps the file
private (0600), and never trusts a file that is not a valid snapshot."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from cryptography import x509

from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.snapshot import Snapshot
from tests.integration.conftest import TOKEN, certificate, terminate_host
from tests.pki import CA

HOST = "kept.example.com"


def snapshot(ca: CA, generation: int) -> tuple[Snapshot, int]:
    issued = ca.issue(HOST)
    cert = certificate(issued, HOST)
    snap = Snapshot(generation=generation, certificates=(cert,), tls_hosts=(terminate_host(HOST, cert),)).canonical()
    return snap, issued.cert.serial_number


@asynccontextmanager
async def running(state: Path) -> AsyncIterator[DataPlane]:
    dp = DataPlane(DataPlaneConfig(bind="127.0.0.1", https_port=0, http_port=0, admin_port=0, admin_token=TOKEN,
                                   drain_timeout=0.5, state_file=str(state)))
    await dp.start()
    try:
        yield dp
    finally:
        await dp.stop(drain_timeout=0)


async def push(dp: DataPlane, body: str) -> int:
    async with aiohttp.ClientSession() as http, http.put(
            f"http://127.0.0.1:{dp.admin_port}/snapshot", data=body,
            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        return r.status


def served_serial(dp: DataPlane, ca: CA) -> int:
    """A real TLS handshake with SNI: the certificate the data plane presents for HOST."""
    context = ssl.create_default_context(cadata=ca.cert_pem)
    with socket.create_connection(("127.0.0.1", dp.https_port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=HOST) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_a_restarted_data_plane_serves_the_kept_snapshot_at_once(tmp_path: Path, ca: CA) -> None:
    state = tmp_path / "state" / "snapshot.json"
    state.parent.mkdir()
    snap, serial = snapshot(ca, 41)
    async with running(state) as first:
        assert not first.ready
        assert await push(first, snap.to_json()) == 200
        assert stat.S_IMODE(state.stat().st_mode) == 0o600  # it holds private keys
        assert json.loads(state.read_text())["checksum"] == snap.checksum
        refused = json.loads(snap.to_json())
        refused["checksum"] = "sha256:" + "0" * 64
        assert await push(first, json.dumps(refused)) == 422
        assert json.loads(state.read_text())["checksum"] == snap.checksum  # a refused push is not kept
    assert list(state.parent.iterdir()) == [state]  # no temporary files left behind

    async with running(state) as second:
        assert second.ready and second.checksum == snap.checksum and second.generation == 41
        assert await asyncio.to_thread(served_serial, second, ca) == serial
        newer, newer_serial = snapshot(ca, 42)
        assert await push(second, newer.to_json()) == 200  # pushes go on as usual
        assert await asyncio.to_thread(served_serial, second, ca) == newer_serial
    async with running(state) as third:
        assert third.checksum == newer.checksum


async def test_a_state_file_that_is_not_a_valid_snapshot_is_ignored(tmp_path: Path, ca: CA) -> None:
    snap, _ = snapshot(ca, 5)
    tampered = json.loads(snap.to_json())
    tampered["tls_hosts"][0]["host"] = "other.example.com"  # content no longer matches the checksum
    for content in ("{not json", "[" * 100_000, json.dumps({"schema": 1}), json.dumps(tampered)):
        state = tmp_path / "snapshot.json"
        state.write_text(content)
        async with running(state) as dp:
            assert not dp.ready and dp.checksum is None, content[:40]
            assert await push(dp, snap.to_json()) == 200  # and the first push replaces it
        assert json.loads(state.read_text())["checksum"] == snap.checksum


async def test_no_state_file_yet_starts_empty(tmp_path: Path) -> None:
    async with running(tmp_path / "absent.json") as dp:
        assert not dp.ready
