"""An apiserver outage for one controller, without touching the rig's shared kube-apiserver.

Other test sessions use the rig's apiserver at the same time, so a test must not SIGSTOP it. Instead, a
controller under test reaches the apiserver through this TCP relay (its own process, its own kubeconfig), and
the test does to the relay what the issue does to the apiserver:

- ``freeze()``: SIGSTOP. The kernel still completes handshakes into the listen backlog and buffers request
  bytes, nothing is answered until ``thaw()`` (SIGCONT); then everything queued is relayed. From the
  controller's side this is exactly a frozen apiserver.
- ``refuse()``: SIGKILL. Open connections are reset and new ones refused until ``restore()`` starts a relay
  on the same port.

Run as ``python -m e2e.apiproxy LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT`` (bytes are relayed untouched: TLS
is end to end between the controller and the apiserver, whose certificate names 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from e2e.netns import REPO, RigError, die_with_parent, wait_tcp


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def _relay(listen_port: int, host: str, port: int) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port, reuse_address=True)
    print(f"relaying 127.0.0.1:{listen_port} -> {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiProxy:
    """The relay process and a kubeconfig that points at it (same CA and credentials as ``kubeconfig``)."""

    def __init__(self, kubeconfig: Path, work_dir: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        server = config["clusters"][0]["cluster"]["server"]
        hostport = server.split("://", 1)[1].rstrip("/")
        self.upstream_host, _, upstream_port = hostport.rpartition(":")
        self.upstream_port = int(upstream_port)
        self.port = free_port()
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        work_dir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = work_dir / "apiproxy.kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)
        self.log_path = work_dir / "apiproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "e2e.apiproxy", str(self.port), self.upstream_host, str(self.upstream_port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True, preexec_fn=die_with_parent)
        try:
            wait_tcp("127.0.0.1", self.port, timeout=10)
        except RigError as exc:
            raise RigError(f"{exc}\napiproxy log:\n{self.log_path.read_text(errors='replace')}") from None

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RigError(f"apiproxy is not running; log:\n{self.log_path.read_text(errors='replace')}")
        os.kill(self.proc.pid, sig)

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def refuse(self) -> None:
        self._signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=10)

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process dies only once it runs again
            self.proc.wait(timeout=10)


if __name__ == "__main__":
    listen, upstream_host, upstream_port = sys.argv[1:4]
    asyncio.run(_relay(int(listen), upstream_host, int(upstream_port)))
