"""Clients that keep sending while the cluster changes under them (a rolling upgrade, a leader's pod deleted), as
pooling HTTPS clients do: each holds one keep-alive connection and opens a new one only when the server closed it.

What counts as failed is what a user would see fail: a status other than 200, an answer from the wrong backend, or
a connection that breaks after the response started or that cannot be opened at all. A request that finds its
reused connection already closed by the server before any byte of an answer is sent again on a new connection, as
HTTP clients do for idempotent requests (RFC 9110, 9.2.2); those are counted as ``retried``, never hidden.
Bounded in time and count: every client stops by itself."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from e2e.cluster_edge import ExternalTarget


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    retried: int = 0
    connections: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.retried += other.retried
        self.connections += other.connections
        self.failures += other.failures

    def __str__(self) -> str:
        return (f"{self.sent} requests sent, {len(self.failures)} failed, {self.retried} re-sent on a new "
                f"connection after the server closed an idle one, {self.connections} connections")


class _Closed(Exception):
    """The reused connection was closed before any byte of the answer."""


class SteadyClients:
    def __init__(self, target: ExternalTarget, host: str, ca_pem: str, backend: str, clients: int = 4,
                 max_seconds: float = 180.0, max_requests: int = 200_000) -> None:
        self.target, self.host, self.backend = target, host, backend
        self.context = ssl.create_default_context(cadata=ca_pem)
        self.context.set_alpn_protocols(["http/1.1"])
        self.max_seconds, self.max_requests = max_seconds, max_requests // clients
        self.stop_event = threading.Event()
        self.tallies = [Tally() for _ in range(clients)]
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in self.tallies]

    def __enter__(self) -> SteadyClients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Tally:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)
        total = Tally()
        for tally in self.tallies:
            total.add(tally)
        return total

    def sent(self) -> int:
        return sum(t.sent for t in self.tallies)

    # ------------------------------------------------------------------ one client
    def _connect(self, tally: Tally) -> ssl.SSLSocket:
        raw = socket.create_connection((self.target.address, self.target.https_port), timeout=5.0)
        tally.connections += 1
        return self.context.wrap_socket(raw, server_hostname=self.host)

    def _exchange(self, conn: ssl.SSLSocket, reused: bool) -> tuple[int, str, bool]:
        conn.sendall(f"GET / HTTP/1.1\r\nHost: {self.host}\r\nUser-Agent: portcullis-e2e-steady\r\n\r\n".encode())
        response = http.client.HTTPResponse(conn)  # type: ignore[arg-type]
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
            if reused:
                raise _Closed from None
            raise
        body = response.read()
        server = response.getheader("x-echo-server") or _server_of(body)
        return response.status, server, response.will_close

    def _run(self, tally: Tally) -> None:
        deadline = time.monotonic() + self.max_seconds
        conn: ssl.SSLSocket | None = None
        reused = False
        while not self.stop_event.is_set() and time.monotonic() < deadline and tally.sent < self.max_requests:
            tally.sent += 1
            try:
                if conn is None:
                    conn, reused = self._connect(tally), False
                try:
                    status, server, closing = self._exchange(conn, reused)
                except _Closed:
                    tally.retried += 1
                    conn.close()
                    conn = self._connect(tally)
                    status, server, closing = self._exchange(conn, False)
            except (OSError, http.client.HTTPException) as exc:
                tally.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if status == 200 and server == self.backend:
                tally.ok += 1
            else:
                tally.failures.append(f"{time.strftime('%H:%M:%S')} status {status} from {server!r}")
            if closing:
                conn.close()
                conn = None
            else:
                reused = True
        if conn is not None:
            conn.close()


def _server_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("server", ""))
    except ValueError:
        return ""
