"""What the data plane would refuse, asked of the data plane's own validator, one object at a time.

``dataplane.snapshot.validate`` refuses a whole snapshot for one bad field, so a renderer that lets
one Ingress's bad host or setting through takes every other Ingress down with it. Instead of
re-implementing the validator's rules here (they would drift), each check wraps the single object
in a minimal snapshot, with stand-ins for what it references (certificates, CA bundles, pools are
checked where they are made), and runs ``validate`` itself. Whatever the validator learns to
refuse, the renderer refuses too, per object, and can name the Ingress and field.
"""

from __future__ import annotations

from dataplane.snapshot import (
    CABundle,
    Certificate,
    Pool,
    Route,
    Snapshot,
    TLSHost,
    VirtualHost,
    validate,
)


def _stub_certificates(*ids: str | None) -> tuple[Certificate, ...]:
    return tuple(Certificate(i, "", "") for i in sorted({i for i in ids if i}))


def _stub_cas(*ids: str | None) -> tuple[CABundle, ...]:
    return tuple(CABundle(i, "") for i in sorted({i for i in ids if i}))


def _check(snapshot: Snapshot) -> list[str]:
    return validate(snapshot, check_pem=False)


def host_problems(host: str, tls: bool) -> list[str]:
    """A rule host (``tls`` False: "" is the default virtual host) or an SNI-table name."""
    if tls:
        return _check(Snapshot(tls_hosts=(TLSHost(host, "terminate"),)))
    return _check(Snapshot(virtual_hosts=(VirtualHost(host),)))


def pool_problems(pool: Pool) -> list[str]:
    """Endpoints, balancer, timeouts, upstream TLS settings of one pool."""
    tls = pool.tls
    return _check(Snapshot(
        pools=(pool,),
        certificates=_stub_certificates(tls.client_cert_id if tls else None),
        ca_bundles=_stub_cas(tls.ca_id if tls else None),
    ))


def tls_host_problems(row: TLSHost, pool: Pool | None = None) -> list[str]:
    """One SNI-table row: its name, mode, versions, ciphers and client-auth settings.

    ``pool`` is the passthrough pool the row names (checked for having no upstream TLS); a
    terminate row needs none.
    """
    pools = (pool,) if pool is not None else ((Pool(row.pool_id),) if row.pool_id else ())
    auth = row.client_auth
    return _check(Snapshot(
        tls_hosts=(row,),
        pools=pools,
        certificates=_stub_certificates(row.certificate_id),
        ca_bundles=_stub_cas(auth.ca_id if auth else None),
    ))


def route_problems(route: Route) -> list[str]:
    """Path, path type and per-route limits (its host is checked by ``host_problems``)."""
    return _check(Snapshot(virtual_hosts=(VirtualHost("", (route,)),), pools=(Pool(route.pool_id),)))

