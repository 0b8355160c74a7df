"""``portcullis dataplane``: the cluster data plane, fed snapshots by the controller over the admin API.

Flags follow docs/contracts.md section 4; every flag can also come from the environment as
``PORTCULLIS_<FLAG>`` (``--admin-token-file`` -> ``PORTCULLIS_ADMIN_TOKEN_FILE``), which is how
the chart sets them. A flag on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from dataplane.access_log import FORMATS as ACCESS_LOG_FORMATS
from dataplane.admin import AdminConfigError
from dataplane.http.parser import PARSER_IMPLEMENTATION
from dataplane.http2._session import NGHTTP2_VERSION
from dataplane.http2.guard import CEILING_FACTOR, PER_FRAME_ALLOWANCE
from dataplane.limits import default_max_connections
from dataplane.runtime import DataPlane, DataPlaneConfig

log = logging.getLogger("portcullis.dataplane")

_STANDARD_RECORD_KEYS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields become keys (never pass keys or tokens there)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_RECORD_KEYS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def _env(flag: str) -> str | None:
    return os.environ.get("PORTCULLIS_" + flag.upper().replace("-", "_"))


def _default(flag: str, fallback: Any, kind: Callable[[str], Any] = str) -> Any:
    value = _env(flag)
    if value is None or value == "":
        return fallback
    try:
        return kind(value)
    except ValueError:
        name = "PORTCULLIS_" + flag.upper().replace("-", "_")
        raise SystemExit(f"{name}={value!r} is not a valid {kind.__name__}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--bind", default=_default("bind", "0.0.0.0"), help="address of the HTTPS and HTTP listeners")
    add("--https-port", type=int, default=_default("https-port", 8443, int))
    add("--http-port", type=int, default=_default("http-port", 8080, int))
    add("--admin-port", type=int, default=_default("admin-port", 9901, int))
    add("--admin-bind", default=_default("admin-bind", None), help="admin listener address (default: --bind)")
    add("--admin-cert-file", default=_default("admin-cert-file", None), help="TLS certificate of the admin API")
    add("--admin-key-file", default=_default("admin-key-file", None), help="its private key")
    add("--admin-token-file", default=_default("admin-token-file", None),
        help="file holding the bearer token the controller pushes with")
    add("--https-redirect-port", type=int, default=_default("https-redirect-port", 443, int),
        help="port in insecure-policy redirect locations (443: omitted)")
    add("--max-headers", type=int, default=_default("max-headers", 100, int),
        help="request header lines allowed per request (431 beyond)")
    add("--http2", default=_default("http2", "true"), choices=["true", "false"],
        help="offer h2 in ALPN on terminated hosts (those with portcullis.io/http2: \"false\" never do); false: "
             "HTTP/1.1 only. The plain HTTP port speaks HTTP/1.1 only (no h2c upgrade or prior knowledge)")
    for flag, default, what in H2_FLAGS:
        add("--" + flag, type=int, default=_default(flag, default, int), help=what)
    add("--workers", type=int, default=_default("workers", 1, int),
        help="serving processes per pod, each with its own event loop and SO_REUSEPORT listeners, behind one "
             "admin API in a supervising process (1: one process serves all)")
    add("--client-send-timeout", type=float, default=_default("client-send-timeout", 60.0, float),
        help="seconds a client may accept none of the response bytes waiting for it before both sides close")
    add("--client-body-timeout", type=float, default=_default("client-body-timeout", 60.0, float),
        help="seconds between request-body bytes before 408 (or a close once the response started)")
    add("--upgrade-idle-timeout", type=float, default=_default("upgrade-idle-timeout", 3600.0, float),
        help="seconds an upgraded (WebSocket) connection may stay silent both ways before it is closed")
    add("--max-body-size", type=int, default=_default("max-body-size", 1024 * 1024, int),
        help="request body bytes allowed on routes that set no limit (413 beyond; 0: no limit)")
    add("--tunnel-idle-timeout", type=float, default=_default("tunnel-idle-timeout", 3600.0, float),
        help="seconds a passthrough tunnel may stay silent before it is closed (0: never)")
    add("--max-connections", type=int, default=_default("max-connections", -1, int),
        help="client connections open at once per serving process; beyond, new ones are closed at accept before "
             "any TLS work (-1: derived from the file-descriptor limit; 0: no cap)")
    add("--max-connections-per-ip", type=int, default=_default("max-connections-per-ip", 0, int),
        help="client connections open at once per client IP and serving process (0: no cap)")
    add("--max-handshakes-per-second", type=float, default=_default("max-handshakes-per-second", 0.0, float),
        help="full TLS handshakes begun a second per serving process; beyond, new connections to terminated hosts "
             "are closed before the handshake (passthrough is not affected; 0: no cap)")
    add("--state-file", default=_default("state-file", None),
        help="keep the last pushed snapshot here (mode 0600; put it on a memory-backed volume: it holds private "
             "keys) and serve it at once after a restart")
    add("--drain-timeout", type=float, default=_default("drain-timeout", 30.0, float),
        help="seconds live connections get to finish after SIGTERM")
    add("--access-log", default=_default("access-log", "json"), choices=list(ACCESS_LOG_FORMATS),
        help="one line per HTTP request and per passthrough connection to stdout (json, nginx-combined-like text, "
             "or off); never blocks serving: lines stdout cannot take are dropped and counted")
    add("--log-level", default=_default("log-level", "info"), choices=["debug", "info", "warning", "error"])
    add("--log-format", default=_default("log-format", "json"), choices=["json", "text"])


_PER_FRAME = (f", plus {PER_FRAME_ALLOWANCE} per HEADERS or DATA frame from the client that second (at most "
              f"{CEILING_FACTOR} times this)")
# HTTP/2 limits per client connection (dataplane/http2/guard.py): flag, default, help. A rate beyond its limit
# ends the connection with GOAWAY ENHANCE_YOUR_CALM, counted in portcullis_h2_violations_total{reason}.
H2_FLAGS = (
    ("h2-max-concurrent-streams", 128, "HTTP/2 streams a client may have open at once per connection"),
    ("h2-max-resets-per-second", 200, "client RST_STREAM frames a second per connection (rapid reset, "
                                      "CVE-2023-44487)"),
    ("h2-max-continuation-frames", 32, "CONTINUATION frames in one header block (CVE-2024-27316; the block's "
                                       "bytes are bounded by the request header limit, 32 KiB)"),
    ("h2-max-settings-per-second", 50, "SETTINGS frames a second per connection"),
    ("h2-max-pings-per-second", 50, "PING frames a second per connection"),
    ("h2-max-empty-frames-per-second", 100, "frames without payload (DATA without END_STREAM, HEADERS, "
                                            "CONTINUATION) a second per connection"),
    ("h2-max-window-updates-per-second", 1000, "WINDOW_UPDATE frames a second per connection" + _PER_FRAME),
    ("h2-max-priority-per-second", 100, "PRIORITY frames a second per connection (CVE-2019-9513)" + _PER_FRAME),
)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def read_token(path: str | None) -> str | None:
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def config_from_args(args: argparse.Namespace) -> DataPlaneConfig:
    for flag in ("client_send_timeout", "client_body_timeout", "upgrade_idle_timeout"):
        if not getattr(args, flag) > 0:  # also refuses NaN
            raise SystemExit(f"--{flag.replace('_', '-')} must be a positive number of seconds")
    if args.max_body_size < 0:
        raise SystemExit("--max-body-size must be 0 (no limit) or a positive number of bytes")
    if args.max_connections < -1 or args.max_connections_per_ip < 0:
        raise SystemExit("--max-connections must be -1 (derived), 0 (no cap) or a count; "
                         "--max-connections-per-ip 0 or a count")
    if not args.max_handshakes_per_second >= 0:  # also refuses NaN
        raise SystemExit("--max-handshakes-per-second must be 0 (no cap) or a positive rate")
    h2 = {flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag, _, _ in H2_FLAGS}
    for name, value in h2.items():
        if value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    return DataPlaneConfig(
        bind=args.bind,
        https_port=args.https_port,
        http_port=args.http_port,
        admin_port=args.admin_port,
        admin_bind=args.admin_bind,
        admin_cert_file=args.admin_cert_file,
        admin_key_file=args.admin_key_file,
        admin_token=read_token(args.admin_token_file),
        https_redirect_port=args.https_redirect_port,
        max_headers=args.max_headers,
        drain_timeout=args.drain_timeout,
        tunnel_idle_timeout=args.tunnel_idle_timeout,
        client_send_timeout=args.client_send_timeout,
        client_body_timeout=args.client_body_timeout,
        upgrade_idle_timeout=args.upgrade_idle_timeout,
        max_body_size=args.max_body_size,
        state_file=args.state_file or None,
        access_log=args.access_log,
        max_connections=default_max_connections() if args.max_connections == -1 else args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip,
        max_handshakes_per_second=args.max_handshakes_per_second,
        http2=args.http2 == "true",
        **h2,
    )


def _stop_on_signals() -> asyncio.Event:
    """Set by SIGTERM/SIGINT: the cue to stop accepting and drain."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _warn_without_token(config: DataPlaneConfig) -> None:
    if config.admin_token is None:
        log.warning("no --admin-token-file: snapshot pushes will be refused (401)")


