"""The routing table of one snapshot: virtual hosts, routes, upstream pools (built once, then read-only).

Routing is a pure function of (table, request head, connection facts) so it can be tested without
sockets. The pools are the only state: balancer health, least-conn counters and idle upstream
connections carry over into the next table when a pool is unchanged, so a snapshot push neither
forgets a dead endpoint nor throws away warm (TLS) connections.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dataplane.access_log import ingress_of
from dataplane.balancer import UpstreamPool
from dataplane.hosts import HostTable
from dataplane.http.parser import RequestHead
from dataplane.http.path import route_path as canonical_route_path
from dataplane.http.settings import HTTPSettings
from dataplane.http.upstream import TLSContextCache, Upstream
from dataplane.http2.upstream import H2Upstream
from dataplane.limits import LimitRegistry, RateLimit, Whitelist, limit_key, parse_whitelist
from dataplane.metrics import Metrics
from dataplane.snapshot import ClientAuth, Route, Snapshot, TLSHost, VirtualHost, route_order

log = logging.getLogger(__name__)

ACME_PREFIX = "/.well-known/acme-challenge/"
NO_HOST_LABEL = "(none)"
DEFAULT_HOST_LABEL = "(default)"


@dataclass(frozen=True, slots=True)
class Forward:
    vhost: VHostEntry  # the route's virtual host without its routes (no reference cycle: see _vhost_entry)
    pool_id: str
    max_body: int = 0  # request body bytes allowed (0: no limit); the route's value, default resolved
    rate: RateLimit | None = None  # limit-rps per client IP (shared by the routes of one Ingress); None: none
    log: tuple[str, str] | None = ("", "")  # access log: the route's Ingress (namespace, name); None: not logged


@dataclass(frozen=True, slots=True)
class Local:
    status: int
    message: str
    location: bytes | None = None
    label: str = NO_HOST_LABEL


@dataclass(frozen=True)
class VHostEntry:
    host: str
    tls: bool
    insecure_policy: str
    hsts: bytes | None
    label: str  # metrics label: the configured host (bounded cardinality), never the raw Host header
    routes: tuple[tuple[str, bool, str, Forward], ...] = field(default=(), compare=False)
    no_route: Local = field(default=Local(404, "no route for this path"), compare=False)
    allow_underscore_headers: bool = False  # else client header names with "_" are dropped (headers.py)

    def match(self, path: str) -> Forward | None:
        """Exact routes, then prefixes by length (snapshot order); prefixes match whole path segments."""
        for route_path, exact, segment_prefix, forward in self.routes:
            if exact:
                if path == route_path:
                    return forward
            elif not segment_prefix or path == route_path or path.startswith(segment_prefix):
                return forward
        return None


def _body_limit(route_limit: int, settings: HTTPSettings) -> int:
    """-1 -> the data plane's default; 0 -> no limit."""
    return settings.max_body_size if route_limit < 0 else route_limit


def _rate_limit(route: Route, vhost: VirtualHost, limits: LimitRegistry | None) -> RateLimit | None:
    """The route's request-rate limit, keyed by its Ingress so the client buckets survive snapshot applies."""
    if not route.limit_rps or limits is None:
        return None
    networks, _ = parse_whitelist(route.limit_whitelist)  # validate() refused bad entries
    return limits.rate_limit(limit_key(route.source, vhost.host), route.limit_rps, Whitelist(networks))


def _vhost_entry(vhost: VirtualHost, settings: HTTPSettings, limits: LimitRegistry | None = None) -> VHostEntry:
    """The table's entry for ``vhost``. Its forwards point at a route-less copy of it, so the entry and its routes
    form no reference cycle: the data plane freezes the cyclic GC's view at every apply (``gc_pause.py``), and a
    frozen cycle is never collected, so a cycle here would keep every replaced table's routes forever."""
    label = vhost.host or DEFAULT_HOST_LABEL
    head = VHostEntry(
        vhost.host, vhost.tls, vhost.insecure_policy, vhost.hsts.encode() if vhost.hsts else None, label,
        no_route=Local(404, "no route for this path", label=label),
        allow_underscore_headers=vhost.allow_underscore_headers,
    )
    routes: list[tuple[str, bool, str, Forward]] = []
    for route in sorted(vhost.routes, key=route_order):
        path = canonical_route_path(route.path)  # the form requests are normalised to (http/path.py)
        trimmed = path.rstrip("/")
        forward = Forward(head, route.pool_id, _body_limit(route.max_body_size, settings),
                          _rate_limit(route, vhost, limits), log=log_source(route.source, route.access_log))
        if route.path_type == "Exact":
            routes.append((path, True, "", forward))
        else:  # "/" -> matches all; "/foo" and "/foo/" -> "/foo", "/foo/..."
            routes.append((trimmed, False, trimmed + "/" if trimmed else "", forward))
    return replace(head, routes=tuple(routes))


