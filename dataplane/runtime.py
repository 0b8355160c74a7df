"""One data plane: its listeners, the applied snapshot and the tables built from it.

``DataPlane`` is the object both ``portcullis dataplane`` (behind the admin API) and
``portcullis local`` (in-process) drive. ``apply`` is synchronous and all-or-nothing: validate,
build every table the snapshot needs, then swap one reference. Connections accepted afterwards
take the new TLS table; every HTTP request, on new and open connections alike, routes with the
new HTTP table (the engine reads it through one shared ``TableRef``). An open connection keeps
only its TLS session: when its SNI row changed, it is closed at the next request boundary
(idle ones whose next request would be refused, right at the apply).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from dataplane import pem
from dataplane.access_log import AccessLog, AccessLogFormat
from dataplane.admin import AdminServer
from dataplane.edge import (
    Admission,
    AppFactory,
    EdgeSettings,
    EdgeState,
    HostConnLimit,
    HTTPListener,
    HTTPSListener,
    Tracker,
)
from dataplane.gc_pause import FrozenBudget, gc_paused
from dataplane.http.connection import HTTPProtocol
from dataplane.http.info import ConnectionInfo
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import HTTPTable, TableRef, build_http_table, host_labels
from dataplane.http2.guard import H2Limits
from dataplane.limits import LimitRegistry, Whitelist, limit_key, parse_whitelist
from dataplane.metrics import Metrics
from dataplane.snapshot import Snapshot, content_id, validate
from dataplane.tls import TLSTable, build_tls_table, generate_fallback_certificate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPlaneConfig:
    bind: str = "127.0.0.1"
    https_port: int = 8443
    http_port: int = 8080
    admin_port: int = 9901
    admin_bind: str | None = None  # None: same as bind
    admin_cert_file: str | None = None
    admin_key_file: str | None = None
    admin_token: str | None = None
    https_redirect_port: int = 443
    max_headers: int = 100  # HTTP: request header lines; 431 beyond
    clienthello_max_bytes: int = 65536
    clienthello_timeout: float = 10.0
    handshake_timeout: float = 10.0
    zero_copy: bool = True  # passthrough relays with splice(2) on Linux; False: through Python (asyncio Protocols)
    tunnel_idle_timeout: float = 3600.0  # passthrough: close tunnels silent this long (0: never)
    client_send_timeout: float = 60.0  # HTTP: the client accepted none of our bytes this long -> close
    client_body_timeout: float = 60.0  # HTTP: no request-body byte this long -> 408 / close
    upgrade_idle_timeout: float = 3600.0  # HTTP: upgraded (WebSocket) connection silent both ways -> close
    max_body_size: int = 1024 * 1024  # HTTP: request body limit of routes that set none (0: no limit)
    drain_timeout: float = 30.0
    reuse_port: bool = False
    admin_enabled: bool = True  # local mode may drive apply() directly and still want /metrics: keep True
    admin_max_body: int = 64 * 1024 * 1024
    state_file: str | None = None  # last pushed snapshot, restored at start (dataplane/state_file.py)
    access_log: AccessLogFormat = "off"  # per request/passthrough connection to stdout (the CLI's default: json)
    max_connections: int = 0  # client connections open at once in this process (0: no cap; dataplane/limits.py)
    max_connections_per_ip: int = 0  # the same per client IP (0: no cap)
    max_handshakes_per_second: float = 0.0  # full TLS handshakes begun a second, HTTPS listener (0: no cap)
    http2: bool = True  # ALPN offers h2 on terminated hosts (those with http2 False never); False: HTTP/1.1 only
    # HTTP/2 client connections (dataplane/http2/guard.py); flat, so the config crosses to worker processes as is
    h2_max_concurrent_streams: int = 128
    h2_max_resets_per_second: int = 200
    h2_max_continuation_frames: int = 32
    h2_max_settings_per_second: int = 50
    h2_max_pings_per_second: int = 50
    h2_max_empty_frames_per_second: int = 100
    h2_max_window_updates_per_second: int = 1000
    h2_max_priority_per_second: int = 100

    def h2_limits(self) -> H2Limits:
        return H2Limits(self.h2_max_concurrent_streams, self.h2_max_resets_per_second,
                        self.h2_max_continuation_frames, self.h2_max_settings_per_second,
                        self.h2_max_pings_per_second, self.h2_max_empty_frames_per_second,
                        self.h2_max_window_updates_per_second, self.h2_max_priority_per_second)


@dataclass(frozen=True)
class _Applied:
    snapshot: Snapshot
    checksum: str | None
    edge: EdgeState
    http_table: HTTPTable
    verified: frozenset[str]  # content ids of PEM material already loaded once


@dataclass(frozen=True)
class Prepared:
    """A snapshot built by ``DataPlane.prepare`` and not yet swapped in, with the state it was built on."""

    built: _Applied
    previous: _Applied


class DataPlane:
    def __init__(self, config: DataPlaneConfig, metrics: Metrics | None = None,
                 app: AppFactory | None = None, tracker: Tracker | None = None,
                 access_log: AccessLog | None = None) -> None:
        """``app`` replaces the HTTP engine behind both listeners (tests and tools that speak another protocol);
        ``tracker`` one that also counts (a worker process counts the connections it serves); ``access_log``
        one that writes elsewhere than stdout (tests)."""
        self.config = config
        self._app_override = app
        self.metrics = metrics if metrics is not None else Metrics()
        self.fallback = generate_fallback_certificate()
        self.tracker = tracker if tracker is not None else Tracker()
        self.access_log = access_log if access_log is not None else AccessLog(
            config.access_log, self.metrics.access_log_dropped_lines, self.metrics.access_log_lines)
        self.limits = LimitRegistry()  # per-Ingress limit state: survives applies
        self._frozen = FrozenBudget()  # when a build also collects what earlier builds froze (gc_pause.py)
        self._http_settings = HTTPSettings(
            https_redirect_port=config.https_redirect_port,
            client_send_timeout=config.client_send_timeout,
            client_body_timeout=config.client_body_timeout,
            upgrade_idle_timeout=config.upgrade_idle_timeout,
            max_body_size=config.max_body_size,
            max_headers=config.max_headers,
            h2=config.h2_limits(),
        )
        # The HTTP/2 engine, when this data plane serves h2 (the handshake then offers it); a test's app
        # replaces both engines and is told the protocol in ConnectionInfo.protocol.
        self._h2 = _h2_server() if config.http2 and app is None else None
        self._offer_h2 = config.http2 and (app is not None or self._h2 is not None)
        # Every HTTP connection reads the current table through this one ref; _swap repoints it.
        self._table_ref = TableRef(build_http_table(Snapshot(), None, self.metrics, self._http_settings))
        self._ready = False
        initial = self._build(Snapshot(), None, frozenset())
        if isinstance(initial, list):  # pragma: no cover - an empty snapshot always builds
            raise RuntimeError("cannot build the empty state: " + "; ".join(initial))
        self._applied = replace(initial, checksum=None)  # nothing applied yet: report no checksum
        self._table_ref.table = initial.http_table
        settings = EdgeSettings(config.clienthello_max_bytes, config.clienthello_timeout, config.handshake_timeout,
                                config.zero_copy, tunnel_idle_timeout=config.tunnel_idle_timeout,
                                max_connections=config.max_connections,
                                max_connections_per_ip=config.max_connections_per_ip,
                                max_handshakes_per_second=config.max_handshakes_per_second)
        admission = Admission(settings, self.tracker, self.metrics)  # one count across both listeners
        self._https = HTTPSListener(self._edge_state, self.metrics, settings, self.tracker, admission)
        self._https.access_log = self.access_log
        self._http = HTTPListener(self._edge_state, self.metrics, self.tracker, admission)
        self._admin: AdminServer | None = None
        self._started = False
        self._apply_lock = asyncio.Lock()

    # --- state --------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._applied.snapshot.generation

    @property
    def checksum(self) -> str | None:
        return self._applied.checksum

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def snapshot(self) -> Snapshot:
        return self._applied.snapshot

    @property
    def serving(self) -> bool:
        """Listening and not draining (the admin API's ``/readyz`` also needs ``ready``)."""
        return self._started

    @property
    def https_port(self) -> int:
        return self._https.port

    @property
    def http_port(self) -> int:
        return self._http.port

    @property
    def admin_port(self) -> int:
        return self._admin.port if self._admin is not None else 0

    @property
    def live_connections(self) -> int:
        return self.tracker.live

    def _edge_state(self) -> EdgeState:
        return self._applied.edge

    # --- apply --------------------------------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> list[str]:
        """Validate, build, swap. Returns the reasons it was refused (empty: applied)."""
        started = time.perf_counter()
        return self._swap(snapshot, self._build_safely(snapshot, self._applied), started)

    async def apply_async(self, snapshot: Snapshot) -> list[str]:
        """``apply`` for the event loop: validation and OpenSSL loading run in a worker thread.

        Building 10k certificate contexts takes seconds; in a thread, the interpreter's switch
        interval hands the loop the GIL every few milliseconds, so live connections keep flowing.
        Only the final swap runs on the loop. Applies are serialised, so they cannot interleave.
        """
        async with self._apply_lock:
            started = time.perf_counter()
            previous = self._applied
            result = await asyncio.to_thread(self._build_safely, snapshot, previous)
            if self._applied is not previous:  # a synchronous apply slipped in meanwhile: build on top of it
                result = self._build_safely(snapshot, self._applied)
            errors = self._swap(snapshot, result, started, report=False)
            if not errors:  # one gauge per certificate: 157 ms at 10k hosts, so off the loop too
                await asyncio.to_thread(self._report_certificates, snapshot)
            return errors

    async def prepare(self, snapshot: Snapshot) -> Prepared | list[str]:
        """Phase one of an apply across worker processes (``dataplane/workers.py``): build every table off the
        loop, swap nothing. The supervisor commits only once every worker prepared, so a snapshot one worker
        refuses is served by none."""
        async with self._apply_lock:
            previous = self._applied
            result = await asyncio.to_thread(self._build_safely, snapshot, previous)
            return result if isinstance(result, list) else Prepared(result, previous)

    def commit(self, snapshot: Snapshot, prepared: Prepared) -> None:
        """Phase two: swap what ``prepare`` built. Applies are serialised by the supervisor; should another apply
        have slipped in since, build again on top of it (synchronously: it cannot be refused differently)."""
        result: _Applied | list[str] = prepared.built
        if prepared.previous is not self._applied:
            result = self._build_safely(snapshot, self._applied)
        self._swap(snapshot, result, time.perf_counter(), report=False)

    def _build_safely(self, snapshot: Snapshot, previous: _Applied) -> _Applied | list[str]:
        """Build with the cyclic GC paused (a full collection stalled the loop 343 ms at 10k hosts)."""
        with gc_paused(self._frozen):
            try:
                return self._build(snapshot, previous, previous.verified)
            except Exception as exc:  # a bug in a builder must refuse the snapshot, not kill the data plane
                log.exception("snapshot build failed")
                return [f"internal error while building the snapshot: {type(exc).__name__}: {exc}"]

    def _swap(self, snapshot: Snapshot, result: _Applied | list[str], started: float,
              report: bool = True) -> list[str]:
        if isinstance(result, list):
            self.metrics.snapshot_applies.labels("invalid").inc()
            log.warning("snapshot refused", extra={"generation": snapshot.generation, "errors": result[:20]})
            return result
        self._applied = result
        self._table_ref.table = result.http_table
        self._close_changed_idle()
        self._forget_gone(snapshot)
        self._ready = True
        self.metrics.snapshot_generation.set(snapshot.generation)
        self.metrics.snapshot_applies.labels("applied").inc()
        self.metrics.snapshot_apply_seconds.observe(time.perf_counter() - started)
        if report:
            self._report_certificates(snapshot)
        log.info("snapshot applied", extra={"generation": snapshot.generation, "checksum": result.checksum})
        return []

    def _build(self, snapshot: Snapshot, previous: _Applied | None, verified: frozenset[str]) -> _Applied | list[str]:
        errors = validate(snapshot, check_pem=False)
        if errors:
            return errors
        seen = set()
        # Serving certificates are loaded into OpenSSL by build_tls_table anyway (which explains a
        # failure precisely); loading them twice doubled the time of a first apply.
        served = {h.certificate_id for h in snapshot.tls_hosts if h.mode == "terminate"}
        served.add(snapshot.default_certificate_id)
        for cert in snapshot.certificates:  # OpenSSL-load only material this process has not loaded yet
            key = content_id(cert.cert_pem, cert.key_pem)
            if key not in verified and cert.id not in served:
                errors.extend(f"certificate {cert.id}: {p}" for p in pem.check_key_pair(cert.cert_pem, cert.key_pem))
            seen.add(key)
        for ca in snapshot.ca_bundles:
            key = content_id(ca.pem, ca.crl_pem)
            if key not in verified:
                errors.extend(f"CA bundle {ca.id}: {p}" for p in pem.check_ca_bundle(ca.pem, ca.crl_pem))
            seen.add(key)
        if errors:
            return errors
        tls, tls_errors = build_tls_table(snapshot, self.fallback, previous.edge.tls if previous else None,
                                          self._offer_h2)
        if tls is None:
            return tls_errors
        http_table = self._build_http(snapshot, previous.http_table if previous else None)
        edge = EdgeState(tls, self._app_factory(), http_table.pools, self._conn_limits(snapshot))
        checksum = snapshot.checksum or snapshot.canonical().checksum
        return _Applied(snapshot, checksum, edge, http_table, frozenset(seen))

    def _build_http(self, snapshot: Snapshot, previous: HTTPTable | None) -> HTTPTable:
        return build_http_table(snapshot, previous, self.metrics, self._http_settings, self.limits)

    def _forget_gone(self, snapshot: Snapshot) -> None:
        """After a swap: the limit state and metric series of Ingresses, hosts and pools the snapshot no longer has
        go, so memory and ``/metrics`` follow the configuration instead of every name it ever had."""
        rate_keys = {limit_key(r.source, v.host) for v in snapshot.virtual_hosts for r in v.routes if r.limit_rps}
        counter_keys = {limit_key(row.source, row.host) for row in snapshot.tls_hosts if row.limit_connections}
        self.limits.retain(rate_keys, counter_keys)
        self.metrics.retain_series(host_labels(snapshot), {p.id for p in snapshot.pools})

    def _conn_limits(self, snapshot: Snapshot) -> dict[str, HostConnLimit]:
        """limit-connections by SNI host; one counter per Ingress (its hosts share it), kept across applies."""
        limits: dict[str, HostConnLimit] = {}
        for row in snapshot.tls_hosts:
            if row.limit_connections:
                networks, _ = parse_whitelist(row.limit_whitelist)
                counter = self.limits.counter(limit_key(row.source, row.host))
                limits[row.host] = HostConnLimit(row.limit_connections, counter, Whitelist(networks))
        return limits

    def _app_factory(self) -> AppFactory:
        """The HTTP engine behind both listeners; it reads the current table through the shared ref
        for every request, so the factory does not depend on the snapshot being built."""
        if self._app_override is not None:
            return self._app_override
        ref, metrics = self._table_ref, self.metrics
        alog = self.access_log if self.access_log.enabled else None
        h2 = self._h2
        if h2 is None:
            return lambda info: HTTPProtocol(ref, info, metrics, alog)

        def app(info: ConnectionInfo) -> asyncio.Protocol:
            if info.protocol == "h2":  # the TLS handshake selected h2 (edge.py)
                return h2(ref, info, metrics, alog)
            return HTTPProtocol(ref, info, metrics, alog)
        return app

    def _close_changed_idle(self) -> None:
        """Idle keep-alive connections whose SNI row changed close now rather than at their next request."""
        for transport in list(self.tracker.transports):
            get_protocol = getattr(transport, "get_protocol", None)
            proto = get_protocol() if callable(get_protocol) and not transport.is_closing() else None
            swapped = getattr(proto, "table_swapped", None)  # HTTPProtocol and H2ServerProtocol
            if callable(swapped):
                swapped()

    def _report_certificates(self, snapshot: Snapshot) -> None:
        self.metrics.report_certificates(snapshot, self.fallback)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the HTTPS, HTTP and admin listeners (port 0: the kernel picks; read the properties)."""
        cfg = self.config
        if cfg.admin_enabled:
            self._admin = AdminServer(self, cfg)
            self._admin.check_config()
        try:
            await self._https.start(cfg.bind, cfg.https_port, cfg.reuse_port)
            await self._http.start(cfg.bind, cfg.http_port, cfg.reuse_port)
            if self._admin is not None:
                await self._admin.start()
        except BaseException:
            await self.stop(drain_timeout=0)
            raise
        self._started = True
        log.info("data plane listening", extra={"bind": cfg.bind, "https_port": self.https_port,
                                                "http_port": self.http_port, "admin_port": self.admin_port})

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let live connections finish for up to ``drain_timeout``, then close the rest."""
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        self._https.stop_accepting()
        self._http.stop_accepting()
        self.tracker.close_pending()
        for transport in list(self.tracker.transports):  # HTTP/2: GOAWAY, open streams finish (server.py)
            get_protocol = getattr(transport, "get_protocol", None)
            drain = getattr(get_protocol(), "drain", None) if callable(get_protocol) else None
            if callable(drain) and not transport.is_closing():
                drain()
        deadline = time.monotonic() + timeout
        while self.tracker.live and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.tracker.abort_all()
        await self._https.wait_tasks()
        self.access_log.close()
        if self._admin is not None:
            await self._admin.stop()
            self._admin = None
        self._started = False

    @property
    def tls_table(self) -> TLSTable:
        """The SNI table now serving. Only tests read it, for a reason: they assert that an unchanged certificate
        keeps its ``SSLContext`` across applies and a rotated one gets a new one, which no client can observe."""
        return self._applied.edge.tls


H2Factory = Callable[[TableRef, ConnectionInfo, Metrics, AccessLog | None], asyncio.Protocol]


def _h2_server() -> H2Factory | None:
    """``dataplane.http2.server.H2ServerProtocol``, imported when a data plane is built (it pulls in h2).

    None when it does not load: ALPN then offers HTTP/1.1 only, loudly, rather than promising h2 to clients
    and failing every connection that takes it."""
    try:
        module = importlib.import_module("dataplane.http2.server")
        factory: H2Factory = module.H2ServerProtocol
    except Exception:
        log.exception("HTTP/2 server does not load: offering HTTP/1.1 only")
        return None
    return factory
