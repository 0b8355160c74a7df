"""The chart against a real kube-apiserver (the e2e rig, or the cluster ``KUBECONFIG`` names): every rendered
object passes the API server's own validation (server-side apply, dry run, strict field validation), and a real
`helm install` + `helm upgrade` keeps the generated credentials (Helm's `lookup` reads them back)."""

from __future__ import annotations

import base64
import copy
import uuid
from collections.abc import Iterator
from typing import Any

import helm_python
import pytest
from kubernetes.client.exceptions import ApiException

from controller.manifests import load_paths
from e2e.conftest import cluster  # noqa: F401  (the rig fixture: brings the rig up, shares it, tears it down)
from e2e.kube import Cluster, Kube, wait_for
from tests.chart.rendering import ROOT, Obj, all_value_sets, chart, render

pytestmark = pytest.mark.e2e

FIELD_MANAGER = "portcullis-chart-test"


def stand_in_crd(group: str, kind: str, scope: str = "Namespaced") -> Obj:
    """A schema-less CRD so the API server accepts a third party's apiVersion/kind (Prometheus Operator's
    ServiceMonitor, cert-manager's Certificate): their fields are those projects' business."""
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()},
            "scope": scope,
            "versions": [{"name": "v1", "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": {"type": "object",
                                                         "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }


def ensure_kind(kube: Kube, group: str, kind: str, scope: str = "Namespaced") -> None:
    kube.apply(stand_in_crd(group, kind, scope))

    def served() -> Any:
        kube.dynamic.resources.invalidate_cache()
        return kube.resource(f"{group}/v1", kind)

    wait_for(f"the {kind} CRD is served", served, timeout=30, interval=0.5)


def dry_run_apply(kube: Kube, obj: Obj) -> Any:
    """Server-side apply with dryRun=All and fieldValidation=Strict: full admission and schema checks, no write."""
    resource = kube.resource(obj["apiVersion"], obj["kind"])
    meta = obj["metadata"]
    path = resource.path(name=meta["name"], namespace=meta.get("namespace") if resource.namespaced else None)
    return kube.dynamic.request(
        "patch", path, body=obj, query_params=[("fieldValidation", "Strict")], dry_run="All",
        field_manager=FIELD_MANAGER, force_conflicts=True, content_type="application/apply-patch+yaml",
    )


@pytest.fixture
def namespaces(cluster: Cluster) -> Iterator[list[str]]:  # noqa: F811
    """Three fresh namespaces (release, team a, team b), deleted afterwards."""
    base = f"chart-{uuid.uuid4().hex[:8]}"
    names = [base, f"{base}-a", f"{base}-b"]
    for name in names:
        cluster.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield names
    for name in names:
        cluster.kube.delete("v1", "Namespace", name)


def localised(values: Obj, names: list[str]) -> Obj:
    """Scenario values with their namespaces and cluster-scoped names made private to this test run."""
    values = copy.deepcopy(values)
    _, team_a, team_b = names
    if values.get("watchNamespaces"):
        values["watchNamespaces"] = [team_a, team_b]
        if values.get("defaultCertificate"):
            values["defaultCertificate"] = f"{team_a}/{values['defaultCertificate'].split('/', 1)[1]}"
    values.setdefault("ingressClass", {})["name"] = names[0]
    return values


@pytest.mark.parametrize("scenario", sorted(all_value_sets()))
def test_every_rendered_object_passes_server_side_dry_run(cluster: Cluster, namespaces: list[str],  # noqa: F811
                                                          scenario: str) -> None:
    kube = cluster.kube
    m = render(localised(all_value_sets()[scenario], namespaces), namespace=namespaces[0], name=namespaces[0])
    if m.of_kind("ServiceMonitor"):
        ensure_kind(kube, "monitoring.coreos.com", "ServiceMonitor")
    accepted = []
    for obj in m.objects:
        try:
            dry_run_apply(kube, obj)
        except ApiException as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} rejected by the API server: {exc.body}")
        accepted.append(obj["kind"])
    assert "Deployment" in accepted and "Service" in accepted


def test_the_dry_run_rejects_what_the_api_server_would(cluster: Cluster, namespaces: list[str]) -> None:  # noqa: F811
    """The check above can fail: an unknown field and an invalid value are refused by the same call."""
    m = render(namespace=namespaces[0], name=namespaces[0])
    deployment = copy.deepcopy(m.workload("dataplane"))
    deployment["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(ApiException) as unknown:
        dry_run_apply(cluster.kube, deployment)
    # Server-side apply reports an undeclared field as 500 "failed to create typed patch object".
    assert 'portz: field not declared in schema' in str(unknown.value.body)
    service = copy.deepcopy(m.get("Service", f"{namespaces[0]}-portcullis-dataplane"))
    service["spec"]["externalTrafficPolicy"] = "Nearest"
    with pytest.raises(ApiException) as invalid:
        dry_run_apply(cluster.kube, service)
    assert invalid.value.status == 422 and "externalTrafficPolicy" in str(invalid.value.body)


def _secret_data(kube: Kube, name: str, namespace: str) -> dict[str, str]:
    secret = kube.get("v1", "Secret", name, namespace)
    assert secret is not None, f"Secret {namespace}/{name} missing"
    return dict(secret.to_dict()["data"])


def test_install_then_upgrade_keeps_the_generated_credentials(cluster: Cluster,  # noqa: F811
                                                              namespaces: list[str]) -> None:
    kube = cluster.kube
    ns = release = namespaces[0]
    values = {
        "ingressClass": {"name": release},
        "watchNamespaces": [ns],  # the webhook then only covers this namespace
        "webhook": {"enabled": True},
    }
    prefix = f"{release}-portcullis"  # the release name does not contain the chart name
    push_name, webhook_name = f"{prefix}-push", f"{prefix}-webhook-cert"
    with helm_python.Config(kubeconfig_path=cluster.kubeconfig, namespace=ns) as cfg:
        try:
            cfg.install(chart(), release, values, namespace=ns, timeout=120)
            push = _secret_data(kube, push_name, ns)
            hook = _secret_data(kube, webhook_name, ns)
            assert len(base64.b64decode(push["token"])) == 48

            # Offline, every render differs; with the live Secret in place, lookup hands it back unchanged.
            live_render = cfg.render(chart(), values, name=release, namespace=ns, is_upgrade=True)
            assert push["token"] in live_render["portcullis/templates/push-secret.yaml"]

            cfg.upgrade(chart(), release, {**values, "dataplane": {"replicas": 3}}, namespace=ns, timeout=120)
            assert _secret_data(kube, push_name, ns) == push
            assert _secret_data(kube, webhook_name, ns) == hook
            webhook = kube.get("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration",
                               f"{prefix}-webhook")
            assert webhook is not None
            assert webhook.to_dict()["webhooks"][0]["clientConfig"]["caBundle"] == hook["ca.crt"]
            dataplane = kube.get("apps/v1", "Deployment", f"{prefix}-dataplane", ns)
            assert dataplane is not None and dataplane.to_dict()["spec"]["replicas"] == 3
            assert [r["revision"] for r in cfg.history(release)] == [1, 2]
        finally:
            cfg.uninstall(release, ignore_not_found=True, timeout=120)
    assert kube.get("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", f"{prefix}-webhook") is None


def test_cluster_examples_pass_server_side_dry_run(cluster: Cluster, namespaces: list[str]) -> None:  # noqa: F811
    kube = cluster.kube
    ensure_kind(kube, "cert-manager.io", "Certificate")
    ensure_kind(kube, "cert-manager.io", "ClusterIssuer", scope="Cluster")
    objects = load_paths([str(ROOT / "deploy" / "cluster-examples")])
    assert {o["kind"] for o in objects} >= {"Ingress", "Service", "Certificate", "ClusterIssuer", "Namespace"}
    for obj in objects:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        if obj["kind"] == "Namespace":
            meta["name"] = f"{namespaces[0]}-{meta['name']}"  # dry run: validated, never created
        elif "namespace" in meta:
            meta["namespace"] = namespaces[0]
        try:
            dry_run_apply(kube, obj)
        except ApiException as exc:
            pytest.fail(f"{obj['kind']} {meta['name']} rejected by the API server: {exc.body}")
