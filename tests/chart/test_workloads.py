"""Pods, probes, ports, Services and the flags the chart runs, checked against the real CLI parsers."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

import pytest

from tests.chart.rendering import (
    NAMESPACE,
    Manifest,
    Obj,
    all_value_sets,
    container,
    labels_match,
    mounted_secret_files,
    pod_spec,
    render,
    scenarios,
    walk,
)

SCENARIOS = sorted(all_value_sets())


def parse(component: str, args: list[str]) -> argparse.Namespace:
    """Parse a container's args with the very parser `portcullis <component>` uses; unknown flags fail."""
    module = importlib.import_module({"controller": "controller.operator", "dataplane": "dataplane.server"}[component])
    parser = argparse.ArgumentParser(prog=f"portcullis {component}", exit_on_error=False)
    module.add_arguments(parser)
    assert args[0] == component
    namespace, unknown = parser.parse_known_args(args[1:])
    assert unknown == [], f"{component} does not know {unknown}"
    return namespace


def ref(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    return namespace, name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_are_hardened(scenario: str) -> None:
    m = render(all_value_sets()[scenario])
    assert len(m.workloads()) == 2
    for workload in m.workloads():
        spec = pod_spec(workload)
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)
        assert all("hostPath" not in v for v in spec["volumes"])
        c = container(workload)
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["privileged"] is False
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert set(c["resources"]["requests"]) >= {"cpu", "memory"}, workload["metadata"]["name"]
        assert "memory" in c["resources"]["limits"], workload["metadata"]["name"]
        # The controller has no CPU limit: a quota would throttle the burst each change causes (values.yaml).
        assert ("cpu" in c["resources"]["limits"]) == (workload["metadata"]["name"].endswith("dataplane"))
        # A read-only root needs a writable /tmp for Python and OpenSSL.
        assert any(mount["mountPath"] == "/tmp" for mount in c["volumeMounts"])


