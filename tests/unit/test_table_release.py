"""A replaced routing table is freed by reference counting alone: its routes form no cycle with their virtual host,
so the collector frozen at every apply (``dataplane/gc_pause.py``) cannot keep them for good."""

from __future__ import annotations

import gc
import weakref

from dataplane.http.settings import HTTPSettings
from dataplane.http.table import Forward, build_http_table
from dataplane.metrics import Metrics
from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.snapshot import Endpoint, Pool, Route, Snapshot, VirtualHost


def snapshot(generation: int, host: str) -> Snapshot:
    pool = Pool("team/app:80", (Endpoint("127.0.0.1", 9),))
    return Snapshot(generation=generation, pools=(pool,),
                    virtual_hosts=(VirtualHost(host, (Route("/", "Prefix", pool.id, source="Ingress team/app"),
                                                      Route("/api", "Exact", pool.id))),))


def test_table_entries_are_freed_without_the_cyclic_collector() -> None:
    table = build_http_table(snapshot(1, "a.test"), None, Metrics(), HTTPSettings())
    entry = table.vhost("a.test")
    assert entry is not None
    forward = entry.match("/x")
    assert isinstance(forward, Forward) and forward.vhost.label == entry.label  # what the engine reads of it
    refs = [weakref.ref(entry), weakref.ref(forward.vhost)]
    was = gc.isenabled()
    gc.disable()
    try:
        del table, entry, forward
        assert [r() for r in refs] == [None, None]
    finally:
        if was:
            gc.enable()


def test_applies_free_the_previous_routes() -> None:
    plane = DataPlane(DataPlaneConfig(admin_enabled=False))
    assert plane.apply(snapshot(1, "old.test")) == []
    entry = plane._table_ref.table.vhost("old.test")
    assert entry is not None
    gone = weakref.ref(entry)
    del entry
    for generation, host in ((2, "new.test"), (3, "newer.test")):
        assert plane.apply(snapshot(generation, host)) == []
    assert gone() is None
