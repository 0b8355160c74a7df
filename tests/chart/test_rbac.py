"""The controller's RBAC is exactly the calls it makes, and the data plane has none at all."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from tests.chart.rendering import NAMESPACE, Manifest, Obj, all_value_sets, pod_spec, render, scenarios

Grant = tuple[str, str, str, str]  # (apiGroup, resource, verb, resourceName or "")

# The exact grants in a watched scope: kopf lists and watches the four namespaced kinds, the controller PATCHes
# Ingress status and POSTs core Events. Nothing creates, updates or deletes any user object.
WATCHED = {
    *{("", r, v, "") for r in ("secrets", "services") for v in ("get", "list", "watch")},
    *{("discovery.k8s.io", "endpointslices", v, "") for v in ("get", "list", "watch")},
    *{("networking.k8s.io", "ingresses", v, "") for v in ("get", "list", "watch")},
    ("networking.k8s.io", "ingresses/status", "patch", ""),
    ("", "events", "create", ""),
}
CLASSES = {("networking.k8s.io", "ingressclasses", v, "") for v in ("get", "list", "watch")}
LEADER = {
    ("coordination.k8s.io", "leases", "create", ""),
    ("coordination.k8s.io", "leases", "get", "portcullis-leader"),
    ("coordination.k8s.io", "leases", "update", "portcullis-leader"),
}


def grants(rules: Iterable[Obj]) -> set[Grant]:
    out: set[Grant] = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [""]:
                        out.add((group, resource, verb, name))
    return out


def bound_grants(m: Manifest, sa_name: str) -> dict[str, set[Grant]]:
    """Scope ("cluster" or a namespace) -> grants the ServiceAccount holds there, following the bindings."""
    scopes: dict[str, set[Grant]] = {}
    for binding in m.of_kind("ClusterRoleBinding") + m.of_kind("RoleBinding"):
        subjects = binding["subjects"]
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa_name and s["namespace"] == NAMESPACE
                   for s in subjects):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace", "cluster")
        role = m.get("ClusterRole", ref["name"]) if ref["kind"] == "ClusterRole" else m.get("Role", ref["name"], scope)
        scopes.setdefault(scope, set()).update(grants(role["rules"]))
    return scopes


def test_cluster_wide_mode_grants_exactly_the_calls_the_controller_makes() -> None:
    m = render()
    assert bound_grants(m, "portcullis-controller") == {"cluster": WATCHED | CLASSES, NAMESPACE: LEADER}


def test_namespaced_mode_has_nothing_cluster_wide_but_ingress_classes() -> None:
    m = render(scenarios()["namespaced-values"])
    scopes = bound_grants(m, "portcullis-controller")
    assert scopes == {
        "cluster": CLASSES,
        "team-a": WATCHED,
        "team-b": WATCHED,
        NAMESPACE: WATCHED | LEADER,  # the controller always watches its own namespace (data-plane pods)
    }
    args = m.workload("controller")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--watch-namespaces=team-a,team-b" in args


def test_without_leader_election_there_is_no_lease_access() -> None:
    m = render({"controller": {"leaderElection": {"enabled": False}}})
    assert bound_grants(m, "portcullis-controller") == {"cluster": WATCHED | CLASSES}
    assert "--no-leader-election" in m.workload("controller")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_lease_name_in_rbac_follows_the_controller_flag() -> None:
    m = render({"controller": {"leaderElection": {"leaseName": "edge-leader"}}})
    assert ("coordination.k8s.io", "leases", "update", "edge-leader") in bound_grants(
        m, "portcullis-controller")[NAMESPACE]
    assert "--lease-name=edge-leader" in m.workload("controller")["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("scenario", sorted(all_value_sets()))
def test_no_wildcards_no_writes_beyond_status_events_leases(scenario: str) -> None:
    m = render(all_value_sets()[scenario])
    every = set()
    for role in m.of_kind("ClusterRole") + m.of_kind("Role"):
        every |= grants(role["rules"])
    assert not any("*" in part for grant in every for part in grant)
    writes = {(g, r) for g, r, v, _ in every if v not in ("get", "list", "watch")}
    assert writes <= {("networking.k8s.io", "ingresses/status"), ("", "events"), ("coordination.k8s.io", "leases")}


@pytest.mark.parametrize("scenario", sorted(all_value_sets()))
def test_the_data_plane_never_gets_an_api_token(scenario: str) -> None:
    m = render(all_value_sets()[scenario])
    dataplane = m.workload("dataplane")
    spec = pod_spec(dataplane)
    assert spec["automountServiceAccountToken"] is False
    sa = m.get("ServiceAccount", spec["serviceAccountName"])
    assert sa["automountServiceAccountToken"] is False
    assert bound_grants(m, spec["serviceAccountName"]) == {}
    controller_spec = pod_spec(m.workload("controller"))
    assert controller_spec["serviceAccountName"] != spec["serviceAccountName"]
