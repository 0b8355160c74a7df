"""``Upstream``'s idle list: at most max(``max_idle_per_endpoint``, the recent peak of exchanges in flight to
the endpoint) idle connections, the oldest closed first, and the peak forgotten at each sweep."""

from __future__ import annotations

import asyncio

from dataplane.http.settings import HTTPSettings
from dataplane.http.table import build_http_table
from dataplane.http.upstream import Upstream, UpstreamConnection
from dataplane.metrics import Metrics
from dataplane.snapshot import Endpoint
from tests.integration.http_fixtures import pool, snapshot, vhost
from tests.unit.test_http_protocol import FakeTransport

EP = Endpoint("127.0.0.1", 9)


def make_upstream(max_idle: int) -> Upstream:
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", EP)])
    table = build_http_table(snap, None, Metrics(), HTTPSettings(max_idle_per_endpoint=max_idle))
    upstream = table.upstreams["p"]
    assert isinstance(upstream, Upstream)
    return upstream


def connection(upstream: Upstream) -> tuple[UpstreamConnection, FakeTransport]:
    transport = FakeTransport()
    conn = UpstreamConnection(upstream, EP, asyncio.get_running_loop())
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def test_without_requests_in_flight_max_idle_bounds_the_pool() -> None:
    upstream = make_upstream(2)
    conns = [connection(upstream) for _ in range(5)]
    for conn, _ in conns:
        upstream.put_idle(conn)
    assert [t.closed for _, t in conns] == [True, True, True, False, False]  # the oldest went first
    upstream.close_idle()


async def test_the_peak_in_flight_is_kept_then_forgotten_at_the_sweep() -> None:
    upstream = make_upstream(2)
    conns = [connection(upstream) for _ in range(5)]
    for _ in conns:
        upstream.balancer.started(EP)
    for conn, _ in conns:  # a burst of five responses: each exchange ends, its connection goes idle
        upstream.balancer.finished(EP)
        upstream.put_idle(conn)
    assert not any(t.closed for _, t in conns)
    assert upstream.take_idle(EP) is conns[-1][0]  # the most recent first
    upstream.put_idle(conns[-1][0])
    upstream._sweep(asyncio.get_running_loop())  # none is old enough to close; the peak is measured afresh
    assert not any(t.closed for _, t in conns)
    late, late_transport = connection(upstream)
    upstream.put_idle(late)  # demand is one exchange now: over max_idle, the oldest idle one closes
    assert [t.closed for _, t in conns] == [True, False, False, False, False] and not late_transport.closed
    upstream.close_idle()
