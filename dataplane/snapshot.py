"""The routing snapshot: the one contract between the controller and the data plane.

The data plane owns this module (standard library only) and the controller imports it, so the
schema cannot drift between the halves. A snapshot is immutable; the data plane swaps whole
snapshots, never edits one.

Canonical JSON (sorted keys, compact separators, lists in the order ``canonical()`` gives them)
makes the checksum a content address: the same routing state renders to the same bytes, whatever
order the Kubernetes objects arrived in, and whatever ``generation`` it carries. The controller
compares checksums to decide whether a data plane is up to date.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from dataplane import pem
from dataplane.limits import parse_whitelist

SCHEMA_VERSION = 1

TLSMode = Literal["passthrough", "terminate"]
PathType = Literal["Exact", "Prefix"]
InsecurePolicy = Literal["redirect", "allow", "deny"]
ProxyProtocol = Literal["off", "v1", "v2"]
TLSVersion = Literal["1.2", "1.3"]
LoadBalance = Literal["round-robin", "least-conn", "client-ip-hash"]
ClientAuthMode = Literal["required", "optional", "optional_no_ca"]
BackendProtocol = Literal["http1", "h2"]  # h2 over TCP is h2c; with ``Pool.tls`` it is h2 over TLS (ALPN h2)

TLS_MODES = ("passthrough", "terminate")
PATH_TYPES = ("Exact", "Prefix")
INSECURE_POLICIES = ("redirect", "allow", "deny")
PROXY_PROTOCOLS = ("off", "v1", "v2")
TLS_VERSIONS = ("1.2", "1.3")
LOAD_BALANCERS = ("round-robin", "least-conn", "client-ip-hash")
CLIENT_AUTH_MODES = ("required", "optional", "optional_no_ca")
BACKEND_PROTOCOLS = ("http1", "h2")
MAX_GENERATION = 2**53  # JSON numbers stay exact in every client below this
MAX_UNAVAILABLE = 200  # Pool.unavailable: one short line of a 503 body


def content_id(*parts: str) -> str:
    """Content address of PEM material: equal bytes share one entry (and one SSLContext)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()[:32]


@dataclass(frozen=True)
class Certificate:
    """A serving or client certificate chain with its private key.

    ``names`` and ``not_after`` (unix seconds) are metadata computed by the controller, which has
    ``cryptography``; the data plane only reports them (metrics) and never trusts them for routing.
    """

    id: str
    cert_pem: str
    key_pem: str
    names: tuple[str, ...] = ()
    not_after: int = 0


@dataclass(frozen=True)
class CABundle:
    """Trust anchors (PEM, one or more certificates), optionally with a CRL (PEM)."""

    id: str
    pem: str
    crl_pem: str = ""


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int


@dataclass(frozen=True)
class UpstreamTLS:
    """Set on a pool means reencrypt: TLS to the backend, verified unless ``verify`` is False."""

    server_name: str
    ca_id: str | None = None  # None with verify=True: the system trust store
    verify: bool = True
    client_cert_id: str | None = None
    min_version: TLSVersion = "1.2"
    max_version: TLSVersion = "1.3"
    ciphers: str = ""  # OpenSSL cipher list for TLS 1.2 ("": the data plane's own list)
    verify_depth: int = 0  # longest backend chain accepted (0: OpenSSL's default)


@dataclass(frozen=True)
class Pool:
    """Where traffic goes: the ready endpoints of one Service port, and how to reach them.

    ``id`` is ``namespace/service:port`` plus a suffix when TLS settings differ, so two Ingresses
    that reach the same port with different upstream TLS get distinct pools.
    """

    id: str
    endpoints: tuple[Endpoint, ...] = ()
    tls: UpstreamTLS | None = None
    load_balance: LoadBalance = "round-robin"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    send_timeout: float = 60.0  # the backend must accept written request bytes within this
    proxy_protocol: ProxyProtocol = "off"  # passthrough pools only
    unavailable: str = ""  # why there is no endpoint (missing Service, none ready): the 503 says it
    protocol: BackendProtocol = "http1"  # what HTTP requests are forwarded as (h2: also gRPC, trailers kept)
    # An upgraded (WebSocket) connection silent both ways this long is closed; None: the data plane's
    # --upgrade-idle-timeout. The renderer sets the Ingress's read timeout here when it sets one, as ingress-nginx's
    # proxy-read-timeout bounds a WebSocket's silence.
    upgrade_idle_timeout: float | None = None