def host_labels(snapshot: Snapshot) -> frozenset[str]:
    """Every ``host`` metric label a table built from ``snapshot`` can count under (what series to keep)."""
    return frozenset({NO_HOST_LABEL, *(v.host or DEFAULT_HOST_LABEL for v in snapshot.virtual_hosts)})


def log_source(source: str, enabled: bool = True) -> tuple[str, str] | None:
    """A snapshot ``source`` ("Ingress ns/name") as the access log's (namespace, name); None: not logged."""
    return ingress_of(source) if enabled else None


def match_cn_patterns(tls_hosts: Mapping[str, TLSHost]) -> dict[str, re.Pattern[str] | None]:
    """Every ``ClientAuth.match_cn`` compiled once per snapshot (None: does not compile -> matches nothing)."""
    patterns: dict[str, re.Pattern[str] | None] = {}
    for row in tls_hosts.values():
        regex = row.client_auth.match_cn if row.client_auth is not None else ""
        if regex and regex not in patterns:
            try:
                patterns[regex] = re.compile(regex)
            except re.error as exc:  # validate() refuses these; fail closed if one slips through
                log.warning("TLS host %s: match_cn does not compile: %s", row.host, exc)
                patterns[regex] = None
    return patterns


def host_name(host: bytes) -> str:
    """Host header -> routing key: port stripped, lower-case, no trailing dot (IPv6 keeps brackets)."""
    name = host[: host.find(b"]") + 1] if host[:1] == b"[" else host.partition(b":")[0]
    return name.decode("latin-1").lower().rstrip(".")


