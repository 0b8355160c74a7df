"""Handshake CPU of the data plane: full vs resumed, TLS 1.2 and 1.3, session tickets off (shipped) vs on.

``python bench/handshakes.py [-n 400] [--rounds 3]`` starts a data plane in a child process (one per
ticket setting, so its CPU is its own), serves one terminate host, and times N handshakes from a
client in this process: each connection handshakes, reads one byte the edge's echo app sends and
closes. Data-plane CPU per handshake = (utime + stime of the child from /proc) / N; the median of
``--rounds`` rounds is reported. "tickets on" is the former behaviour (one ticket key for the life
of the process), obtained in the child by clearing ``OP_NO_TICKET`` on every context it builds.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pki import CA

HOST = "bench.example.com"

CHILD = textwrap.dedent("""
    import asyncio, json, ssl, sys
    from dataplane import tls
    from dataplane.runtime import DataPlane, DataPlaneConfig
    from dataplane.snapshot import Certificate, Snapshot, TLSHost, content_id

    tickets, host = sys.argv[1] == "on", sys.argv[2]
    cert_pem, key_pem = sys.stdin.read().split("\\0")
    if tickets:
        made = tls.server_context
        def with_tickets(*args, **kwargs):
            ctx = made(*args, **kwargs)
            ctx.options &= ~ssl.OP_NO_TICKET
            return ctx
        tls.server_context = with_tickets

    class Hello(asyncio.Protocol):
        def __init__(self, info): pass
        def connection_made(self, transport): transport.write(b"!")

    async def main():
        dp = DataPlane(DataPlaneConfig(bind="127.0.0.1", https_port=0, http_port=0, admin_port=0,
                                       admin_token="x" * 32), app=Hello)
        await dp.start()
        cert = Certificate(content_id(cert_pem, key_pem), cert_pem, key_pem, (host,))
        snap = Snapshot(generation=1, certificates=(cert,),
                        tls_hosts=(TLSHost(host, "terminate", cert.id),)).canonical()
        assert dp.apply(snap) == []
        print(dp.https_port, flush=True)
        await asyncio.Event().wait()  # until the parent kills this process

    asyncio.run(main())
""")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def handshakes(port: int, ctx: ssl.SSLContext, n: int, resume: bool) -> tuple[int, int]:
    """(handshakes done, of which resumed)."""
    session = None
    if resume:
        session = one(port, ctx, None)[0]
    resumed = 0
    for _ in range(n):
        new_session, reused = one(port, ctx, session)
        resumed += reused
        if resume and new_session is not None:
            session = new_session
    return n, resumed


def one(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOST, session=session) as conn:
        conn.recv(1)
        return conn.session, bool(conn.session_reused)


def measure(tickets: str, n: int, rounds: int, ca: CA, cert_pem: str, key_pem: str) -> list[str]:
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen([sys.executable, "-c", CHILD, tickets, HOST], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(cert_pem + "\0" + key_pem)
    child.stdin.flush()
    child.stdin.close()  # the child reads the PEM to EOF
    rows = []
    try:
        port = int(child.stdout.readline())
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            for resume in (False, True):
                ctx = ssl.create_default_context(cadata=ca.cert_pem)
                ctx.maximum_version = ctx.minimum_version = version
                per: list[float] = []
                wall: list[float] = []
                resumed = 0
                for _ in range(rounds):
                    before, start = cpu_seconds(child.pid), time.perf_counter()
                    done, resumed = handshakes(port, ctx, n, resume)
                    wall.append((time.perf_counter() - start) / done * 1e6)
                    per.append((cpu_seconds(child.pid) - before) / done * 1e6)
                rows.append(f"| {tickets} | {version.name} | {'resumed' if resume else 'full'} | "
                            f"{statistics.median(per):.0f} | {statistics.median(wall):.0f} | {resumed}/{n} |")
    finally:
        child.kill()
        child.wait(10)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ca = CA("Bench CA")
    issued = ca.issue(HOST)
    print("| tickets | version | handshake | data-plane CPU µs/handshake | wall µs/handshake | resumed |")
    print("|---|---|---|---:|---:|---:|")
    for tickets in ("off", "on"):
        for row in measure(tickets, args.n, args.rounds, ca, issued.cert_pem, issued.key_pem):
            print(row)


if __name__ == "__main__":
    main()