async def serve(config: DataPlaneConfig, ready: Callable[[DataPlane], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then stop accepting and drain (bounded)."""
    dataplane = DataPlane(config)
    try:
        await dataplane.start()
    except AdminConfigError as exc:
        log.error("refusing to start: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("cannot bind a listener: %s", exc)
        print(f"error: cannot bind a listener: {exc}", file=sys.stderr)
        return 1
    _warn_without_token(config)
    stop = _stop_on_signals()
    if ready is not None:
        ready(dataplane)
    print(f"portcullis dataplane: https {dataplane.https_port}, http {dataplane.http_port}, "
          f"admin {dataplane.admin_port}", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("stopping: draining live connections", extra={"live": dataplane.live_connections,
                                                            "drain_timeout": config.drain_timeout})
    await dataplane.stop()
    log.info("stopped")
    return 0


async def serve_workers(config: DataPlaneConfig, workers: int, log_level: str = "info",
                        log_format: str = "json") -> int:
    """``--workers N`` above 1: a supervisor (admin API, no client traffic) and N serving processes."""
    from dataplane.admin import AdminServer
    from dataplane.workers import WorkerPool

    pool = WorkerPool(config, workers, log_level, log_format)
    admin = AdminServer(pool, config)
    try:
        admin.check_config()
        await pool.start()
        await admin.start()  # restores --state-file through the pool: every worker serves it before readyz
    except AdminConfigError as exc:
        await pool.stop(drain_timeout=0)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        await pool.stop(drain_timeout=0)
        print(f"error: cannot bind a listener: {exc}", file=sys.stderr)
        return 1
    _warn_without_token(config)
    stop = _stop_on_signals()
    print(f"portcullis dataplane: https {pool.https_port}, http {pool.http_port}, admin {admin.port}, "
          f"workers {workers}", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("stopping: every worker drains its live connections", extra={"drain_timeout": config.drain_timeout})
    await pool.stop()
    await admin.stop()
    log.info("stopped")
    return 0


def _runner(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    # Says which native parts run: an image or install without the compiled extensions is visible at once.
    log.info("HTTP request-head parser: %s; HTTP/2 session: libnghttp2 %s", PARSER_IMPLEMENTATION, NGHTTP2_VERSION,
             extra={"http_parser": PARSER_IMPLEMENTATION, "nghttp2": NGHTTP2_VERSION})
    if not 1 <= args.workers <= 256:
        print(f"error: --workers {args.workers}: give 1 to 256 serving processes", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        if args.workers > 1:
            return _runner(serve_workers(config, args.workers, args.log_level, args.log_format))
        return _runner(serve(config))
    return 0