class HTTPTable:
    def __init__(
        self,
        settings: HTTPSettings,
        metrics: Metrics,
        vhosts: Mapping[str, VHostEntry],
        tls_hosts: Mapping[str, TLSHost],
        pools: Mapping[str, UpstreamPool],
        upstreams: Mapping[str, Upstream | H2Upstream],
        tls_contexts: TLSContextCache,
        generation: int = 0,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.pools = pools
        self.upstreams = upstreams
        self.tls_contexts = tls_contexts
        self.generation = generation
        self._vhosts = HostTable(vhosts.items(), allow_default=True)
        self._tls_hosts = HostTable(tls_hosts.items())  # matched as the edge's SNI table (tls.TLSTable)
        self.match_cn = match_cn_patterns(tls_hosts)
        self._counters: dict[tuple[str, int, str], Any] = {}
        self._histograms: dict[str, Any] = {}
        self._port_suffix = b"" if settings.https_redirect_port == 443 else b":%d" % settings.https_redirect_port

    # --- lookups ---------------------------------------------------------------------------

    def vhost(self, host: str) -> VHostEntry | None:
        """Exact host, then a single-label wildcard, then the default ("") virtual host."""
        return self._vhosts.lookup(host)

    def tls_row(self, host: str) -> TLSHost | None:
        """The SNI-table row this name selects: the edge's rule, by the same ``HostTable`` code."""
        return self._tls_hosts.lookup(host)

    def route(self, req: RequestHead, https: bool, tls_row_host: str | None) -> Forward | Local:
        """Where one request goes, or the response the proxy gives itself."""
        host = host_name(req.host)
        if https:
            row = self.tls_row(host)
            if (row.host if row is not None else None) != tls_row_host:
                return _MISDIRECTED
        vh = self.vhost(host)
        if vh is None:
            return _NO_VHOST
        if not https and vh.tls and vh.insecure_policy != "allow" and not req.path.startswith(ACME_PREFIX):
            if vh.insecure_policy == "deny":
                return Local(403, "this host is served over HTTPS only", label=vh.label)
            location = b"https://" + host.encode("latin-1") + self._port_suffix + req.target
            return Local(308, "redirecting to HTTPS", location, vh.label)
        forward = vh.match(req.path)
        return forward if forward is not None else vh.no_route

    # --- metrics (children cached: label lookups take a lock and a dict walk) ---------------

    def count(self, label: str, status: int, protocol: str = "http/1.1") -> None:
        key = (label, status // 100, protocol)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.metrics.requests.labels(label, f"{key[1]}xx", protocol)
        child.inc()

    def observe(self, label: str, seconds: float) -> None:
        child = self._histograms.get(label)
        if child is None:
            child = self._histograms[label] = self.metrics.request_duration.labels(label)
        child.observe(seconds)


_MISDIRECTED = Local(421, "this host is not served on this TLS connection")
_NO_VHOST = Local(404, "no virtual host for this Host")


def build_http_table(
    snapshot: Snapshot, previous: HTTPTable | None, metrics: Metrics, settings: HTTPSettings,
    limits: LimitRegistry | None = None,
) -> HTTPTable:
    """Compile a (validated) snapshot. A pool whose spec is unchanged keeps its balancer and idle
    connections; a changed pool keeps the health of endpoints that remain and, when its TLS settings
    are the same, their idle connections."""
    contexts = TLSContextCache(previous.tls_contexts if previous is not None else None)
    cas = {c.id: c for c in snapshot.ca_bundles}
    certs = {c.id: c for c in snapshot.certificates}
    pools: dict[str, UpstreamPool] = {}
    upstreams: dict[str, Upstream | H2Upstream] = {}
    insecure = 0
    for spec in snapshot.pools:
        old = previous.upstreams.get(spec.id) if previous is not None else None
        if spec.tls is not None and not spec.tls.verify:
            insecure += 1
        if old is not None and old.spec == spec:
            upstreams[spec.id] = old
            pools[spec.id] = old.balancer
            continue
        balancer = UpstreamPool(spec, previous=old.balancer if old is not None else None)
        ctx: ssl.SSLContext | None = None
        error = ""
        if spec.tls is not None:
            try:
                ctx = contexts.get(spec.tls, cas, certs, spec.protocol)
            except (ssl.SSLError, ValueError, OSError) as exc:
                error = f"upstream TLS settings do not load: {exc}"
                log.warning("pool %s: %s", spec.id, error)
        same = old is not None and old.spec.tls == spec.tls and old.spec.protocol == spec.protocol
        if spec.protocol == "h2":
            h2_carry = old if same and isinstance(old, H2Upstream) else None
            upstreams[spec.id] = H2Upstream(spec, balancer, ctx, error, settings, metrics, h2_carry)
        else:
            carry = old if same and isinstance(old, Upstream) else None
            upstreams[spec.id] = Upstream(spec, balancer, ctx, error, settings, metrics, carry)
        pools[spec.id] = balancer
    metrics.insecure_upstreams.set(insecure)
    vhosts = {v.host: _vhost_entry(v, settings, limits) for v in snapshot.virtual_hosts}
    tls_hosts = {h.host: h for h in snapshot.tls_hosts}
    return HTTPTable(settings, metrics, vhosts, tls_hosts, pools, upstreams, contexts, snapshot.generation)


class TableRef:
    """The current ``HTTPTable``, shared by every live connection and swapped by the runtime at apply.

    Connections read ``ref.table`` once per request (an attribute read), so the next request on
    any open connection routes with the newest snapshot.
    """

    __slots__ = ("table",)

    def __init__(self, table: HTTPTable) -> None:
        self.table = table


# What a request on a TLS connection may do when the SNI row it shook hands with changed since.
TLS_SAME, TLS_CLOSE_AFTER, TLS_REFUSE = range(3)


def tls_change(handshake_row: TLSHost | None, current_row: TLSHost | None) -> int:
    """Compare the SNI row a connection's handshake used with the row a new connection would get now.

    Client authentication, the mode or the row's existence changed: the session's guarantees no
    longer hold (refuse). Only certificate, protocol versions or ciphers changed: the session is
    still what the client authenticated, so the request is served and the connection closed after.
    """
    if handshake_row is current_row:
        return TLS_SAME
    if handshake_row is None or current_row is None or current_row.mode != handshake_row.mode:
        return TLS_REFUSE
    if current_row.client_auth != handshake_row.client_auth:
        return TLS_REFUSE
    if (current_row.host, current_row.certificate_id, current_row.min_version, current_row.ciphers,
            current_row.prefer_server_ciphers) != (handshake_row.host, handshake_row.certificate_id,
                                                   handshake_row.min_version, handshake_row.ciphers,
                                                   handshake_row.prefer_server_ciphers):
        return TLS_CLOSE_AFTER
    return TLS_SAME


def client_auth_gate(auth: ClientAuth | None, verified: bool | None, subject_dn: str,
                     patterns: Mapping[str, re.Pattern[str] | None]) -> Local | None:
    """The answer a request gets instead of being forwarded because of its client certificate, if any.

    ``verified``: None when no certificate was sent. Mirrors ingress-nginx: a required certificate
    that is missing (496) or a certificate that failed verification (495) goes to ``error_page``
    when one is set; ``match_cn`` is searched in the verified subject DN, no match -> 403 (or the
    error page). ``optional_no_ca`` never verifies against the CA, so only ``match_cn`` applies.
    """
    if auth is None:
        return None
    error_page = auth.error_page.encode("latin-1", "replace") if auth.error_page else None
    if auth.mode != "optional_no_ca":
        missing = verified is None and auth.mode == "required"
        if missing or verified is False:
            if error_page is not None:
                return Local(302, "client certificate required", error_page)
            return Local(403 if verified is False else 400,
                         "client certificate did not verify" if verified is False
                         else "no required client certificate was sent")
    if auth.match_cn:
        pattern = patterns.get(auth.match_cn)
        if not verified or pattern is None or pattern.search(subject_dn) is None:
            if error_page is not None:
                return Local(302, "client certificate not authorized", error_page)
            return Local(403, "client certificate not authorized")
    return None

