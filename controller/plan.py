"""One Ingress in, its plan out: the TLS rows, routes and pools it asks for, and its problems.

The first half of the renderer (``controller/merge.py`` is the second): like Contour's
per-source processors, a plan is made from one Ingress and the objects it references (Secrets,
Services, EndpointSlices) and knows nothing of other Ingresses. What happens when two Ingresses
claim the same host or path is decided only when plans are merged, oldest first.

Steps, per Ingress: parse its annotations (``controller/annotations.py``), decide its mode
(``decide_mode``), drop hosts the data plane would refuse, then plan passthrough rows or
terminating rows, routes and pools, resolving Secrets (``controller/certificates.py``) and
Services (``controller/backends.py``) and asking ``controller/conformance.py`` what the data
plane would refuse. Every decision that cannot be honoured is a problem on the plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from controller import annotations as ann
from controller import conformance
from controller.backends import BackendIndex
from controller.certificates import Checked, ParseCache, ca_bundle, covers, serving_certificate
from controller.model import BackendRef, Ingress, Inputs, Secret
from controller.problems import ObjectRef, Problem, Severity
from dataplane.snapshot import (
    BackendProtocol,
    CABundle,
    Certificate,
    ClientAuth,
    PathType,
    Pool,
    Route,
    TLSHost,
    UpstreamTLS,
)

PlanMode = Literal["passthrough", "offload", "reencrypt", "http"]
HTTP_ONLY: Literal["http"] = "http"  # no spec.tls and no tls-mode: plain HTTP only


class Problems:
    """Problems found so far; ``add`` spells a Problem the way every call site needs it."""

    def __init__(self, items: Iterable[Problem] = ()) -> None:
        self.items: list[Problem] = list(items)

    def add(self, obj: ObjectRef, severity: Severity, reason: str, where: str, message: str) -> None:
        self.items.append(Problem(obj, severity, reason, where, message))



@dataclass
class Plan:
    """What one Ingress asks for, before it meets the others."""

    ingress: Ingress
    mode: PlanMode
    settings: ann.Settings
    problems: Problems = field(default_factory=Problems)
    tls_rows: dict[str, TLSHost] = field(default_factory=dict)
    routes: list[tuple[str, Route]] = field(default_factory=list)
    pools: dict[str, Pool] = field(default_factory=dict)
    certificates: dict[str, Certificate] = field(default_factory=dict)
    ca_bundles: dict[str, CABundle] = field(default_factory=dict)
    hosts: set[str] = field(default_factory=set)
    fallback: Route | None = None  # spec.defaultBackend: for paths of its own hosts that match no rule


def annotation_field(key: str) -> str:
    """The problem field naming an annotation."""
    return f"metadata.annotations[{key}]"


# Settings that only mean something in some modes; used to report what an Ingress asked for in vain.
_MEANINGFUL: dict[str, tuple[PlanMode, ...]] = {
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
    "limit_rps": ("offload", "reencrypt", HTTP_ONLY),
    "limit_connections": ("passthrough", "offload", "reencrypt"),  # counted once the SNI is known
    "backend_protocol": ("offload", "reencrypt", HTTP_ONLY),  # passthrough: the bytes are the client's
    "http2": ("offload", "reencrypt"),  # ALPN of terminated hosts; passthrough: the backend's business
}
# Upstream TLS settings: meaningful in reencrypt, and wherever backend-protocol h2 or grpcs asks for TLS.
_UPSTREAM_TLS_SETTINGS = {s for s, modes in _MEANINGFUL.items() if modes == ("reencrypt",)}


def host_limits(settings: ann.Settings) -> dict[str, Any]:
    """limit-connections (and its whitelist) for the Ingress's TLS rows."""
    if not settings.limit_connections:
        return {}
    return {"limit_connections": settings.limit_connections, "limit_whitelist": settings.limit_whitelist or ()}


def route_limits(settings: ann.Settings) -> dict[str, Any]:
    """limit-rps (and its whitelist) for the Ingress's routes."""
    if not settings.limit_rps:
        return {}
    return {"limit_rps": settings.limit_rps, "limit_whitelist": settings.limit_whitelist or ()}


def decide_mode(ingress: Ingress, settings: ann.Settings) -> PlanMode:
    """The annotation's mode, else offload for an Ingress with spec.tls, else plain HTTP."""
    if settings.mode is not None:
        return settings.mode
    return "offload" if ingress.tls else HTTP_ONLY