# Pool fields a data plane of the previous release does not know: omitted from the JSON while None (see to_dict).
ADDED_POOL_FIELDS = ("upgrade_idle_timeout",)


@dataclass(frozen=True)
class ClientAuth:
    ca_id: str
    mode: ClientAuthMode = "required"
    verify_depth: int = 1
    forward_headers: bool = False
    match_cn: str = ""  # regular expression searched in the verified subject DN; no match -> 403
    error_page: str = ""  # absolute http(s) URL: a missing, failed or unmatched certificate -> 302 there


@dataclass(frozen=True)
class TLSHost:
    """One row of the SNI table.

    ``host`` is an exact DNS name or a single-label wildcard (``*.example.com``). For
    ``passthrough`` the bytes go to ``pool_id`` untouched; for ``terminate`` the data plane
    handshakes with ``certificate_id`` (None: the snapshot's default certificate, and without one
    the self-signed fallback each data plane makes at start, as ingress-nginx does) and routes HTTP.
    """

    host: str
    mode: TLSMode
    certificate_id: str | None = None
    pool_id: str | None = None
    min_version: TLSVersion = "1.2"
    client_auth: ClientAuth | None = None
    ciphers: str = ""  # OpenSSL cipher list for TLS 1.2 ("": the data plane's own list)
    prefer_server_ciphers: bool = True
    source: str = ""
    access_log: bool = True  # passthrough: one access-log line per connection (portcullis.io/access-log)
    limit_connections: int = 0  # concurrent connections per client IP to this host, checked after SNI (0: none)
    limit_whitelist: tuple[str, ...] = ()  # client CIDRs exempt from limit_connections
    http2: bool = True  # terminate: ALPN offers h2 before http/1.1 (portcullis.io/http2: "false" turns it off)


@dataclass(frozen=True)
class Route:
    path: str
    path_type: PathType
    pool_id: str
    max_body_size: int = -1  # request body bytes (-1: the data plane's --max-body-size; 0: no limit)
    source: str = ""
    access_log: bool = True  # one access-log line per request (portcullis.io/access-log of its Ingress)
    limit_rps: int = 0  # requests a second per client IP, shared by the routes of one source (0: none); 429 beyond
    limit_whitelist: tuple[str, ...] = ()  # client CIDRs exempt from limit_rps


@dataclass(frozen=True)
class VirtualHost:
    """HTTP routing for one Host header value (``""`` matches any host: default backend).

    ``tls`` says the host is served over HTTPS; then ``insecure_policy`` decides what plain HTTP
    gets, and ``hsts`` (a header value, None for off) is added to HTTPS responses.
    """

    host: str
    routes: tuple[Route, ...] = ()
    tls: bool = False
    insecure_policy: InsecurePolicy = "allow"
    hsts: str | None = None
    allow_underscore_headers: bool = False  # else client header names with "_" are dropped (as nginx)


