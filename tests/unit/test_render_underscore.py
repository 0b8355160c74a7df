"""``portcullis.io/allow-underscore-headers`` reaches the snapshot's virtual host (oldest Ingress wins)."""

from __future__ import annotations

from dataplane.snapshot import Snapshot
from tests.unit import objects as k

KEY = "portcullis.io/allow-underscore-headers"


run = k.rendered  # render as the controller does (tests/unit/objects.py)


def allowed(snapshot: Snapshot, host: str) -> bool:
    return next(v for v in snapshot.virtual_hosts if v.host == host).allow_underscore_headers


WEB = [k.service("web"), k.endpoints("web", "10.0.0.1")]


def test_default_off_and_annotation_turns_it_on() -> None:
    snap, _ = run(k.ingress("a", host="a.example.com"), *WEB)
    assert allowed(snap, "a.example.com") is False
    snap, problems = run(k.ingress("a", host="a.example.com", annotations={KEY: "true"}), *WEB)
    assert allowed(snap, "a.example.com") is True
    assert not [p for p in problems if KEY in p.field]


def test_invalid_value_is_a_problem_and_the_default_applies() -> None:
    snap, problems = run(k.ingress("a", host="a.example.com", annotations={KEY: "sometimes"}), *WEB)
    assert allowed(snap, "a.example.com") is False
    assert any(p.reason == "InvalidAnnotation" and KEY in p.field for p in problems)


def test_oldest_ingress_decides_for_a_shared_host() -> None:
    old = k.ingress("old", host="a.example.com", annotations={KEY: "false"},
                    paths=[("/old", "Prefix", "web", 80)], created="2026-01-01T00:00:00Z")
    young = k.ingress("young", host="a.example.com", annotations={KEY: "true"},
                      paths=[("/young", "Prefix", "web", 80)], created="2026-02-01T00:00:00Z")
    snap, _ = run(young, old, *WEB)
    assert allowed(snap, "a.example.com") is False
