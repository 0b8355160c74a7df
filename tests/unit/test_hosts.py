"""Host matching is written once (``dataplane.hosts.HostTable``): the SNI row the edge hands a
connection and the SNI row the HTTP engine derives from the Host header must always agree, or the
421 check (Host selects another TLS row than the handshake) refuses good requests or lets bad ones
through. Checked against a plain model of the rule for arbitrary configurations and names."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.clienthello import Malformed, _host_name
from dataplane.hosts import HostTable
from dataplane.http.settings import HTTPSettings
from dataplane.http.table import build_http_table, host_name
from dataplane.metrics import Metrics
from dataplane.snapshot import Route, Snapshot, TLSHost, VirtualHost
from dataplane.tls import build_tls_table, generate_fallback_certificate

FALLBACK = generate_fallback_certificate()
METRICS = Metrics()

# Few distinct labels, so configured names and queried names collide often.
label = st.sampled_from(["a", "b", "ex", "com", "x-1"])
name = st.lists(label, min_size=1, max_size=4).map(".".join)
configured = st.one_of(name, st.lists(label, min_size=2, max_size=3).map(lambda ls: "*." + ".".join(ls)))
# What a client may send: any case, maybe a trailing dot, maybe nothing at all.
query = st.tuples(st.lists(label, min_size=0, max_size=5).map(".".join), st.booleans(), st.booleans()).map(
    lambda t: (t[0].upper() if t[1] else t[0]) + ("." if t[2] and t[0] else ""))


def model(rows: set[str], q: str, default: bool) -> str | None:
    """The rule, spelled out: exact, else ``*.`` + everything after the first label, else default."""
    if q in rows and q:
        return q
    first, dot, parent = q.partition(".")
    if first and dot and parent and "*." + parent in rows:
        return "*." + parent
    return "" if default else None


@settings(max_examples=300, deadline=None)
@given(st.sets(configured, max_size=8), query, st.booleans())
def test_sni_row_and_host_row_agree(hosts: set[str], raw: str, with_default: bool) -> None:
    snap = Snapshot(
        tls_hosts=tuple(TLSHost(h, "terminate") for h in sorted(hosts)),
        virtual_hosts=tuple(VirtualHost(h, (Route("/", "Prefix", "p"),), tls=True) for h in sorted(hosts))
        + ((VirtualHost("", (Route("/", "Prefix", "p"),)),) if with_default else ()),
    )
    tls, errors = build_tls_table(snap, FALLBACK)
    assert tls is not None, errors
    http = build_http_table(snap, None, METRICS, HTTPSettings())

    sni = _host_name(raw.encode()) if raw else None  # what the edge routes on
    if isinstance(sni, Malformed):
        return  # the edge refuses the handshake; nothing to agree with
    host = host_name(raw.encode())  # what the HTTP engine routes on
    sni_row = tls.lookup(sni)
    host_row = http.tls_row(host)
    assert (sni_row.host if sni_row else None) == (host_row.host if host_row else None)
    assert (sni_row.host if sni_row else None) == model(hosts, host, default=False)
    vhost = http.vhost(host)
    assert (vhost.host if vhost else None) == model(hosts, host, default=with_default)


def test_wildcard_is_one_label_and_default_only_when_allowed() -> None:
    rows = [("*.example.com", 1), ("example.com", 2), ("", 3)]
    with_default = HostTable(rows, allow_default=True)
    assert with_default.lookup("a.example.com") == 1
    assert with_default.lookup("a.b.example.com") == 3  # two labels: not the wildcard
    assert with_default.lookup("example.com") == 2
    assert with_default.lookup(None) == 3
    sni = HostTable(rows)
    assert sni.lookup("a.b.example.com") is None
    assert sni.lookup("") is None
    assert sni.lookup(".example.com") is None  # empty first label is not a wildcard match
    assert len(sni) == 2 and len(with_default) == 3