def test_identity_defaults_and_platform_assigned_uids() -> None:
    default = pod_spec(render().workload("dataplane"))["securityContext"]
    assert (default["runAsUser"], default["runAsGroup"], default["fsGroup"]) == (65532, 65532, 65532)
    openshift = pod_spec(render(scenarios()["minimal-existing-secret-values"]).workload("dataplane"))
    assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(openshift["securityContext"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_dataplane_runs_the_contract_flags_and_can_read_its_files(scenario: str) -> None:
    m = render(all_value_sets()[scenario])
    dataplane = m.workload("dataplane")
    c = container(dataplane)
    args = parse("dataplane", c["args"])
    assert (args.bind, args.https_port, args.http_port, args.admin_port) == ("0.0.0.0", 8443, 8080, 9901)
    files = mounted_secret_files(dataplane)
    secret = files[args.admin_token_file][0]
    assert files[args.admin_token_file] == (secret, "token")
    assert files[args.admin_cert_file] == (secret, "tls.crt")
    assert files[args.admin_key_file] == (secret, "tls.key")
    assert "ca.crt" not in {key for _, key in files.values()}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_controller_runs_the_contract_flags_and_points_at_real_objects(scenario: str) -> None:
    values = all_value_sets()[scenario]
    m = render(values)
    controller = m.workload("controller")
    c = container(controller)
    args = parse("controller", c["args"])
    ingress_class = m.maybe("IngressClass", args.ingress_class)
    assert ingress_class is not None and ingress_class["spec"]["controller"] == args.controller_name

    # The push target: a headless Service listing not-ready data-plane pods on the admin port.
    ns, name = ref(args.dataplane_service)
    assert ns == NAMESPACE
    admin = m.get("Service", name, ns)
    assert admin["spec"]["clusterIP"] == "None"
    assert admin["spec"]["publishNotReadyAddresses"] is True
    pod_labels = m.workload("dataplane")["spec"]["template"]["metadata"]["labels"]
    assert labels_match(admin["spec"]["selector"], pod_labels)
    assert [(p["port"], p["targetPort"]) for p in admin["spec"]["ports"]] == [(args.dataplane_admin_port, "admin")]
    assert args.push_server_name == "portcullis-dataplane"

    # The controller holds the token and the CA, never the data plane's private key.
    files = mounted_secret_files(controller)
    secret = files[args.push_token_file][0]
    assert files[args.push_token_file] == (secret, "token")
    assert files[args.push_ca_file] == (secret, "ca.crt")
    assert {key for name, key in files.values() if name == secret} == {"token", "ca.crt"}
    assert secret == mounted_secret_files(m.workload("dataplane"))[
        parse("dataplane", container(m.workload("dataplane"))["args"]).admin_token_file][0]

    if args.publish_service:
        publish_ns, publish_name = ref(args.publish_service)
        assert m.get("Service", publish_name, publish_ns)["spec"]["type"] in ("LoadBalancer", "NodePort", "ClusterIP")
    else:
        assert args.publish_address
    if args.leader_election:
        assert args.lease_namespace == NAMESPACE
    health = {p["name"]: p["containerPort"] for p in c["ports"]}["health"]
    assert health == args.health_port
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_dataplane_ports_probes_and_service() -> None:
    m = render()
    dataplane = m.workload("dataplane")
    assert dataplane["kind"] == "Deployment" and dataplane["spec"]["replicas"] == 2
    c = container(dataplane)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"https": 8443, "http": 8080, "admin": 9901}
    # Ready only after the first snapshot: /readyz on the (TLS) admin listener.
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin", "scheme": "HTTPS"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin", "scheme": "HTTPS"}
    svc = m.get("Service", "portcullis-dataplane", NAMESPACE)
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Cluster"
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("https", 443, "https"), ("http", 80, "http")]
    assert labels_match(svc["spec"]["selector"], dataplane["spec"]["template"]["metadata"]["labels"])
    assert not labels_match(svc["spec"]["selector"], m.workload("controller")["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_termination_is_long_enough_to_drain(scenario: str) -> None:
    m = render(all_value_sets()[scenario])
    dataplane = m.workload("dataplane")
    spec, c = pod_spec(dataplane), container(dataplane)
    drain = parse("dataplane", c["args"]).drain_timeout
    pre_stop = c.get("lifecycle", {}).get("preStop")
    sleep = 0
    if pre_stop:
        command = pre_stop["exec"]["command"]
        assert command[:2] == ["python", "-c"]
        sleep = int(command[2].rsplit("(", 1)[1].rstrip(")"))
        assert sleep > 0
    assert spec["terminationGracePeriodSeconds"] > sleep + drain
    if dataplane["kind"] == "Deployment":
        # Surge first: a rollout never takes serving capacity away before the new pod is ready.
        assert dataplane["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_daemonset_nodeport_with_local_traffic_policy() -> None:
    m = render(scenarios()["daemonset-nodeport-local-values"])
    dataplane = m.workload("dataplane")
    assert dataplane["kind"] == "DaemonSet"
    assert "replicas" not in dataplane["spec"]
    svc = m.get("Service", "portcullis-dataplane", NAMESPACE)
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert {p["name"]: p["nodePort"] for p in svc["spec"]["ports"]} == {"https": 30443, "http": 30080}
    # The same pod template as the Deployment form.
    deployment = render().workload("dataplane")
    strip = {"tolerations"}
    assert {k: v for k, v in pod_spec(dataplane).items() if k not in strip} == pod_spec(deployment)


def test_pdb_and_hpa() -> None:
    m = render()
    pdb = m.get("PodDisruptionBudget", "portcullis-dataplane", NAMESPACE)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert labels_match(pdb["spec"]["selector"]["matchLabels"],
                        m.workload("dataplane")["spec"]["template"]["metadata"]["labels"])
    assert m.of_kind("HorizontalPodAutoscaler") == []

    ha = render(scenarios()["ha-webhook-monitoring-values"])
    hpa = ha.get("HorizontalPodAutoscaler", "portcullis-dataplane", NAMESPACE)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "portcullis-dataplane"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    # The HPA owns the replica count: the Deployment must not fight it on every upgrade.
    assert "replicas" not in ha.workload("dataplane")["spec"]
    assert ha.workload("controller")["spec"]["replicas"] == 2


def _policy_rules(m: Manifest) -> list[Obj]:
    policy = m.get("NetworkPolicy", "portcullis-dataplane", NAMESPACE)
    assert labels_match(policy["spec"]["podSelector"]["matchLabels"],
                        m.workload("dataplane")["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    return list(policy["spec"]["ingress"])


def test_network_policy_keeps_the_admin_port_to_the_controller() -> None:
    m = render()
    rules = _policy_rules(m)
    open_rules = [r for r in rules if "from" not in r]
    assert [sorted(p["port"] for p in r["ports"]) for r in open_rules] == [["http", "https"]]
    admin_rules = [r for r in rules if any(p["port"] == "admin" for p in r["ports"])]
    assert len(admin_rules) == 1 and [p["port"] for p in admin_rules[0]["ports"]] == ["admin"]
    peers = admin_rules[0]["from"]
    assert len(peers) == 1 and set(peers[0]) == {"podSelector"}
    controller_labels = m.workload("controller")["spec"]["template"]["metadata"]["labels"]
    assert labels_match(peers[0]["podSelector"]["matchLabels"], controller_labels)
    assert not labels_match(peers[0]["podSelector"]["matchLabels"],
                            m.workload("dataplane")["spec"]["template"]["metadata"]["labels"])

    ha = render(scenarios()["ha-webhook-monitoring-values"])
    admin_peers = next(r for r in _policy_rules(ha) if "from" in r)["from"]
    assert len(admin_peers) == 2 and "namespaceSelector" in admin_peers[1]
    assert render({"networkPolicy": {"enabled": False}}).of_kind("NetworkPolicy") == []


def test_ingress_class_and_default_marker() -> None:
    cls = render().get("IngressClass", "portcullis")
    assert cls["spec"] == {"controller": "portcullis.io/ingress-controller"}
    assert "annotations" not in cls["metadata"]
    default = render(scenarios()["ha-webhook-monitoring-values"]).get("IngressClass", "portcullis")
    assert default["metadata"]["annotations"] == {"ingressclass.kubernetes.io/is-default-class": "true"}
    assert render({"ingressClass": {"create": False}}).of_kind("IngressClass") == []


def test_default_certificate_and_extra_args_reach_the_controller() -> None:
    m = render({"defaultCertificate": "certs/wildcard", "controller": {"extraArgs": ["--kubeconfig="]}})
    args = parse("controller", container(m.workload("controller"))["args"])
    assert args.default_certificate == "certs/wildcard"
    assert args.kubeconfig == ""


def test_service_monitor_scrapes_the_admin_port_over_verified_tls() -> None:
    m = render(scenarios()["ha-webhook-monitoring-values"])
    sm = m.get("ServiceMonitor", "portcullis-dataplane", NAMESPACE)
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    targets = [s for s in m.of_kind("Service") if labels_match(sm["spec"]["selector"]["matchLabels"],
                                                              s["metadata"]["labels"])]
    assert [t["metadata"]["name"] for t in targets] == ["portcullis-dataplane-admin"]
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in targets[0]["spec"]["ports"]}
    assert (endpoint["scheme"], endpoint["path"]) == ("https", "/metrics")
    assert endpoint["tlsConfig"]["serverName"] == "portcullis-dataplane"
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": "portcullis-push", "key": "ca.crt"}
    assert "insecureSkipVerify" not in endpoint["tlsConfig"]
    assert render().of_kind("ServiceMonitor") == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_namespaced_object_names_its_namespace_and_selectors_find_pods(scenario: str) -> None:
    m = render(all_value_sets()[scenario])
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "IngressClass", "ValidatingWebhookConfiguration"}
    for obj in m.objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace"), obj["metadata"]["name"]
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in m.workloads()]
    for svc in m.of_kind("Service"):
        assert sum(labels_match(svc["spec"]["selector"], labels) for labels in pods) == 1, svc["metadata"]["name"]
    images = {c["image"] for node in walk([w["spec"]["template"]["spec"]["containers"] for w in m.workloads()])
              if isinstance(node, dict) and "image" in node for c in [node]}
    assert len(images) == 1, "one image runs both components"


def test_image_reference() -> None:
    assert container(render().workload("dataplane"))["image"] == "portcullis:0.1.0"
    pinned: dict[str, Any] = scenarios()["minimal-existing-secret-values"]["image"]
    assert container(render(scenarios()["minimal-existing-secret-values"]).workload("controller"))["image"] == (
        f"{pinned['repository']}@{pinned['digest']}")