def backend_wire(settings: ann.Settings, speaks_h2c: bool = False) -> tuple[BackendProtocol, bool | None]:
    """(Pool.protocol, TLS asked for: True, cleartext asked for: False, None: tls-mode decides). A Service port
    with appProtocol kubernetes.io/h2c (``speaks_h2c``) is spoken HTTP/2 to unless a backend-protocol annotation
    says otherwise; TLS stays tls-mode's choice (reencrypt: HTTP/2 over TLS, with a Warning)."""
    if speaks_h2c and settings.backend_protocol is None:
        return "h2", None
    return ann.BACKEND_WIRE[settings.backend_protocol or "http1"]


def upstream_tls_wanted(mode: PlanMode, explicit_mode: bool, protocol_tls: bool | None, speaks_tls: bool) -> bool:
    """TLS to the backend: reencrypt, or backend-protocol h2/grpcs (fail secure: whatever the mode but
    passthrough), or a Service port declaring TLS when neither tls-mode nor backend-protocol says otherwise."""
    if mode == "passthrough":
        return False
    return mode == "reencrypt" or protocol_tls is True or (speaks_tls and not explicit_mode and protocol_tls is None)


def _report_ignored(plan: Plan) -> None:
    upstream_tls = backend_wire(plan.settings)[1] is True
    for setting, modes in _MEANINGFUL.items():
        key = plan.settings.origin.get(setting)
        if setting in _UPSTREAM_TLS_SETTINGS and upstream_tls and plan.mode != "passthrough":
            continue
        if key is not None and plan.mode not in modes:
            mode = "plain HTTP (no spec.tls)" if plan.mode == HTTP_ONLY else f"{plan.mode} mode"
            plan.problems.add(plan.ingress.ref, "Warning", "AnnotationIgnored", annotation_field(key),
                         f"has no effect in {mode}; ignored")
    if plan.mode == "reencrypt" and backend_wire(plan.settings)[1] is False:
        plan.problems.add(plan.ingress.ref, "Warning", "BackendProtocolMismatch",
                          annotation_field(plan.settings.origin["backend_protocol"]),
                          f"backend-protocol {plan.settings.backend_protocol} is cleartext but tls-mode reencrypt "
                          "asks for TLS to the backend: HTTP/2 over TLS is used (the secure choice)")


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
                   read_timeout=spec.read_timeout, send_timeout=spec.send_timeout, proxy_protocol=spec.proxy_protocol,
                   protocol=spec.protocol, upgrade_idle_timeout=spec.upgrade_idle_timeout)
    if options == Pool(id=""):
        return base
    return base + "~" + hashlib.sha256(repr(options).encode()).hexdigest()[:10]


def report_checked(problems: Problems, ref: ObjectRef, where: str, what: str, checked: Checked, usable: bool) -> None:
    """A checked Secret's problems, in this order: PEM blocks removed, expiry warnings (``what: ...``), and
    unless ``usable`` why it is not (``what: error``)."""
    for message in checked.stripped:
        problems.add(ref, "Warning", "SecretBlocksRemoved", where, message)
    for warning in checked.warnings:
        problems.add(ref, "Warning", "CertificateExpiring", where, f"{what}: {warning}")
    if not usable:
        problems.add(ref, "Error", "InvalidSecret", where, f"{what}: {checked.error}")