@dataclass(frozen=True)
class Snapshot:
    schema: int = SCHEMA_VERSION
    generation: int = 0
    default_certificate_id: str | None = None
    certificates: tuple[Certificate, ...] = ()
    ca_bundles: tuple[CABundle, ...] = ()
    pools: tuple[Pool, ...] = ()
    tls_hosts: tuple[TLSHost, ...] = ()
    virtual_hosts: tuple[VirtualHost, ...] = ()
    checksum: str = field(default="", compare=False)

    # --- canonical form -------------------------------------------------------------------

    def canonical(self) -> Snapshot:
        """Sort every list so equal routing state has one representation, and fill the checksum."""
        body = replace(
            self,
            certificates=tuple(sorted(self.certificates, key=lambda c: c.id)),
            ca_bundles=tuple(sorted(self.ca_bundles, key=lambda c: c.id)),
            pools=tuple(
                sorted(
                    (replace(p, endpoints=tuple(sorted(set(p.endpoints), key=_endpoint_key)))
                     for p in self.pools),
                    key=lambda p: p.id,
                )
            ),
            tls_hosts=tuple(sorted(self.tls_hosts, key=lambda h: h.host)),
            virtual_hosts=tuple(
                sorted(
                    (replace(v, routes=tuple(sorted(v.routes, key=route_order))) for v in self.virtual_hosts),
                    key=lambda v: v.host,
                )
            ),
            checksum="",
        )
        return replace(body, checksum=_checksum(body))

    def to_dict(self, redact_keys: bool = False) -> dict[str, Any]:
        data = asdict(self)
        for pool in data["pools"]:  # fields added after schema 1: left out at their default (docs/contracts.md 3)
            for name in ADDED_POOL_FIELDS:
                if pool[name] is None:
                    del pool[name]
        if redact_keys:
            for cert in data["certificates"]:
                cert["key_pem"] = "<redacted " + content_id(cert["key_pem"]) + ">"
        return data

    def to_json(self, redact_keys: bool = False, indent: int | None = None) -> str:
        separators = (",", ":") if indent is None else (",", ": ")
        return json.dumps(self.to_dict(redact_keys), sort_keys=True, separators=separators, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> Snapshot:
        """Parse (strictly: unknown or missing fields raise ``SnapshotFormatError``)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SnapshotFormatError(f"not JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        if not isinstance(data, Mapping):
            raise SnapshotFormatError("snapshot must be a JSON object")
        try:
            return Snapshot(
                schema=_int(data, "schema"),
                generation=_int(data, "generation"),
                default_certificate_id=data.get("default_certificate_id"),
                certificates=tuple(_build(Certificate, c, tuples=("names",)) for c in data.get("certificates", ())),
                ca_bundles=tuple(_build(CABundle, c) for c in data.get("ca_bundles", ())),
                pools=tuple(_pool(p) for p in data.get("pools", ())),
                tls_hosts=tuple(_tls_host(h) for h in data.get("tls_hosts", ())),
                virtual_hosts=tuple(_virtual_host(v) for v in data.get("virtual_hosts", ())),
                checksum=str(data.get("checksum", "")),
            )
        except (TypeError, KeyError, AttributeError) as exc:
            raise SnapshotFormatError(f"malformed snapshot: {exc}") from exc

    def with_generation(self, generation: int) -> Snapshot:
        """Generation is not part of the checksum: re-rendering the same state is not a change."""
        return replace(self, generation=generation)

    # --- lookups used by both halves -------------------------------------------------------

    def certificate(self, cert_id: str | None) -> Certificate | None:
        return next((c for c in self.certificates if c.id == cert_id), None) if cert_id else None

    def pool(self, pool_id: str | None) -> Pool | None:
        return next((p for p in self.pools if p.id == pool_id), None) if pool_id else None


class SnapshotFormatError(ValueError):
    """The bytes are not a snapshot at all (as opposed to a snapshot with invalid content)."""


def route_order(route: Route) -> tuple[int, int, str]:
    """Most specific first: Exact before Prefix, then longer paths first, then by text."""
    return (0 if route.path_type == "Exact" else 1, -len(route.path), route.path)


def _endpoint_key(e: Endpoint) -> tuple[str, int]:
    return (e.address, e.port)


def _checksum(body: Snapshot) -> str:
    """sha256 over the canonical JSON, one list entry at a time.

    Entry by entry, each ``json.dumps`` is short: one dump of a 10k-host snapshot held the GIL
    for ~70 ms, stalling the data plane's event loop while it validated a push in a thread.
    """
    data = body.to_dict()
    data.pop("generation")
    data.pop("checksum")
    digest = hashlib.sha256()
    for key in sorted(data):
        digest.update(json.dumps(key).encode() + b":")
        value = data[key]
        items = value if isinstance(value, list) else [value]
        digest.update(b"[" if isinstance(value, list) else b"")
        for item in items:
            digest.update(json.dumps(item, sort_keys=True, separators=(",", ":")).encode() + b",")
        digest.update(b"]" if isinstance(value, list) else b"")
    return "sha256:" + digest.hexdigest()


# --- strict parsing helpers ---------------------------------------------------------------


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise SnapshotFormatError(f"{key} must be an integer")
    return value


def _build(kind: type[Any], data: Mapping[str, Any], tuples: Iterable[str] = ()) -> Any:
    if not isinstance(data, Mapping):
        raise SnapshotFormatError(f"{kind.__name__} must be an object")
    known = set(kind.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise SnapshotFormatError(f"{kind.__name__}: unknown fields {sorted(unknown)}")
    values = dict(data)
    for name in tuples:
        if name in values:
            values[name] = tuple(values[name])
    return kind(**values)


def _pool(data: Mapping[str, Any]) -> Pool:
    values = dict(data)
    values["endpoints"] = tuple(_build(Endpoint, e) for e in values.get("endpoints", ()))
    if values.get("tls") is not None:
        values["tls"] = _build(UpstreamTLS, values["tls"])
    return _build(Pool, values)  # type: ignore[no-any-return]


def _tls_host(data: Mapping[str, Any]) -> TLSHost:
    values = dict(data)
    if values.get("client_auth") is not None:
        values["client_auth"] = _build(ClientAuth, values["client_auth"])
    return _build(TLSHost, values, tuples=("limit_whitelist",))  # type: ignore[no-any-return]


def _virtual_host(data: Mapping[str, Any]) -> VirtualHost:
    values = dict(data)
    values["routes"] = tuple(_build(Route, r, tuples=("limit_whitelist",)) for r in values.get("routes", ()))
    return _build(VirtualHost, values)  # type: ignore[no-any-return]


# --- validation ---------------------------------------------------------------------------


def validate(snapshot: Snapshot, check_pem: bool = True) -> list[str]:
    """Every reason this snapshot must not be applied (empty list: apply it).

    The data plane runs this before it swaps, so a bad push is refused with all its reasons at
    once and the running snapshot keeps serving. ``check_pem`` loads each key pair into OpenSSL,
    which is what catches a key that does not match its certificate.
    """
    problems: list[str] = []
    if snapshot.schema != SCHEMA_VERSION:
        problems.append(f"unknown schema version {snapshot.schema} (this data plane speaks {SCHEMA_VERSION})")
        return problems
    if not 0 <= snapshot.generation <= MAX_GENERATION:
        problems.append(f"generation must be between 0 and 2^53 (got {snapshot.generation})")
    if snapshot.checksum and snapshot.checksum != snapshot.canonical().checksum:
        problems.append("checksum does not match the snapshot content")

    certs = _unique(snapshot.certificates, "certificate", problems)
    cas = _unique(snapshot.ca_bundles, "CA bundle", problems)
    pools = _unique(snapshot.pools, "pool", problems)

    if snapshot.default_certificate_id is not None and snapshot.default_certificate_id not in certs:
        problems.append(f"default certificate {snapshot.default_certificate_id} is not in the snapshot")
    if check_pem:
        for cert in snapshot.certificates:
            problems.extend(f"certificate {cert.id}: {p}" for p in pem.check_key_pair(cert.cert_pem, cert.key_pem))
        for ca in snapshot.ca_bundles:
            problems.extend(f"CA bundle {ca.id}: {p}" for p in pem.check_ca_bundle(ca.pem, ca.crl_pem))

    for pool in snapshot.pools:
        problems.extend(_pool_problems(pool, certs, cas))

    seen_sni: set[str] = set()
    for host in snapshot.tls_hosts:
        where = f"TLS host {host.host!r}"
        if host.host in seen_sni:
            problems.append(f"{where}: duplicate SNI")
        seen_sni.add(host.host)
        problems.extend(f"{where}: {p}" for p in _host_name_problems(host.host, allow_empty=False))
        if host.mode not in TLS_MODES:
            problems.append(f"{where}: unknown mode {host.mode!r}")
        if host.min_version not in TLS_VERSIONS:
            problems.append(f"{where}: unknown min_version {host.min_version!r}")
        if host.mode == "passthrough":
            if host.pool_id not in pools:
                problems.append(f"{where}: passthrough pool {host.pool_id!r} is not in the snapshot")
            elif pools[host.pool_id].tls is not None:
                problems.append(f"{where}: a passthrough pool cannot have upstream TLS")
        if host.mode == "terminate" and host.certificate_id is not None and host.certificate_id not in certs:
            problems.append(f"{where}: certificate {host.certificate_id} is not in the snapshot")
        if host.client_auth is not None:
            if host.client_auth.ca_id not in cas:
                problems.append(f"{where}: client CA {host.client_auth.ca_id} is not in the snapshot")
            if host.client_auth.mode not in CLIENT_AUTH_MODES:
                problems.append(f"{where}: unknown client auth mode {host.client_auth.mode!r}")
            if host.client_auth.verify_depth < 1:
                problems.append(f"{where}: client auth verify_depth must be >= 1")
            problems.extend(f"{where}: client auth match_cn: {p}" for p in _regex_problems(host.client_auth.match_cn))
            if host.client_auth.error_page and not _is_url(host.client_auth.error_page):
                problems.append(f"{where}: client auth error_page must be an absolute http(s) URL")
        problems.extend(f"{where}: {p}" for p in _cipher_problems(host.ciphers))
        if not isinstance(host.access_log, bool):
            problems.append(f"{where}: access_log must be true or false")
        if not isinstance(host.http2, bool):
            problems.append(f"{where}: http2 must be true or false")
        problems.extend(f"{where}: {p}" for p in _limit_problems(host.limit_connections, host.limit_whitelist,
                                                                  "limit_connections"))

    seen_vhosts: set[str] = set()
    for vhost in snapshot.virtual_hosts:
        where = f"virtual host {vhost.host!r}"
        if vhost.host in seen_vhosts:
            problems.append(f"{where}: duplicate host")
        seen_vhosts.add(vhost.host)
        problems.extend(f"{where}: {p}" for p in _host_name_problems(vhost.host, allow_empty=True))
        if vhost.insecure_policy not in INSECURE_POLICIES:
            problems.append(f"{where}: unknown insecure policy {vhost.insecure_policy!r}")
        seen_paths: set[tuple[str, str]] = set()
        for route in vhost.routes:
            if route.pool_id not in pools:
                problems.append(f"{where}: route {route.path} -> pool {route.pool_id!r} is not in the snapshot")
            if route.path_type not in PATH_TYPES:
                problems.append(f"{where}: route {route.path}: unknown path type {route.path_type!r}")
            if not route.path.startswith("/"):
                problems.append(f"{where}: route path {route.path!r} must start with /")
            if route.max_body_size < -1:
                problems.append(f"{where}: route {route.path}: max_body_size must be >= -1")
            if not isinstance(route.access_log, bool):
                problems.append(f"{where}: route {route.path}: access_log must be true or false")
            problems.extend(f"{where}: route {route.path}: {p}"
                            for p in _limit_problems(route.limit_rps, route.limit_whitelist, "limit_rps"))
            if (route.path, route.path_type) in seen_paths:
                problems.append(f"{where}: duplicate route {route.path_type} {route.path}")
            seen_paths.add((route.path, route.path_type))
    return problems


def _limit_problems(value: int, whitelist: tuple[str, ...], name: str) -> list[str]:
    problems = [] if isinstance(value, int) and 0 <= value <= 1_000_000_000 else [f"{name} must be 0 to 1e9"]
    problems.extend(f"limit_whitelist: {p}" for p in parse_whitelist(whitelist)[1])
    return problems


def _unique(items: Iterable[Any], what: str, problems: list[str]) -> dict[str, Any]:
    by_id: dict[str, Any] = {}
    for item in items:
        if item.id in by_id:
            problems.append(f"duplicate {what} id {item.id}")
        by_id[item.id] = item
    return by_id


def _pool_problems(pool: Pool, certs: Mapping[str, Any], cas: Mapping[str, Any]) -> list[str]:
    where = f"pool {pool.id!r}"
    problems: list[str] = []
    for ep in pool.endpoints:
        if not ep.address:
            problems.append(f"{where}: endpoint without address")
        if isinstance(ep.port, bool) or not isinstance(ep.port, int) or not 0 < ep.port < 65536:
            problems.append(f"{where}: endpoint {ep.address} has no valid port ({ep.port!r})")
    if pool.load_balance not in LOAD_BALANCERS:
        problems.append(f"{where}: unknown load balancer {pool.load_balance!r}")
    if pool.proxy_protocol not in PROXY_PROTOCOLS:
        problems.append(f"{where}: unknown proxy protocol {pool.proxy_protocol!r}")
    if pool.protocol not in BACKEND_PROTOCOLS:
        problems.append(f"{where}: unknown backend protocol {pool.protocol!r}")
    if not pool.connect_timeout > 0 or not pool.read_timeout > 0 or not pool.send_timeout > 0 \
            or (pool.upgrade_idle_timeout is not None and not pool.upgrade_idle_timeout > 0):
        problems.append(f"{where}: timeouts must be positive")
    if not isinstance(pool.unavailable, str) or len(pool.unavailable) > MAX_UNAVAILABLE \
            or not pool.unavailable.isprintable():
        problems.append(f"{where}: unavailable must be one printable line of at most {MAX_UNAVAILABLE} characters")
    if pool.tls is not None:
        if not pool.tls.server_name:
            problems.append(f"{where}: upstream TLS needs a server name")
        if pool.tls.ca_id is not None and pool.tls.ca_id not in cas:
            problems.append(f"{where}: upstream CA {pool.tls.ca_id} is not in the snapshot")
        if pool.tls.client_cert_id is not None and pool.tls.client_cert_id not in certs:
            problems.append(f"{where}: upstream client certificate {pool.tls.client_cert_id} is not in the snapshot")
        if pool.tls.min_version not in TLS_VERSIONS or pool.tls.max_version not in TLS_VERSIONS:
            problems.append(f"{where}: unknown upstream TLS version")
        elif pool.tls.max_version < pool.tls.min_version:
            problems.append(f"{where}: upstream max_version is below min_version")
        if pool.tls.verify_depth < 0:
            problems.append(f"{where}: upstream verify_depth must be >= 0")
        problems.extend(f"{where}: upstream {p}" for p in _cipher_problems(pool.tls.ciphers))
    return problems


def _host_name_problems(host: str, allow_empty: bool) -> list[str]:
    if host == "":
        return [] if allow_empty else ["empty host name"]
    if host != host.lower():
        return ["host names must be lower case"]
    labels = host.split(".")
    if "*" in host and (labels[0] != "*" or "*" in ".".join(labels[1:]) or len(labels) < 3):
        return ["only a single leading wildcard label is allowed (*.example.com)"]
    if any(not label or len(label) > 63 for label in labels) or len(host) > 253:
        return ["not a valid DNS name"]
    return []


def _regex_problems(pattern: str) -> list[str]:
    try:
        re.compile(pattern)
    except re.error as exc:
        return [f"not a regular expression ({exc})"]
    return []


def _is_url(url: str) -> bool:
    scheme, sep, rest = url.partition("://")
    return bool(sep) and scheme in ("http", "https") and bool(rest) and not any(c.isspace() or c in "\"<>" for c in url)


def _cipher_problems(ciphers: str) -> list[str]:
    """A cipher list OpenSSL does not accept would fail every handshake of the host."""
    if not ciphers:
        return []
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        return [f"cipher list {ciphers!r} selects no cipher OpenSSL knows"]
    return []
