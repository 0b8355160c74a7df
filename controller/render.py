"""The pure renderer: Kubernetes objects in, a canonical snapshot and a list of problems out.

Pipeline (each step is a function below, in this order):

1. ``classes.select``        which Ingresses are ours, oldest first (the conflict order)
2. ``annotations``           parse each Ingress's annotations into ``Settings`` (+ problems)
3. ``_decide_mode``          passthrough | offload | reencrypt | http, per Ingress
4. ``_plan_ingress``         the Ingress's TLS rows, routes and pools, resolving Secrets and Services
5. ``_Tables.merge``         fold plans in age order; a younger claim on a taken host/path loses
6. ``_Tables.snapshot``      virtual hosts with their policies, then ``Snapshot.canonical()``

No I/O, no clock (``RenderConfig.now``), no kopf/asyncio: the controller, ``portcullis local``,
``portcullis render`` and the admission webhook all call this one function, so a setting means
the same thing everywhere. Same inputs in any order give a byte-identical snapshot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from controller import annotations as ann
from controller import classes, conformance
from controller.backends import BackendIndex
from controller.certificates import Checked, ParseCache, ca_bundle, covers, serving_certificate
from controller.model import BackendRef, Ingress, Inputs, Secret
from controller.problems import ObjectRef, Problem, Severity
from dataplane.snapshot import (
    CABundle,
    Certificate,
    ClientAuth,
    Pool,
    Route,
    Snapshot,
    TLSHost,
    UpstreamTLS,
    VirtualHost,
)

DEFAULT_HSTS = "max-age=31536000"

# Reasons for problems caused by a referenced object (missing, or unusable), not by the Ingress's
# own content; they clear by themselves when the object appears. An Ingress skipped for an invalid
# TLS mode also carries InvalidAnnotation, which is about its content.
REFERENCE_REASONS = frozenset({
    "ServiceNotFound", "ServicePortNotFound", "SecretNotFound", "InvalidSecret", "BackendTLSUnavailable",
    "IngressSkipped",
})
HTTP_ONLY = "http"


@dataclass(frozen=True)
class RenderConfig:
    ingress_class: str = "portcullis"
    controller_name: str = "portcullis.io/ingress-controller"
    watch_namespaces: tuple[str, ...] = ()
    default_certificate: str | None = None  # "namespace/name" of a kubernetes.io/tls Secret
    now: int = 0  # unix seconds, for expiry warnings (0: skip)


# --- per-Ingress plan ---------------------------------------------------------------------------


@dataclass
class _Plan:
    """What one Ingress asks for, before it meets the others."""

    ingress: Ingress
    mode: str
    settings: ann.Settings
    tls_rows: dict[str, TLSHost] = field(default_factory=dict)
    routes: list[tuple[str, Route]] = field(default_factory=list)
    pools: dict[str, Pool] = field(default_factory=dict)
    certificates: dict[str, Certificate] = field(default_factory=dict)
    ca_bundles: dict[str, CABundle] = field(default_factory=dict)
    hosts: set[str] = field(default_factory=set)
    fallback: Route | None = None  # spec.defaultBackend: for paths of its own hosts that match no rule


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, obj: ObjectRef, severity: Severity, reason: str, where: str, message: str) -> None:
        self.items.append(Problem(obj, severity, reason, where, message))


def _annotation_field(key: str) -> str:
    return f"metadata.annotations[{key}]"


# Settings that only mean something in some modes; used to report what an Ingress asked for in vain.
_MEANINGFUL = {
    "hsts": ("offload", "reencrypt"),
    "backend_ca_secret": ("reencrypt",),
    "backend_server_name": ("reencrypt",),
    "backend_verify": ("reencrypt",),
    "backend_client_secret": ("reencrypt",),
    "client_auth_secret": ("offload", "reencrypt"),
    "client_auth": ("offload", "reencrypt"),
    "client_auth_depth": ("offload", "reencrypt"),
    "client_cert_headers": ("offload", "reencrypt"),
    "proxy_protocol": ("passthrough",),
    "tls_min_version": ("offload", "reencrypt"),
    "read_timeout": ("offload", "reencrypt", HTTP_ONLY),
    "send_timeout": ("offload", "reencrypt", HTTP_ONLY),
    "max_body_size": ("offload", "reencrypt", HTTP_ONLY),
    "allow_underscore_headers": ("offload", "reencrypt", HTTP_ONLY),
    "tls_ciphers": ("offload", "reencrypt"),
    "tls_prefer_server_ciphers": ("offload", "reencrypt"),
    "client_auth_match_cn": ("offload", "reencrypt"),
    "client_auth_error_page": ("offload", "reencrypt"),
    "backend_tls_versions": ("reencrypt",),
    "backend_ciphers": ("reencrypt",),
    "backend_verify_depth": ("reencrypt",),
}


def _decide_mode(ingress: Ingress, settings: ann.Settings) -> str:
    if settings.mode is not None:
        return settings.mode
    return "offload" if ingress.tls else HTTP_ONLY


def _report_ignored(plan: _Plan, problems: _Problems) -> None:
    for setting, modes in _MEANINGFUL.items():
        key = plan.settings.origin.get(setting)
        if key is not None and plan.mode not in modes:
            mode = "plain HTTP (no spec.tls)" if plan.mode == HTTP_ONLY else f"{plan.mode} mode"
            problems.add(plan.ingress.ref, "Warning", "AnnotationIgnored", _annotation_field(key),
                         f"has no effect in {mode}; ignored")


# Words of the validator's TLS-row messages -> the setting (and so the annotation) responsible.
_TLS_ROW_SETTINGS = (
    ("match_cn", "client_auth_match_cn"), ("error_page", "client_auth_error_page"), ("cipher", "tls_ciphers"),
    ("min_version", "tls_min_version"), ("client auth", "client_auth"),
)
MAX_UNAVAILABLE = 200  # the data plane's limit on Pool.unavailable


def _unavailable(namespace: str, backend: BackendRef, error: str) -> str:
    """What a request to an unservable pool is told (503): the missing object, or that nothing is ready."""
    text = error or f"no ready endpoint for {namespace}/{backend.service}:{backend.port_text}"
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MAX_UNAVAILABLE else text[: MAX_UNAVAILABLE - 3] + "..."


def _pool_id(namespace: str, backend: BackendRef, spec: Pool) -> str:
    """``ns/service:port``, plus a digest of the non-default options so different options never share a pool."""
    base = f"{namespace}/{backend.service}:{backend.port_text}"
    options = Pool(id="", tls=spec.tls, load_balance=spec.load_balance, connect_timeout=spec.connect_timeout,
                   read_timeout=spec.read_timeout, send_timeout=spec.send_timeout, proxy_protocol=spec.proxy_protocol)
    if options == Pool(id=""):
        return base
    return base + "~" + hashlib.sha256(repr(options).encode()).hexdigest()[:10]


class _Renderer:
    def __init__(self, inputs: Inputs, config: RenderConfig, parsed: ParseCache | None = None) -> None:
        self.config = config
        self.parsed = parsed
        self.secrets: Mapping[tuple[str, str], Secret] = {(s.ref.namespace, s.ref.name): s for s in inputs.secrets}
        self.backends = BackendIndex(inputs.services, inputs.endpoint_slices)
        self.problems = _Problems()
        self._checked: dict[tuple[Callable[[Secret, int, ParseCache | None], Checked], ObjectRef], Checked] = {}

    def _check(self, check: Callable[[Secret, int, ParseCache | None], Checked], secret: Secret) -> Checked:
        """Parse each Secret once per render, however many Ingresses share it (wildcards, defaults)."""
        key = (check, secret.ref)
        if key not in self._checked:
            self._checked[key] = check(secret, self.config.now, self.parsed)
        return self._checked[key]

    # secrets -------------------------------------------------------------------------------------

    def _secret(self, ingress: Ingress, name: str, where: str) -> Secret | None:
        secret = self.secrets.get((ingress.ref.namespace, name))
        if secret is None:
            self.problems.add(ingress.ref, "Error", "SecretNotFound", where,
                              f"Secret {ingress.ref.namespace}/{name} not found")
        return secret

    def _ca(self, plan: _Plan, ref: ann.SecretRef, what: str) -> CABundle | None:
        where = _annotation_field(ref.annotation)
        secret = self._secret(plan.ingress, ref.name, where)
        if secret is None:
            return None
        checked = self._check(ca_bundle, secret)
        for message in checked.stripped:
            self.problems.add(plan.ingress.ref, "Warning", "SecretBlocksRemoved", where, message)
        for warning in checked.warnings:
            self.problems.add(plan.ingress.ref, "Warning", "CertificateExpiring", where, f"{what}: {warning}")
        if checked.bundle is None:
            self.problems.add(plan.ingress.ref, "Error", "InvalidSecret", where, f"{what}: {checked.error}")
            return None
        plan.ca_bundles[checked.bundle.id] = checked.bundle
        return checked.bundle

    def _certificate(self, plan: _Plan, name: str, where: str) -> Certificate | None:
        secret = self._secret(plan.ingress, name, where)
        if secret is None:
            return None
        checked = self._check(serving_certificate, secret)
        for message in checked.stripped:
            self.problems.add(plan.ingress.ref, "Warning", "SecretBlocksRemoved", where, message)
        for warning in checked.warnings:
            self.problems.add(plan.ingress.ref, "Warning", "CertificateExpiring", where,
                              f"Secret {secret.ref.namespace}/{name}: {warning}")
        if checked.certificate is None:
            self.problems.add(plan.ingress.ref, "Error", "InvalidSecret", where,
                              f"Secret {secret.ref.namespace}/{name}: {checked.error}")
            return None
        plan.certificates[checked.certificate.id] = checked.certificate
        return checked.certificate

    def default_certificate(self) -> Certificate | None:
        if not self.config.default_certificate:
            return None
        namespace, _, name = self.config.default_certificate.rpartition("/")
        ref = ObjectRef("Secret", namespace or "default", name)
        secret = self.secrets.get((ref.namespace, ref.name))
        if secret is None:
            self.problems.add(ref, "Error", "SecretNotFound", "", "default certificate Secret not found; "
                              "data planes serve their self-signed fallback certificate")
            return None
        checked = serving_certificate(secret, self.config.now, self.parsed)
        for message in checked.stripped:
            self.problems.add(ref, "Warning", "SecretBlocksRemoved", "data", message)
        for warning in checked.warnings:
            self.problems.add(ref, "Warning", "CertificateExpiring", "data", f"default certificate: {warning}")
        if checked.certificate is None:
            self.problems.add(ref, "Error", "InvalidSecret", "data", f"default certificate: {checked.error}")
        return checked.certificate

    # pools ---------------------------------------------------------------------------------------

    def _pool(self, plan: _Plan, backend: BackendRef) -> Pool | None:
        """The pool for one backend, or None when its upstream TLS cannot be set up (fail closed)."""
        ing, settings = plan.ingress, plan.settings
        resolved = self.backends.resolve(ing.ref.namespace, backend)
        if resolved.error:
            self.problems.add(ing.ref, "Error", resolved.reason, backend.field,
                              f"{resolved.error}; requests get 503 until it exists")
        elif not resolved.endpoints:
            self.problems.add(ing.ref, "Warning", "NoReadyEndpoints", backend.field,
                              f"Service {ing.ref.namespace}/{backend.service} port {backend.port_text} has no ready "
                              "endpoints; requests get 503")
        tls = None
        upstream_tls = plan.mode == "reencrypt" or (
            resolved.speaks_tls and settings.mode is None and plan.mode != "passthrough"
        )
        if resolved.speaks_tls and settings.mode == "offload":
            self.problems.add(ing.ref, "Warning", "BackendProtocolMismatch", backend.field,
                              f"Service port {backend.port_text} declares appProtocol {resolved.app_protocol} but "
                              "tls-mode offload sends plain HTTP to it")
        if upstream_tls:
            tls = self._upstream_tls(plan, backend)
            if tls is None:
                return None
        spec = Pool(
            id="",
            endpoints=resolved.endpoints,
            tls=tls,
            load_balance=settings.load_balance or "round-robin",  # type: ignore[arg-type]
            connect_timeout=settings.connect_timeout or 5.0,
            read_timeout=settings.read_timeout or 60.0,
            send_timeout=settings.send_timeout or 60.0,
            proxy_protocol=(settings.proxy_protocol or "off") if plan.mode == "passthrough" else "off",  # type: ignore[arg-type]
        )
        pool = Pool(**{**spec.__dict__, "id": _pool_id(ing.ref.namespace, backend, spec)})
        if resolved.error or not resolved.endpoints:
            pool = replace(pool, unavailable=_unavailable(ing.ref.namespace, backend, resolved.error))
        refused = conformance.pool_problems(pool)
        if refused:
            self.problems.add(ing.ref, "Error", "InvalidBackendSettings", backend.field,
                              "backend not served, the data plane would refuse it: " + "; ".join(refused))
            return None
        plan.pools[pool.id] = pool
        return pool

    def _upstream_tls(self, plan: _Plan, backend: BackendRef) -> UpstreamTLS | None:
        ing, settings = plan.ingress, plan.settings
        ca_id = None
        if settings.backend_ca_secret is not None:
            bundle = self._ca(plan, settings.backend_ca_secret, "backend CA")
            if bundle is None:
                self.problems.add(ing.ref, "Error", "BackendTLSUnavailable", backend.field,
                                  "route not served: the backend CA is unusable (fail closed, never unverified)")
                return None
            ca_id = bundle.id
        client_id = None
        ref = settings.backend_client_secret
        if ref is not None:
            optional = ref.annotation == ann.NGINX + "proxy-ssl-secret"
            secret = self.secrets.get((ing.ref.namespace, ref.name))
            if not (optional and secret is not None and "tls.crt" not in secret.data):
                cert = self._certificate(plan, ref.name, _annotation_field(ref.annotation))
                if cert is None:
                    self.problems.add(ing.ref, "Error", "BackendTLSUnavailable", backend.field,
                                      "route not served: the backend client certificate is unusable")
                    return None
                client_id = cert.id
        min_version, max_version = settings.backend_tls_versions or ("1.2", "1.3")
        verify = settings.backend_verify is not False
        if not verify:
            key = settings.origin.get("backend_verify", ann.NGINX + "backend-protocol")
            why = ("ingress-nginx does not verify HTTPS backends unless proxy-ssl-verify is on; kept for "
                   "compatibility" if settings.nginx_unverified_https else "explicit opt-out")
            self.problems.add(ing.ref, "Warning", "InsecureBackend", _annotation_field(key),
                              f"backend certificate of {backend.service} is NOT verified ({why}); anyone on the "
                              "path to the backend can impersonate it")
        return UpstreamTLS(
            server_name=settings.backend_server_name or f"{backend.service}.{ing.ref.namespace}.svc",
            ca_id=ca_id,
            verify=verify,
            client_cert_id=client_id,
            min_version=min_version,  # type: ignore[arg-type]
            max_version=max_version,  # type: ignore[arg-type]
            ciphers=settings.backend_ciphers or "",
            verify_depth=settings.backend_verify_depth or 0,
        )

    # plan ----------------------------------------------------------------------------------------

    def plan(self, ingress: Ingress) -> _Plan | None:
        settings, problems = ann.parse_annotations(ingress.ref, ingress.annotations)
        self.problems.items.extend(problems)
        bad_mode = [k for k, spec in ann.SPEC_BY_KEY.items()
                     if spec.setting == "mode" and any(p.field == _annotation_field(k) for p in problems)]
        if bad_mode:
            self.problems.add(ingress.ref, "Error", "IngressSkipped", _annotation_field(bad_mode[0]),
                              "Ingress not served: its TLS mode is invalid and guessing it could expose traffic")
            return None
        plan = _Plan(self._servable_hosts(ingress), _decide_mode(ingress, settings), settings)
        _report_ignored(plan, self.problems)
        if plan.mode == "passthrough":
            self._plan_passthrough(plan)
        else:
            self._plan_http(plan)
        return plan

    def _plan_passthrough(self, plan: _Plan) -> None:
        ing = plan.ingress
        for entry in ing.tls:
            if entry.secret_name:
                self.problems.add(ing.ref, "Warning", "AnnotationIgnored", f"{entry.field}.secretName",
                                  "passthrough never terminates TLS: the backend presents its own certificate; "
                                  "the Secret is not used")
        if ing.default_backend is not None:
            self.problems.add(ing.ref, "Warning", "AnnotationIgnored", "spec.defaultBackend",
                              "passthrough routes whole hosts by SNI; the default backend is not used")
        for rule in ing.rules:
            if not rule.host:
                self.problems.add(ing.ref, "Error", "PassthroughNeedsHost", f"{rule.field}.host",
                                  "passthrough routes by SNI, so the rule needs a host; rule skipped")
                continue
            chosen = next((p for p in rule.paths if p.path == "/"), rule.paths[0] if len(rule.paths) == 1 else None)
            if chosen is None:
                self.problems.add(ing.ref, "Error", "PassthroughNeedsRootPath", f"{rule.field}.http.paths",
                                  "passthrough sends the whole host to one backend: give the rule a / path; "
                                  "rule skipped")
                continue
            for other in rule.paths:
                if other is not chosen:
                    self.problems.add(ing.ref, "Warning", "PathIgnored", other.field,
                                      f"passthrough cannot route by path; {other.path} is ignored (whole host goes "
                                      f"to the backend of {chosen.path})")
            if chosen.backend is None:
                continue
            pool = self._pool(plan, chosen.backend)
            if pool is None:
                continue
            row = TLSHost(rule.host, "passthrough", pool_id=pool.id, source=str(ing.ref))
            refused = conformance.tls_host_problems(row, pool)
            if refused:
                self.problems.add(ing.ref, "Error", "InvalidTLSSettings", rule.field,
                                  "host not served, the data plane would refuse it: " + "; ".join(refused))
                continue
            plan.tls_rows[rule.host] = row
            plan.hosts.add(rule.host)

    def _client_auth(self, plan: _Plan) -> tuple[bool, ClientAuth | None]:
        """(usable, client auth); not usable means the Ingress's TLS hosts must not be served (fail closed)."""
        settings = plan.settings
        if settings.client_auth == "off" or settings.client_auth_secret is None:
            if settings.client_auth in ("required", "optional", "optional_no_ca"):
                key = settings.origin["client_auth"]
                self.problems.add(plan.ingress.ref, "Warning", "AnnotationIgnored", _annotation_field(key),
                                  "client-auth needs client-auth-secret (the CA to verify against); ignored")
            for setting in ("client_auth_match_cn", "client_auth_error_page"):
                if setting in settings.origin:
                    self.problems.add(plan.ingress.ref, "Warning", "AnnotationIgnored",
                                      _annotation_field(settings.origin[setting]),
                                      "has no effect without client certificate auth (client-auth-secret); ignored")
            return True, None
        bundle = self._ca(plan, settings.client_auth_secret, "client CA")
        if bundle is None:
            return False, None
        return True, ClientAuth(
            ca_id=bundle.id,
            mode=settings.client_auth or "required",  # type: ignore[arg-type]
            verify_depth=settings.client_auth_depth or 1,
            forward_headers=bool(settings.client_cert_headers),
            match_cn=settings.client_auth_match_cn or "",
            error_page=settings.client_auth_error_page or "",
        )

    def _plan_http(self, plan: _Plan) -> None:
        ing, settings = plan.ingress, plan.settings
        rule_hosts = sorted({r.host for r in ing.rules if r.host})
        if plan.mode != HTTP_ONLY:
            usable, client_auth = self._client_auth(plan)
            if not usable:
                self.problems.add(ing.ref, "Error", "IngressSkipped", _annotation_field(
                    settings.client_auth_secret.annotation if settings.client_auth_secret else ""),
                    "Ingress not served: client certificate auth is requested but its CA is unusable (fail closed)")
                return
            certs: dict[str, str | None] = {}
            for entry in ing.tls:
                cert = self._certificate(plan, entry.secret_name, f"{entry.field}.secretName") \
                    if entry.secret_name else None
                for host in entry.hosts or tuple(rule_hosts):
                    if cert is None and entry.secret_name:
                        self.problems.add(ing.ref, "Warning", "DefaultCertificateUsed", f"{entry.field}.secretName",
                                          f"host {host} is served with the default certificate until the Secret "
                                          "is fixed")
                    elif cert is not None and not covers(cert.names, host):
                        self.problems.add(ing.ref, "Warning", "CertificateNameMismatch", f"{entry.field}.hosts",
                                          f"certificate in Secret {entry.secret_name} does not cover {host} "
                                          f"(names: {', '.join(cert.names) or 'none'})")
                    certs.setdefault(host, cert.id if cert else None)
            if not ing.tls and settings.mode is not None:
                for host in rule_hosts:
                    certs[host] = None
                if rule_hosts:
                    self.problems.add(ing.ref, "Warning", "DefaultCertificateUsed", "spec.tls",
                                      f"tls-mode {plan.mode} without spec.tls: hosts are served with the default "
                                      "certificate")
            for host, cert_id in certs.items():
                plan.tls_rows[host] = TLSHost(
                    host, "terminate", certificate_id=cert_id, min_version=settings.tls_min_version or "1.2",  # type: ignore[arg-type]
                    client_auth=client_auth, ciphers=settings.tls_ciphers or "",
                    prefer_server_ciphers=settings.tls_prefer_server_ciphers is not False, source=str(ing.ref),
                )
                plan.hosts.add(host)
        if self._refuse_tls_rows(plan):
            return
        for rule in ing.rules:
            for item in rule.paths:
                route = self._checked_route(plan, self._route(plan, item.path, item.path_type, item.backend,
                                                              item.field), item.field)
                if route is not None:
                    plan.routes.append((rule.host, route))
                    plan.hosts.add(rule.host)
        if ing.default_backend is not None:
            route = self._checked_route(plan, self._route(plan, "/", "Prefix", ing.default_backend,
                                                          "spec.defaultBackend"), "spec.defaultBackend")
            if route is not None:
                plan.routes.append(("", route))  # hosts nobody serves
                plan.fallback = route  # unmatched paths of this Ingress's own hosts (see _Tables.fallbacks)
                plan.hosts.update(rule_hosts)

    def _servable_hosts(self, ingress: Ingress) -> Ingress:
        """The Ingress without the rules and TLS hosts the data plane would refuse, each reported.

        One bad host name must cost only its own rule: the data plane refuses a whole snapshot for it.
        """
        rules = []
        for rule in ingress.rules:
            refused = conformance.host_problems(rule.host, tls=False)
            if refused:
                self.problems.add(ingress.ref, "Error", "InvalidHost", f"{rule.field}.host",
                                  f"rule not served: {'; '.join(refused)}")
            else:
                rules.append(rule)
        tls = []
        for entry in ingress.tls:
            hosts = []
            for host in entry.hosts:
                refused = conformance.host_problems(host, tls=True)
                if refused:
                    self.problems.add(ingress.ref, "Error", "InvalidHost", f"{entry.field}.hosts",
                                      f"TLS host not served: {'; '.join(refused)}")
                else:
                    hosts.append(host)
            if hosts or not entry.hosts:  # an entry left without hosts must not widen to every rule host
                tls.append(replace(entry, hosts=tuple(hosts)))
        if len(rules) == len(ingress.rules) and tls == list(ingress.tls):
            return ingress
        return replace(ingress, rules=tuple(rules), tls=tuple(tls))

    def _refuse_tls_rows(self, plan: _Plan) -> bool:
        """True (and the Ingress's TLS hosts dropped) when the data plane would refuse a row's settings.

        Rows differ only in host (checked already) and certificate, so a refused row means the
        Ingress's TLS settings are bad: serving its routes over plain HTTP instead would fail open.
        """
        ing = plan.ingress
        for _, row in sorted(plan.tls_rows.items()):
            refused = conformance.tls_host_problems(row)
            if refused:
                text = "; ".join(refused)
                setting = next((s for word, s in _TLS_ROW_SETTINGS if word in text and s in plan.settings.origin),
                               None)
                where = _annotation_field(plan.settings.origin[setting]) if setting else "metadata.annotations"
                self.problems.add(ing.ref, "Error", "IngressSkipped", where,
                                  f"Ingress not served, the data plane would refuse its TLS settings: {text}")
                plan.tls_rows.clear()
                plan.hosts.clear()
                return True
        return False

    def _checked_route(self, plan: _Plan, route: Route | None, where: str) -> Route | None:
        if route is None:
            return None
        refused = conformance.route_problems(route)
        if refused:
            self.problems.add(plan.ingress.ref, "Error", "InvalidPath", where,
                              f"path not served, the data plane would refuse it: {'; '.join(refused)}")
            return None
        return route

    def _route(self, plan: _Plan, path: str, path_type: str, backend: BackendRef | None, where: str) -> Route | None:
        ing = plan.ingress
        if path_type not in ("Exact", "Prefix", "ImplementationSpecific"):
            self.problems.add(ing.ref, "Error", "InvalidPath", f"{where}.pathType",
                              f"unknown pathType {path_type!r}; path skipped")
            return None
        if not path.startswith("/") or any(c.isspace() or ord(c) < 0x20 or c in "{};" for c in path):
            self.problems.add(ing.ref, "Error", "InvalidPath", f"{where}.path",
                              f"path {path!r} must start with / and hold no spaces or control characters; skipped")
            return None
        if backend is None:
            return None
        pool = self._pool(plan, backend)
        if pool is None:
            return None
        kind = "Exact" if path_type == "Exact" else "Prefix"
        if kind == "Prefix" and len(path) > 1:
            path = path.rstrip("/") or "/"
        body = plan.settings.max_body_size
        return Route(path, kind, pool.id, max_body_size=-1 if body is None else body,  # type: ignore[arg-type]
                     source=str(ing.ref))