class Planner:
    """Plans Ingresses one at a time against the render's Secrets and Services.

    A plan depends on its Ingress and the referenced objects only, never on another Ingress;
    what the Planner keeps between plans is a cache (each Secret parsed once per render).
    """

    def __init__(self, inputs: Inputs, now: int, parsed: ParseCache | None = None) -> None:
        self.now = now
        self.parsed = parsed
        self.secrets: Mapping[tuple[str, str], Secret] = {(s.ref.namespace, s.ref.name): s for s in inputs.secrets}
        self.backends = BackendIndex(inputs.services, inputs.endpoint_slices)
        self._checked: dict[tuple[Callable[[Secret, int, ParseCache | None], Checked], ObjectRef], Checked] = {}

    def _check(self, check: Callable[[Secret, int, ParseCache | None], Checked], secret: Secret) -> Checked:
        """Parse each Secret once per render, however many Ingresses share it (wildcards, defaults)."""
        key = (check, secret.ref)
        if key not in self._checked:
            self._checked[key] = check(secret, self.now, self.parsed)
        return self._checked[key]

    # secrets -------------------------------------------------------------------------------------

    def _secret(self, plan: Plan, name: str, where: str) -> Secret | None:
        ingress = plan.ingress
        secret = self.secrets.get((ingress.ref.namespace, name))
        if secret is None:
            plan.problems.add(ingress.ref, "Error", "SecretNotFound", where,
                              f"Secret {ingress.ref.namespace}/{name} not found")
        return secret

    def _ca(self, plan: Plan, ref: ann.SecretRef, what: str) -> CABundle | None:
        where = annotation_field(ref.annotation)
        secret = self._secret(plan, ref.name, where)
        if secret is None:
            return None
        checked = self._check(ca_bundle, secret)
        report_checked(plan.problems, plan.ingress.ref, where, what, checked, checked.bundle is not None)
        if checked.bundle is None:
            return None
        plan.ca_bundles[checked.bundle.id] = checked.bundle
        return checked.bundle

    def _certificate(self, plan: Plan, name: str, where: str) -> Certificate | None:
        secret = self._secret(plan, name, where)
        if secret is None:
            return None
        checked = self._check(serving_certificate, secret)
        report_checked(plan.problems, plan.ingress.ref, where, f"Secret {secret.ref.namespace}/{name}", checked,
                       checked.certificate is not None)
        if checked.certificate is None:
            return None
        plan.certificates[checked.certificate.id] = checked.certificate
        return checked.certificate

    def default_certificate(self, secret_name: str | None, problems: Problems) -> Certificate | None:
        """The controller-wide default certificate (``namespace/name``), checked; problems name the Secret."""
        if not secret_name:
            return None
        namespace, _, name = secret_name.rpartition("/")
        ref = ObjectRef("Secret", namespace or "default", name)
        secret = self.secrets.get((ref.namespace, ref.name))
        if secret is None:
            problems.add(ref, "Error", "SecretNotFound", "", "default certificate Secret not found; "
                         "data planes serve their self-signed fallback certificate")
            return None
        checked = serving_certificate(secret, self.now, self.parsed)
        report_checked(problems, ref, "data", "default certificate", checked, checked.certificate is not None)
        return checked.certificate

    # pools ---------------------------------------------------------------------------------------

    def _pool(self, plan: Plan, backend: BackendRef) -> Pool | None:
        """The pool for one backend, or None when its upstream TLS cannot be set up (fail closed)."""
        ing, settings = plan.ingress, plan.settings
        resolved = self.backends.resolve(ing.ref.namespace, backend)
        if resolved.error:
            plan.problems.add(ing.ref, "Error", resolved.reason, backend.field,
                              f"{resolved.error}; requests get 503 until it exists")
        elif not resolved.endpoints:
            plan.problems.add(ing.ref, "Warning", "NoReadyEndpoints", backend.field,
                              f"Service {ing.ref.namespace}/{backend.service} port {backend.port_text} has no ready "
                              "endpoints; requests get 503")
        tls = None
        protocol, protocol_tls = backend_wire(settings, resolved.speaks_h2c) if plan.mode != "passthrough" \
            else ("http1", None)
        upstream_tls = upstream_tls_wanted(plan.mode, settings.mode is not None, protocol_tls, resolved.speaks_tls)
        if upstream_tls and resolved.speaks_h2c and settings.backend_protocol is None:
            plan.problems.add(ing.ref, "Warning", "BackendProtocolMismatch", backend.field,
                              f"Service port {backend.port_text} declares appProtocol {resolved.app_protocol} "
                              "(cleartext) but tls-mode reencrypt asks for TLS to the backend: HTTP/2 over TLS is "
                              "used (the secure choice)")
        if resolved.speaks_tls and not upstream_tls and plan.mode != "passthrough":
            why = "tls-mode offload" if settings.mode == "offload" else \
                f"{settings.origin.get('backend_protocol')} {settings.backend_protocol}"
            plan.problems.add(ing.ref, "Warning", "BackendProtocolMismatch", backend.field,
                              f"Service port {backend.port_text} declares appProtocol {resolved.app_protocol} but "
                              f"{why} sends plain HTTP to it")
        if upstream_tls:
            tls = self._upstream_tls(plan, backend)
            if tls is None:
                return None
        spec = Pool(
            id="",
            endpoints=resolved.endpoints,
            tls=tls,
            load_balance=settings.load_balance or "round-robin",
            connect_timeout=settings.connect_timeout or 5.0,
            read_timeout=settings.read_timeout or 60.0,
            send_timeout=settings.send_timeout or 60.0,
            proxy_protocol=(settings.proxy_protocol or "off") if plan.mode == "passthrough" else "off",
            protocol=protocol,
            # A read timeout the Ingress set bounds its WebSockets' silence too, as ingress-nginx's does (users set
            # 86400 for long-lived sockets, or 60); unset, the data plane's --upgrade-idle-timeout does.
            upgrade_idle_timeout=settings.read_timeout,
        )
        pool = Pool(**{**spec.__dict__, "id": _pool_id(ing.ref.namespace, backend, spec)})
        if resolved.error or not resolved.endpoints:
            pool = replace(pool, unavailable=_unavailable(ing.ref.namespace, backend, resolved.error))
        refused = conformance.pool_problems(pool)
        if refused:
            plan.problems.add(ing.ref, "Error", "InvalidBackendSettings", backend.field,
                              "backend not served, the data plane would refuse it: " + "; ".join(refused))
            return None
        plan.pools[pool.id] = pool
        return pool

    def _upstream_tls(self, plan: Plan, backend: BackendRef) -> UpstreamTLS | None:
        ing, settings = plan.ingress, plan.settings
        ca_id = None
        if settings.backend_ca_secret is not None:
            bundle = self._ca(plan, settings.backend_ca_secret, "backend CA")
            if bundle is None:
                plan.problems.add(ing.ref, "Error", "BackendTLSUnavailable", backend.field,
                                  "route not served: the backend CA is unusable (fail closed, never unverified)")
                return None
            ca_id = bundle.id
        client_id = None
        ref = settings.backend_client_secret
        if ref is not None:
            optional = ref.annotation == ann.NGINX + "proxy-ssl-secret"
            secret = self.secrets.get((ing.ref.namespace, ref.name))
            if not (optional and secret is not None and "tls.crt" not in secret.data):
                cert = self._certificate(plan, ref.name, annotation_field(ref.annotation))
                if cert is None:
                    plan.problems.add(ing.ref, "Error", "BackendTLSUnavailable", backend.field,
                                      "route not served: the backend client certificate is unusable")
                    return None
                client_id = cert.id
        min_version, max_version = settings.backend_tls_versions or ("1.2", "1.3")
        verify = settings.backend_verify is not False
        if not verify:
            key = settings.origin.get("backend_verify", ann.NGINX + "backend-protocol")
            why = ("ingress-nginx does not verify HTTPS backends unless proxy-ssl-verify is on; kept for "
                   "compatibility" if settings.nginx_unverified_https else "explicit opt-out")
            plan.problems.add(ing.ref, "Warning", "InsecureBackend", annotation_field(key),
                              f"backend certificate of {backend.service} is NOT verified ({why}); anyone on the "
                              "path to the backend can impersonate it")
        return UpstreamTLS(
            server_name=settings.backend_server_name or f"{backend.service}.{ing.ref.namespace}.svc",
            ca_id=ca_id,
            verify=verify,
            client_cert_id=client_id,
            min_version=min_version,
            max_version=max_version,
            ciphers=settings.backend_ciphers or "",
            verify_depth=settings.backend_verify_depth or 0,
        )

    # plan ----------------------------------------------------------------------------------------

    def plan(self, ingress: Ingress) -> Plan:
        """What this Ingress asks for and every problem found on the way; an Ingress not served plans nothing."""
        settings, parse_problems = ann.parse_annotations(ingress.ref, ingress.annotations)
        problems = Problems(parse_problems)
        bad_mode = [k for k, spec in ann.SPEC_BY_KEY.items()
                     if spec.setting == "mode" and any(p.field == annotation_field(k) for p in parse_problems)]
        if bad_mode:
            problems.add(ingress.ref, "Error", "IngressSkipped", annotation_field(bad_mode[0]),
                         "Ingress not served: its TLS mode is invalid and guessing it could expose traffic")
            return Plan(ingress, decide_mode(ingress, settings), settings, problems)
        plan = Plan(self._servable_hosts(ingress, problems), decide_mode(ingress, settings), settings, problems)
        _report_ignored(plan)
        if plan.mode == "passthrough":
            self._plan_passthrough(plan)
        else:
            self._plan_http(plan)
        return plan

    def _plan_passthrough(self, plan: Plan) -> None:
        ing = plan.ingress
        for entry in ing.tls:
            if entry.secret_name:
                plan.problems.add(ing.ref, "Warning", "AnnotationIgnored", f"{entry.field}.secretName",
                                  "passthrough never terminates TLS: the backend presents its own certificate; "
                                  "the Secret is not used")
        if ing.default_backend is not None:
            plan.problems.add(ing.ref, "Warning", "AnnotationIgnored", "spec.defaultBackend",
                              "passthrough routes whole hosts by SNI; the default backend is not used")
        for rule in ing.rules:
            if not rule.host:
                plan.problems.add(ing.ref, "Error", "PassthroughNeedsHost", f"{rule.field}.host",
                                  "passthrough routes by SNI, so the rule needs a host; rule skipped")
                continue
            chosen = next((p for p in rule.paths if p.path == "/"), rule.paths[0] if len(rule.paths) == 1 else None)
            if chosen is None:
                plan.problems.add(ing.ref, "Error", "PassthroughNeedsRootPath", f"{rule.field}.http.paths",
                                  "passthrough sends the whole host to one backend: give the rule a / path; "
                                  "rule skipped")
                continue
            for other in rule.paths:
                if other is not chosen:
                    plan.problems.add(ing.ref, "Warning", "PathIgnored", other.field,
                                      f"passthrough cannot route by path; {other.path} is ignored (whole host goes "
                                      f"to the backend of {chosen.path})")
            if chosen.backend is None:
                continue
            pool = self._pool(plan, chosen.backend)
            if pool is None:
                continue
            row = TLSHost(rule.host, "passthrough", pool_id=pool.id, **host_limits(plan.settings), source=str(ing.ref),
                          access_log=plan.settings.access_log is not False)
            refused = conformance.tls_host_problems(row, pool)
            if refused:
                plan.problems.add(ing.ref, "Error", "InvalidTLSSettings", rule.field,
                                  "host not served, the data plane would refuse it: " + "; ".join(refused))
                continue
            plan.tls_rows[rule.host] = row
            plan.hosts.add(rule.host)

    def _client_auth(self, plan: Plan) -> tuple[bool, ClientAuth | None]:
        """(usable, client auth); not usable means the Ingress's TLS hosts must not be served (fail closed)."""
        settings = plan.settings
        if settings.client_auth == "off" or settings.client_auth_secret is None:
            if settings.client_auth in ("required", "optional", "optional_no_ca"):
                key = settings.origin["client_auth"]
                plan.problems.add(plan.ingress.ref, "Warning", "AnnotationIgnored", annotation_field(key),
                                  "client-auth needs client-auth-secret (the CA to verify against); ignored")
            for setting in ("client_auth_match_cn", "client_auth_error_page"):
                if setting in settings.origin:
                    plan.problems.add(plan.ingress.ref, "Warning", "AnnotationIgnored",
                                      annotation_field(settings.origin[setting]),
                                      "has no effect without client certificate auth (client-auth-secret); ignored")
            return True, None
        bundle = self._ca(plan, settings.client_auth_secret, "client CA")
        if bundle is None:
            return False, None
        return True, ClientAuth(
            ca_id=bundle.id,
            mode=settings.client_auth or "required",
            verify_depth=settings.client_auth_depth or 1,
            forward_headers=bool(settings.client_cert_headers),
            match_cn=settings.client_auth_match_cn or "",
            error_page=settings.client_auth_error_page or "",
        )

    def _plan_http(self, plan: Plan) -> None:
        ing, settings = plan.ingress, plan.settings
        rule_hosts = sorted({r.host for r in ing.rules if r.host})
        if plan.mode != HTTP_ONLY:
            usable, client_auth = self._client_auth(plan)
            if not usable:
                plan.problems.add(ing.ref, "Error", "IngressSkipped", annotation_field(
                    settings.client_auth_secret.annotation if settings.client_auth_secret else ""),
                    "Ingress not served: client certificate auth is requested but its CA is unusable (fail closed)")
                return
            certs: dict[str, str | None] = {}
            for entry in ing.tls:
                cert = self._certificate(plan, entry.secret_name, f"{entry.field}.secretName") \
                    if entry.secret_name else None
                for host in entry.hosts or tuple(rule_hosts):
                    if cert is None and entry.secret_name:
                        plan.problems.add(ing.ref, "Warning", "DefaultCertificateUsed", f"{entry.field}.secretName",
                                          f"host {host} is served with the default certificate until the Secret "
                                          "is fixed")
                    elif cert is not None and not covers(cert.names, host):
                        plan.problems.add(ing.ref, "Warning", "CertificateNameMismatch", f"{entry.field}.hosts",
                                          f"certificate in Secret {entry.secret_name} does not cover {host} "
                                          f"(names: {', '.join(cert.names) or 'none'})")
                    certs.setdefault(host, cert.id if cert else None)
            if not ing.tls and settings.mode is not None:
                for host in rule_hosts:
                    certs[host] = None
                if rule_hosts:
                    plan.problems.add(ing.ref, "Warning", "DefaultCertificateUsed", "spec.tls",
                                      f"tls-mode {plan.mode} without spec.tls: hosts are served with the default "
                                      "certificate")
            for host, cert_id in certs.items():
                plan.tls_rows[host] = TLSHost(
                    host, "terminate", certificate_id=cert_id, min_version=settings.tls_min_version or "1.2",
                    **host_limits(settings),
                    client_auth=client_auth, ciphers=settings.tls_ciphers or "",
                    prefer_server_ciphers=settings.tls_prefer_server_ciphers is not False, source=str(ing.ref),
                    http2=settings.http2 is not False,
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
                plan.fallback = route  # unmatched paths of this Ingress's own hosts (see merge.Tables.fallbacks)
                plan.hosts.update(rule_hosts)

    @staticmethod
    def _servable_hosts(ingress: Ingress, problems: Problems) -> Ingress:
        """The Ingress without the rules and TLS hosts the data plane would refuse, each reported.

        One bad host name must cost only its own rule: the data plane refuses a whole snapshot for it.
        """
        rules = []
        for rule in ingress.rules:
            refused = conformance.host_problems(rule.host, tls=False)
            if refused:
                problems.add(ingress.ref, "Error", "InvalidHost", f"{rule.field}.host",
                             f"rule not served: {'; '.join(refused)}")
            else:
                rules.append(rule)
        tls = []
        for entry in ingress.tls:
            hosts = []
            for host in entry.hosts:
                refused = conformance.host_problems(host, tls=True)
                if refused:
                    problems.add(ingress.ref, "Error", "InvalidHost", f"{entry.field}.hosts",
                                 f"TLS host not served: {'; '.join(refused)}")
                else:
                    hosts.append(host)
            if hosts or not entry.hosts:  # an entry left without hosts must not widen to every rule host
                tls.append(replace(entry, hosts=tuple(hosts)))
        if len(rules) == len(ingress.rules) and tls == list(ingress.tls):
            return ingress
        return replace(ingress, rules=tuple(rules), tls=tuple(tls))

    def _refuse_tls_rows(self, plan: Plan) -> bool:
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
                where = annotation_field(plan.settings.origin[setting]) if setting else "metadata.annotations"
                plan.problems.add(ing.ref, "Error", "IngressSkipped", where,
                                  f"Ingress not served, the data plane would refuse its TLS settings: {text}")
                plan.tls_rows.clear()
                plan.hosts.clear()
                return True
        return False

    def _checked_route(self, plan: Plan, route: Route | None, where: str) -> Route | None:
        if route is None:
            return None
        refused = conformance.route_problems(route)
        if refused:
            plan.problems.add(plan.ingress.ref, "Error", "InvalidPath", where,
                              f"path not served, the data plane would refuse it: {'; '.join(refused)}")
            return None
        return route

    def _route(self, plan: Plan, path: str, path_type: str, backend: BackendRef | None, where: str) -> Route | None:
        ing = plan.ingress
        if path_type not in ("Exact", "Prefix", "ImplementationSpecific"):
            plan.problems.add(ing.ref, "Error", "InvalidPath", f"{where}.pathType",
                              f"unknown pathType {path_type!r}; path skipped")
            return None
        if not path.startswith("/") or any(c.isspace() or ord(c) < 0x20 or c in "{};" for c in path):
            plan.problems.add(ing.ref, "Error", "InvalidPath", f"{where}.path",
                              f"path {path!r} must start with / and hold no spaces or control characters; skipped")
            return None
        if backend is None:
            return None
        pool = self._pool(plan, backend)
        if pool is None:
            return None
        kind: PathType = "Exact" if path_type == "Exact" else "Prefix"
        if kind == "Prefix" and len(path) > 1:
            path = path.rstrip("/") or "/"
        body = plan.settings.max_body_size
        return Route(path, kind, pool.id, **route_limits(plan.settings), max_body_size=-1 if body is None else body,
                     access_log=plan.settings.access_log is not False, source=str(ing.ref))

