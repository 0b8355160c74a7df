"""Prometheus metrics of one data plane, on a registry of its own (no global state).

One object holds every series so each part of the data plane gets it passed in, and tests can
run several data planes in one process without their counters mixing.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from dataplane.snapshot import Certificate, Snapshot

_M = TypeVar("_M", bound=MetricWrapperBase)


class Metrics:
    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        r = self.registry = CollectorRegistry()
        p = "portcullis_"
        self.connections = Counter(
            p + "connections", "Accepted connections by listener and TLS mode", ["listener", "mode"], registry=r
        )
        self.active_connections = Gauge(
            p + "active_connections", "Open client connections", ["listener", "mode"], registry=r,
            multiprocess_mode="livesum",  # --workers N: the open connections of the pod, live workers only
        )
        self.handshakes = Counter(
            p + "tls_handshakes", "TLS handshakes at the edge by result and failure reason", ["result", "reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            p + "connections_refused", "New connections closed by a limit before any TLS work (max_connections, "
            "per_ip, ingress_connections, handshake_rate)", ["reason"], registry=r,
        )
        self.requests_limited = Counter(
            p + "http_requests_limited", "Requests answered 429 by an Ingress's limit-rps, by host", ["host"],
            registry=r,
        )
        self.client_hello = Counter(
            p + "client_hello", "ClientHello collection outcome (ok, too_large, timeout, malformed, not_tls)",
            ["result"], registry=r,
        )
        self.passthrough = Counter(
            p + "passthrough_connections", "Passthrough routing outcome (routed, unknown_sni, no_endpoint, "
            "connect_failed)", ["result"], registry=r,
        )
        self.requests = Counter(
            p + "http_requests", "Proxied HTTP requests by host, status class and client protocol (http/1.1, h2, "
            "grpc)", ["host", "code_class", "protocol"], registry=r
        )
        self.request_duration = Histogram(
            p + "http_request_duration_seconds", "Time to the response head from the backend", ["host"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.http_timeouts = Counter(
            p + "http_timeouts", "HTTP connections closed (or answered 408/504) by a timeout, by reason: "
            "client_header, client_body, client_send, upgrade_idle, upstream_read, upstream_send", ["reason"],
            registry=r,
        )
        self.upstream_failures = Counter(
            p + "upstream_failures", "Upstream connect and TLS verification failures by pool",
            ["pool", "reason"], registry=r,
        )
        self.dropped_request_headers = Counter(
            p + "http_dropped_request_headers", "Client request headers dropped at the edge: trusted (a name only "
            "the edge sets, in any spelling) or underscore (a name with '_' on a host that does not allow them)",
            ["reason"], registry=r,
        )
        self._dropped_trusted = self.dropped_request_headers.labels("trusted")
        self._dropped_underscore = self.dropped_request_headers.labels("underscore")
        self.insecure_upstreams = Gauge(
            p + "insecure_upstream_pools", "Pools with backend certificate verification turned off", registry=r,
            multiprocess_mode="livemax",  # every worker serves the same snapshot
        )
        self.bytes = Counter(
            p + "bytes", "Bytes relayed by direction (in: from clients, out: to clients) and mode",
            ["direction", "mode"], registry=r,
        )
        # The snapshot_* and certificate series are reported by the supervisor under --workers N
        # (dataplane/workers.py): one push is one apply, whatever the number of workers.
        self.snapshot_generation = Gauge(p + "snapshot_generation", "Generation of the applied snapshot", registry=r,
                                         multiprocess_mode="livemin")
        self.snapshot_applies = Counter(
            p + "snapshot_applies", "Snapshot apply attempts by result", ["result"], registry=r
        )
        self.snapshot_apply_seconds = Histogram(
            p + "snapshot_apply_seconds", "Time to validate and apply a snapshot", registry=r
        )
        self.certificate_not_after = Gauge(
            p + "certificate_not_after_seconds", "Expiry (unix time) of each served certificate",
            ["certificate", "names"], registry=r, multiprocess_mode="livemax",
        )
        self.worker_connections = Counter(
            p + "worker_connections", "Connections handed to the HTTP engine or a tunnel, by worker process "
            "(--workers N: how the kernel spreads new connections across them)", ["worker"], registry=r,
        )
        self.access_log_lines = Counter(
            p + "access_log_lines", "Access-log lines written to stdout", registry=r,
        )
        self.h2_connections_total = Counter(
            p + "h2_connections", "Client connections that negotiated HTTP/2 (ALPN h2)", registry=r,
        )
        self.h2_streams_open = Gauge(
            p + "h2_streams_open", "HTTP/2 client streams open now", registry=r, multiprocess_mode="livesum",
        )
        self.h2_violations = Counter(
            p + "h2_violations", "HTTP/2 client connections closed with GOAWAY ENHANCE_YOUR_CALM, by flood: "
            "rapid_reset, continuation, settings_flood, ping_flood, empty_frames, window_update_flood, priority_flood",
            ["reason"], registry=r,
        )
        self.access_log_dropped_lines = Counter(
            p + "access_log_dropped_lines", "Access-log lines dropped because stdout did not keep up (or is gone)",
            registry=r,
        )


    def child(self, metric: _M, *labels: str) -> _M:
        """``metric.labels(*labels)``, looked up once per process: prometheus-client's ``labels`` takes a
        lock and builds its key on every call, which per connection or request adds up."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]  # the child of a metric has the metric's type

    def retain_series(self, hosts: Collection[str], pools: Collection[str]) -> int:
        """Remove the series of hosts and pools that are not in ``hosts``/``pools`` (those of the applied snapshot),
        so ``/metrics`` does not grow with every name ever served. Returns how many series went.

        Under ``--workers N`` (prometheus-client's multiprocess mode) this only forgets the process's child objects:
        the values stay in the worker's file (the library cannot delete an entry; it warns, silenced here), where a
        host that comes back finds its counters again; the supervisor leaves removed labels out when it sums the
        files (``dataplane/workers.py``)."""
        removed = 0
        for metric, label, keep in ((self.requests, "host", hosts), (self.request_duration, "host", hosts),
                                    (self.requests_limited, "host", hosts), (self.upstream_failures, "pool", pools)):
            index = metric._labelnames.index(label)
            # prometheus-client lists a metric's children only by collecting samples: read its own table instead.
            stale = [values for values in list(metric._metrics) if values[index] not in keep]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # multiprocess mode: see the docstring
                for values in stale:
                    metric.remove(*values)
            removed += len(stale)
        return removed

    def report_certificates(self, snapshot: Snapshot, fallback: Certificate | None = None) -> None:
        """Expiry of every certificate the snapshot serves, and of ``fallback`` while it names no default."""
        gauge = self.certificate_not_after
        gauge.clear()
        for cert in snapshot.certificates:
            if cert.not_after:
                gauge.labels(cert.id, ",".join(cert.names)[:200]).set(cert.not_after)
        if fallback is not None and snapshot.default_certificate_id is None:
            gauge.labels(fallback.id, "fallback").set(fallback.not_after)

    def count_dropped_headers(self, trusted: int, underscore: int) -> None:
        """One request's dropped client headers (children made once: ``labels`` takes a lock)."""
        if trusted:
            self._dropped_trusted.inc(trusted)
        if underscore:
            self._dropped_underscore.inc(underscore)

    def render(self) -> bytes:
        return generate_latest(self.registry)
