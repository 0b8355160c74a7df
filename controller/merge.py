"""Plans in, one snapshot out: the oldest-wins merge, defaultBackend fallbacks, virtual hosts.

The second half of the renderer (``controller/plan.py`` makes the plans). Plans are merged in
the order ``classes.select`` gives, oldest Ingress first, so on a host or path two Ingresses
claim, the older one wins and the younger one is told who holds it: a new Ingress can never take
traffic, weaken client auth or swap the certificate of one already serving. Host policies
(insecure-policy, HSTS, underscore headers) are the first value set on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from controller.model import Ingress
from controller.plan import Plan, Problems, annotation_field
from dataplane.snapshot import (
    CABundle,
    Certificate,
    InsecurePolicy,
    Pool,
    Route,
    Snapshot,
    TLSHost,
    TLSMode,
    VirtualHost,
)

DEFAULT_HSTS = "max-age=31536000"


@dataclass
class HostState:
    """One host as merged so far: who owns it, in which family, and the first value of each host policy."""

    owner: Ingress
    mode: TLSMode
    tls_row: TLSHost | None = None
    insecure_policy: tuple[InsecurePolicy, Ingress, str] | None = None  # value, who set it, which annotation
    hsts: tuple[str, Ingress, str] | None = None
    allow_underscore_headers: tuple[bool, Ingress, str] | None = None


def _host_tls_settings(row: TLSHost) -> tuple[object, ...]:
    """What a younger Ingress must agree on to share a host: all of it is one handshake policy."""
    return (row.client_auth, row.min_version, row.ciphers, row.prefer_server_ciphers, row.http2)


def _differing(row: TLSHost, held: TLSHost) -> str:
    """What differs, for the conflict message (``portcullis.io/http2`` named only when it is what differs)."""
    if row.http2 != held.http2 and _host_tls_settings(replace(row, http2=held.http2)) == _host_tls_settings(held):
        return "HTTP/2 offered or not, portcullis.io/http2"
    return "client auth, minimum version, ciphers"


class Tables:
    """The tables plans are merged into, oldest Ingress first; conflicts become problems here."""

    def __init__(self) -> None:
        self.problems = Problems()
        self.hosts: dict[str, HostState] = {}
        self.routes: dict[str, dict[tuple[str, str], Route]] = {}
        self.pools: dict[str, Pool] = {}
        self.certificates: dict[str, Certificate] = {}
        self.ca_bundles: dict[str, CABundle] = {}
        # (Ingress, its accepted hosts, its defaultBackend route, pool), oldest first
        self.fallbacks: list[tuple[Ingress, tuple[str, ...], Route, Pool]] = []

    def merge(self, plan: Plan) -> None:
        """Fold one plan in; a claim on a host or path an older Ingress holds loses and is reported."""
        ing = plan.ingress
        used_pools: set[str] = set()
        family: TLSMode = "passthrough" if plan.mode == "passthrough" else "terminate"
        accepted: set[str] = set()
        for host in sorted(plan.hosts):
            state = self.hosts.get(host)
            if state is None:
                self.hosts[host] = state = HostState(ing, family)
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
                                      f"host {host} already has different TLS settings "
                                      f"({_differing(row, state.tls_row)}) from older {state.owner.ref}; "
                                      "this Ingress's routes for "
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
        """Virtual hosts with their policies, and only the certificates and CAs something uses; canonical."""
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

    def _virtual_host(self, host: str, state: HostState | None, routes: tuple[Route, ...]) -> VirtualHost:
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
                              annotation_field(state.insecure_policy[2]),
                              f"insecure-policy allow on host {host} {why}; plain HTTP is redirected instead")
            policy = "redirect"
        hsts: str | None = DEFAULT_HSTS
        if state.hsts is not None:
            hsts = state.hsts[0] or None
        if state.mode == "passthrough":
            hsts = None
        return VirtualHost(host, routes, tls=True, insecure_policy=policy, hsts=hsts,
                           allow_underscore_headers=underscore)

