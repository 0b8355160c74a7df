"""A read timeout the Ingress sets reaches ``Pool.upgrade_idle_timeout`` (issue 20 item 7): it bounds the silence of
upgraded (WebSocket) connections too, as ingress-nginx's ``proxy-read-timeout`` does; unset, the pool leaves it to
the data plane's ``--upgrade-idle-timeout``."""

from __future__ import annotations

import pytest

from dataplane.snapshot import Pool, Snapshot, validate
from tests.unit import objects as k

NGINX = "nginx.ingress.kubernetes.io/"
NATIVE = "portcullis.io/"
WEB = [k.service("web"), k.endpoints("web", "10.0.0.1")]


run = k.rendered  # render as the controller does (tests/unit/objects.py)


def pool_of(snap: Snapshot, host: str) -> Pool:
    route = next(v for v in snap.virtual_hosts if v.host == host).routes[0]
    pool = snap.pool(route.pool_id)
    assert pool is not None
    return pool


@pytest.mark.parametrize(("key", "value", "seconds"), [
    (NGINX + "proxy-read-timeout", "86400", 86400.0),  # long-lived sockets, as users set it for ingress-nginx
    (NGINX + "proxy-read-timeout", "60", 60.0),  # ingress-nginx's default, set explicitly: idle sockets go
    (NATIVE + "read-timeout", "90s", 90.0),
    (NATIVE + "read-timeout", "168h", 604800.0),
])
def test_a_read_timeout_the_ingress_sets_bounds_its_upgraded_connections(key: str, value: str,
                                                                          seconds: float) -> None:
    snap, problems = run(k.ingress("a", annotations={key: value}), *WEB)
    assert not problems, problems
    pool = pool_of(snap, "a.example.com")
    assert (pool.read_timeout, pool.upgrade_idle_timeout) == (seconds, seconds)


def test_unset_the_data_plane_flag_decides_and_an_explicit_default_is_a_pool_of_its_own() -> None:
    snap, problems = run(k.ingress("a", host="unset.example.com"),
                         k.ingress("b", host="sixty.example.com", annotations={NGINX + "proxy-read-timeout": "60"}),
                         *WEB)
    assert not problems, problems
    unset, sixty = pool_of(snap, "unset.example.com"), pool_of(snap, "sixty.example.com")
    assert (unset.read_timeout, unset.upgrade_idle_timeout) == (60.0, None)
    assert (sixty.read_timeout, sixty.upgrade_idle_timeout) == (60.0, 60.0)
    assert unset.id == f"{k.NS}/web:80" and sixty.id.startswith(f"{k.NS}/web:80~")


@pytest.mark.parametrize(("key", "value"), [
    (NGINX + "proxy-read-timeout", "604801"), (NATIVE + "read-timeout", "169h"),
    (NGINX + "proxy-connect-timeout", "3601"), (NGINX + "proxy-send-timeout", "86400"),  # other timeouts: 1 h
])
def test_past_the_bounds_a_timeout_is_refused_and_ignored(key: str, value: str) -> None:
    snap, problems = run(k.ingress("a", annotations={key: value}), *WEB)
    assert [(p.reason, p.field) for p in problems] == [("InvalidAnnotation", f"metadata.annotations[{key}]")]
    pool = pool_of(snap, "a.example.com")
    assert (pool.read_timeout, pool.connect_timeout, pool.send_timeout, pool.upgrade_idle_timeout) == \
        (60.0, 5.0, 60.0, None)


def test_the_snapshot_field_is_optional_and_positive() -> None:
    """A snapshot without the field (a controller from before it) parses with None; zero or less is refused."""
    snap, _ = run(k.ingress("a", annotations={NGINX + "proxy-read-timeout": "60"}), *WEB)
    data = snap.to_dict()
    for pool in data["pools"]:
        del pool["upgrade_idle_timeout"]
    assert {p.upgrade_idle_timeout for p in Snapshot.from_dict(data).pools} == {None}
    refused = Snapshot(pools=(Pool("p", upgrade_idle_timeout=0.0),)).canonical()
    assert validate(refused) == ["pool 'p': timeouts must be positive"]
