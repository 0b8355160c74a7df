"""Per-Ingress limit state follows the applied snapshot: an Ingress that is gone takes its buckets and counter along."""

from __future__ import annotations

from dataplane.http.table import Forward
from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.snapshot import Endpoint, Pool, Route, Snapshot, TLSHost, VirtualHost

KEPT = "Ingress team/kept"


class Conn:
    """A connection handle as the edge records it: open until closed."""

    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed


def limited(name: str) -> tuple[VirtualHost, TLSHost, Pool]:
    """One Ingress: ``limit-rps`` on its route, ``limit-connections`` on a passthrough TLS row of its own."""
    source = f"Ingress team/{name}"
    pool = Pool(f"team/{name}:80", (Endpoint("127.0.0.1", 9),))
    vhost = VirtualHost(f"{name}.example.test", (Route("/", "Prefix", pool.id, source=source, limit_rps=5),))
    row = TLSHost(f"{name}-tunnel.example.test", "passthrough", pool_id=pool.id, source=source, limit_connections=3)
    return vhost, row, pool


def snapshot(generation: int, *names: str) -> Snapshot:
    parts = [limited(n) for n in names]
    return Snapshot(generation=generation, virtual_hosts=tuple(v for v, _, _ in parts),
                    tls_hosts=tuple(r for _, r, _ in parts), pools=tuple(p for _, _, p in parts))


def use_limits(plane: DataPlane, name: str, ip: str) -> None:
    """Spend a token and hold a connection, as a client of ``name`` would: the state a leak would keep."""
    vhost = plane._table_ref.table.vhost(f"{name}.example.test")
    assert vhost is not None
    forward = vhost.match("/")
    assert isinstance(forward, Forward) and forward.rate is not None
    assert forward.rate.retry_after(ip, 0.0) == 0.0
    conn_limit = plane._applied.edge.conn_limits[f"{name}-tunnel.example.test"]
    assert conn_limit.counter.admit(ip, Conn(), conn_limit.limit)


def test_limit_state_is_bounded_over_1000_create_delete_cycles() -> None:
    plane = DataPlane(DataPlaneConfig(admin_enabled=False))
    generation = 0
    for cycle in range(1000):
        generation += 1
        assert plane.apply(snapshot(generation, "kept", f"churn{cycle}")) == []
        use_limits(plane, f"churn{cycle}", f"10.0.{cycle // 256}.{cycle % 256}")
        if cycle == 0:
            use_limits(plane, "kept", "192.0.2.1")
        generation += 1
        assert plane.apply(snapshot(generation, "kept")) == []
        assert len(plane.limits) == 2, f"cycle {cycle}: state of {len(plane.limits)} limits kept"
    # What the snapshot still has keeps its state: the kept Ingress's client bucket survived 2,000 applies.
    kept = plane._table_ref.table.vhost("kept.example.test")
    assert kept is not None
    forward = kept.match("/")
    assert isinstance(forward, Forward) and forward.rate is not None
    assert len(forward.rate) == 1
    assert plane._applied.edge.conn_limits["kept-tunnel.example.test"].counter.count("192.0.2.1") == 1


def test_an_ingress_that_drops_its_limit_drops_its_state() -> None:
    plane = DataPlane(DataPlaneConfig(admin_enabled=False))
    assert plane.apply(snapshot(1, "a", "b")) == []
    use_limits(plane, "a", "192.0.2.7")
    assert len(plane.limits) == 4
    vhost, row, pool = limited("a")
    unlimited = Snapshot(generation=2, virtual_hosts=(VirtualHost(vhost.host, (Route("/", "Prefix", pool.id),)),),
                         tls_hosts=(TLSHost(row.host, "passthrough", pool_id=pool.id),), pools=(pool,))
    assert plane.apply(unlimited) == []
    assert len(plane.limits) == 0
    assert plane.apply(snapshot(3, "a")) == []  # set again: it starts afresh, the old client is not remembered
    forward = plane._table_ref.table.vhost("a.example.test").match("/")  # type: ignore[union-attr]
    assert isinstance(forward, Forward) and forward.rate is not None and len(forward.rate) == 0