# --- merging plans: oldest wins -------------------------------------------------------------------


@dataclass
class _HostState:
    owner: Ingress
    mode: str
    tls_row: TLSHost | None = None
    insecure_policy: tuple[str, Ingress, str] | None = None  # value, who set it, which annotation
    hsts: tuple[str, Ingress, str] | None = None
    allow_underscore_headers: tuple[bool, Ingress, str] | None = None


def _host_tls_settings(row: TLSHost) -> tuple[object, ...]:
    """What a younger Ingress must agree on to share a host: all of it is one handshake policy."""
    return (row.client_auth, row.min_version, row.ciphers, row.prefer_server_ciphers)


class _Tables:
    def __init__(self, problems: _Problems) -> None:
        self.problems = problems
        self.hosts: dict[str, _HostState] = {}
        self.routes: dict[str, dict[tuple[str, str], Route]] = {}
        self.pools: dict[str, Pool] = {}
        self.certificates: dict[str, Certificate] = {}
        self.ca_bundles: dict[str, CABundle] = {}
        # (Ingress, its accepted hosts, its defaultBackend route, pool), oldest first
        self.fallbacks: list[tuple[Ingress, tuple[str, ...], Route, Pool]] = []

    def merge(self, plan: _Plan) -> None:
        ing = plan.ingress
        used_pools: set[str] = set()
        family = "passthrough" if plan.mode == "passthrough" else "terminate"
        accepted: set[str] = set()
        for host in sorted(plan.hosts):
            state = self.hosts.get(host)
            if state is None:
                self.hosts[host] = state = _HostState(ing, family)
            elif state.mode != family or family == "passthrough":
                self.problems.add(ing.ref, "Warning", "HostConflict", "spec.rules",
                                  f"host {host} is already served by older {state.owner.ref} "
                                  f"({state.mode}); this Ingress's claim on it is ignored")
                continue
            row = plan.tls_rows.get(host)
            if row is not None:
                if state.tls_row is None:
                    state.tls_row = row
                elif _host_tls_settings(row) != _host_tls_settings(state.tls_row):
                    self.problems.add(ing.ref, "Warning", "TLSSettingsConflict", "metadata.annotations",
                                      f"host {host} already has different TLS settings (client auth, minimum "
                                      f"version, ciphers) from older {state.owner.ref}; this Ingress's routes for "
                                      "it are ignored so they cannot weaken or bypass them")
                    continue
                elif row.certificate_id and row.certificate_id != state.tls_row.certificate_id:
                    self.problems.add(ing.ref, "Warning", "CertificateConflict", "spec.tls",
                                      f"host {host} is served with the certificate chosen by older "
                                      f"{state.owner.ref}")
                if row.pool_id:
                    used_pools.add(row.pool_id)
            for setting in ("insecure_policy", "hsts", "allow_underscore_headers"):
                value = getattr(plan.settings, setting)
                if value is not None and getattr(state, setting) is None:
                    setattr(state, setting, (value, ing, plan.settings.origin[setting]))
            accepted.add(host)
        for host, route in plan.routes:
            if host and host not in accepted:
                continue
            table = self.routes.setdefault(host, {})
            key = (route.path, route.path_type)
            if key in table:
                self.problems.add(ing.ref, "Warning", "PathConflict", "spec.rules",
                                  f"{route.path_type} path {route.path} on host {host or '*'} is already routed by "
                                  f"older {table[key].source}; ignored here")
                continue
            table[key] = route
            used_pools.add(route.pool_id)
        for pool_id in used_pools:
            self.pools[pool_id] = plan.pools[pool_id]
        self.certificates.update(plan.certificates)
        self.ca_bundles.update(plan.ca_bundles)
        if plan.fallback is not None and accepted:
            self.fallbacks.append((ing, tuple(sorted(accepted)), plan.fallback, plan.pools[plan.fallback.pool_id]))

    def apply_fallbacks(self) -> None:
        """Each Ingress's defaultBackend takes the unmatched paths of its own hosts (the Ingress API:
        it handles "requests that don't match any rule"), as a ``/`` Prefix route that loses to any
        Ingress's explicit ``/`` Prefix on the host, and to an older Ingress's fallback.
        """
        taken: dict[str, Ingress] = {}
        for ing, hosts, route, pool in self.fallbacks:
            for host in hosts:
                state = self.hosts.get(host)
                if state is not None and state.mode == "passthrough":
                    continue
                table = self.routes.setdefault(host, {})
                if ("/", "Prefix") in table:
                    if host in taken and taken[host] is not ing:
                        self.problems.add(ing.ref, "Warning", "PathConflict", "spec.defaultBackend",
                                          f"unmatched paths of host {host} already go to the defaultBackend of "
                                          f"older {taken[host].ref}; ignored here")
                    continue
                table[("/", "Prefix")] = route
                taken[host] = ing
                self.pools[pool.id] = pool

    def snapshot(self, default_cert: Certificate | None) -> Snapshot:
        self.apply_fallbacks()
        tls_hosts = [s.tls_row for s in self.hosts.values() if s.tls_row is not None]
        vhosts: list[VirtualHost] = []
        for host in sorted(set(self.routes) | set(self.hosts)):
            state = self.hosts.get(host)
            routes = tuple(self.routes.get(host, {}).values())
            if state is not None and state.mode == "passthrough":
                routes = ()
            vhosts.append(self._virtual_host(host, state, routes))
        certificates = dict(self.certificates)
        if default_cert is not None:
            certificates[default_cert.id] = default_cert
        used_certs = {h.certificate_id for h in tls_hosts} | {
            p.tls.client_cert_id for p in self.pools.values() if p.tls
        } | ({default_cert.id} if default_cert else set())
        used_cas = {h.client_auth.ca_id for h in tls_hosts if h.client_auth} | {
            p.tls.ca_id for p in self.pools.values() if p.tls
        }
        return Snapshot(
            default_certificate_id=default_cert.id if default_cert else None,
            certificates=tuple(c for c in certificates.values() if c.id in used_certs),
            ca_bundles=tuple(c for c in self.ca_bundles.values() if c.id in used_cas),
            pools=tuple(self.pools.values()),
            tls_hosts=tuple(tls_hosts),
            virtual_hosts=tuple(vhosts),
        ).canonical()

    def _virtual_host(self, host: str, state: _HostState | None, routes: tuple[Route, ...]) -> VirtualHost:
        tls = state is not None and state.tls_row is not None
        underscore = state is not None and state.allow_underscore_headers is not None and \
            state.allow_underscore_headers[0]
        if not tls:
            return VirtualHost(host, routes, allow_underscore_headers=underscore)
        assert state is not None and state.tls_row is not None
        policy = state.insecure_policy[0] if state.insecure_policy else "redirect"
        if policy == "allow" and (state.tls_row.client_auth is not None or state.mode == "passthrough"):
            assert state.insecure_policy is not None
            why = "would bypass client certificate auth" if state.tls_row.client_auth else \
                "cannot reach a passthrough backend"
            self.problems.add(state.insecure_policy[1].ref, "Warning", "InsecurePolicyOverridden",
                              _annotation_field(state.insecure_policy[2]),
                              f"insecure-policy allow on host {host} {why}; plain HTTP is redirected instead")
            policy = "redirect"
        hsts: str | None = DEFAULT_HSTS
        if state.hsts is not None:
            hsts = state.hsts[0] or None
        if state.mode == "passthrough":
            hsts = None
        return VirtualHost(host, routes, tls=True, insecure_policy=policy, hsts=hsts,  # type: ignore[arg-type]
                           allow_underscore_headers=underscore)


def render(inputs: Inputs, config: RenderConfig, parsed: ParseCache | None = None) -> tuple[Snapshot, list[Problem]]:
    """The snapshot for these objects and every problem found on the way (canonical, generation 0).

    ``parsed`` is an optional cache of parsed certificate material owned by the caller (a long-lived
    controller passes one so a render re-parses only Secrets whose bytes changed); the result is the
    same with or without it.
    """
    renderer = _Renderer(inputs, config, parsed)
    ours = classes.select(inputs.ingresses, inputs.ingress_classes, config.ingress_class, config.controller_name,
                          config.watch_namespaces)
    tables = _Tables(renderer.problems)
    for ingress in ours:
        renderer.problems.items.extend(ingress.problems)
        plan = renderer.plan(ingress)
        if plan is not None:
            tables.merge(plan)
    snapshot = tables.snapshot(renderer.default_certificate())
    return snapshot, sorted(set(renderer.problems.items))


def problems_for(problems: Iterable[Problem], obj: ObjectRef) -> list[Problem]:
    """The problems of one object (what the admission webhook and Event writer need)."""
    return [p for p in problems if p.obj == obj]
