"""The renderer, table-driven: objects in → snapshot and problems out."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.problems import Problem
from controller.render import RenderConfig
from dataplane.snapshot import Snapshot
from tests.pki import CA, unrelated_key_pem
from tests.unit import objects as k

P = "portcullis.io/"
NGINX = "nginx.ingress.kubernetes.io/"


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture(scope="module")
def pki(ca: CA) -> dict[str, Any]:
    return {
        "a": ca.issue("a.example.com"),
        "b": ca.issue("b.example.com"),
        "wild": ca.issue("*.example.com"),
        "default": ca.issue("default.example.com"),
        "expired": ca.issue("a.example.com", expired=True),
        "client": ca.issue("backend-client", client=True),
    }


run = k.rendered  # render as the controller does (tests/unit/objects.py)


def reasons(problems: list[Problem]) -> set[tuple[str, str]]:
    return {(p.severity, p.reason) for p in problems}


def web() -> list[dict[str, Any]]:
    return [k.service("web"), k.endpoints("web", "10.0.0.1", "10.0.0.2")]


def vhost(snapshot: Snapshot, host: str) -> Any:
    return next(v for v in snapshot.virtual_hosts if v.host == host)


def tls_row(snapshot: Snapshot, host: str) -> Any:
    return next(h for h in snapshot.tls_hosts if h.host == host)


# --- modes ------------------------------------------------------------------------------------


def test_http_only_ingress_routes_without_tls() -> None:
    snap, problems = run(k.ingress("shop"), *web())
    assert problems == []
    assert snap.tls_hosts == ()
    v = vhost(snap, "a.example.com")
    assert (v.tls, v.insecure_policy, v.hsts) == (False, "allow", None)
    pool = snap.pool(v.routes[0].pool_id)
    assert pool is not None and pool.tls is None
    assert {(e.address, e.port) for e in pool.endpoints} == {("10.0.0.1", 8080), ("10.0.0.2", 8080)}


def test_offload_is_the_default_with_spec_tls(pki: dict[str, Any]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls"), k.tls_secret("a-tls", pki["a"].cert_pem,
                                                                                 pki["a"].key_pem), *web())
    assert problems == []
    row = tls_row(snap, "a.example.com")
    assert row.mode == "terminate" and snap.certificate(row.certificate_id).cert_pem == pki["a"].cert_pem
    v = vhost(snap, "a.example.com")
    assert (v.tls, v.insecure_policy, v.hsts) == (True, "redirect", "max-age=31536000")
    assert snap.pool(v.routes[0].pool_id).tls is None  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["reencrypt", "bridge", "re-encrypt", "REENCRYPT"])
def test_reencrypt_verifies_backend_by_default(pki: dict[str, Any], ca: CA, value: str) -> None:
    snap, problems = run(
        k.ingress("shop", tls_secret="a-tls", annotations={P + "tls-mode": value, P + "backend-ca-secret": "bca"}),
        k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem), k.ca_secret("bca", ca.cert_pem), *web(),
    )
    assert problems == []
    pool = snap.pool(vhost(snap, "a.example.com").routes[0].pool_id)
    assert pool is not None and pool.tls is not None
    assert (pool.tls.server_name, pool.tls.verify) == ("web.shop.svc", True)
    assert snap.ca_bundles[0].id == pool.tls.ca_id and snap.ca_bundles[0].pem == ca.cert_pem


def test_reencrypt_options_server_name_client_cert_and_insecure_opt_out(pki: dict[str, Any]) -> None:
    snap, problems = run(
        k.ingress("shop", tls_secret="a-tls", annotations={
            P + "tls-mode": "reencrypt", P + "backend-server-name": "Internal.Example.Com",
            P + "backend-client-secret": "client", P + "backend-verify": "false"}),
        k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem),
        k.tls_secret("client", pki["client"].cert_pem, pki["client"].key_pem), *web(),
    )
    assert reasons(problems) == {("Warning", "InsecureBackend")}
    tls = snap.pool(vhost(snap, "a.example.com").routes[0].pool_id).tls  # type: ignore[union-attr]
    assert tls is not None and (tls.server_name, tls.verify, tls.ca_id) == ("internal.example.com", False, None)
    assert snap.certificate(tls.client_cert_id).cert_pem == pki["client"].cert_pem  # type: ignore[union-attr]


def test_reencrypt_with_missing_backend_ca_fails_closed(pki: dict[str, Any]) -> None:
    snap, problems = run(
        k.ingress("shop", tls_secret="a-tls", annotations={P + "tls-mode": "reencrypt", P + "backend-ca-secret": "no"}),
        k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem), *web(),
    )
    assert ("Error", "SecretNotFound") in reasons(problems) and ("Error", "BackendTLSUnavailable") in reasons(problems)
    assert vhost(snap, "a.example.com").routes == ()
    assert snap.pools == ()


def test_passthrough_routes_whole_host_with_proxy_protocol() -> None:
    snap, problems = run(
        k.ingress("shop", annotations={P + "tls-mode": "passthrough", P + "proxy-protocol": "v2",
                                       P + "hsts": "off"},
                  paths=[("/", "Prefix", "web", 80), ("/api", "Prefix", "web", 80)]),
        *web(),
    )
    assert reasons(problems) == {("Warning", "PathIgnored"), ("Warning", "AnnotationIgnored")}
    row = tls_row(snap, "a.example.com")
    assert row.mode == "passthrough" and row.certificate_id is None
    pool = snap.pool(row.pool_id)
    assert pool is not None and pool.proxy_protocol == "v2" and pool.tls is None
    assert snap.certificates == ()
    v = vhost(snap, "a.example.com")
    assert (v.routes, v.insecure_policy, v.hsts) == ((), "redirect", None)


def test_passthrough_needs_a_host_and_a_root_path() -> None:
    snap, problems = run(
        k.ingress("nohost", host=None, annotations={P + "tls-mode": "passthrough"}),
        k.ingress("twopaths", host="b.example.com", annotations={P + "tls-mode": "passthrough"},
                  paths=[("/x", "Prefix", "web", 80), ("/y", "Prefix", "web", 80)]),
        *web(),
    )
    assert {p.reason for p in problems} == {"PassthroughNeedsHost", "PassthroughNeedsRootPath"}
    assert snap.tls_hosts == ()


def test_passthrough_never_loads_the_tls_secret(pki: dict[str, Any]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={P + "tls-mode": "passthrough"}),
                         k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem), *web())
    assert reasons(problems) == {("Warning", "AnnotationIgnored")}
    assert snap.certificates == ()


# --- compatibility annotations ------------------------------------------------------------------


def test_nginx_backend_https_is_unverified_as_in_ingress_nginx_and_says_so(pki: dict[str, Any]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={NGINX + "backend-protocol": "HTTPS"}),
                         k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem), *web())
    warning = next(p for p in problems if p.reason == "InsecureBackend")
    assert "ingress-nginx" in warning.message and warning.field.endswith("backend-protocol]")
    assert snap.pool(vhost(snap, "a.example.com").routes[0].pool_id).tls.verify is False  # type: ignore[union-attr]


def test_nginx_proxy_ssl_annotations_verify_with_ca_and_client_cert(pki: dict[str, Any], ca: CA) -> None:
    both = k.tls_secret("proxy", pki["client"].cert_pem, pki["client"].key_pem)
    both["data"]["ca.crt"] = k.ca_secret("x", ca.cert_pem)["data"]["ca.crt"]
    snap, problems = run(
        k.ingress("shop", tls_secret="a-tls", annotations={
            NGINX + "backend-protocol": "HTTPS", NGINX + "proxy-ssl-secret": "shop/proxy",
            NGINX + "proxy-ssl-verify": "on", NGINX + "proxy-ssl-name": "api.internal",
            NGINX + "proxy-ssl-server-name": "on"}),
        k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem), both, *web(),
    )
    assert problems == []
    tls = snap.pool(vhost(snap, "a.example.com").routes[0].pool_id).tls  # type: ignore[union-attr]
    assert tls is not None and tls.verify and tls.server_name == "api.internal"
    assert tls.ca_id is not None and tls.client_cert_id is not None


def test_nginx_cross_namespace_secret_is_refused() -> None:
    _, problems = run(k.ingress("shop", annotations={NGINX + "auth-tls-secret": "other/ca"}), *web())
    bad = next(p for p in problems if p.reason == "InvalidAnnotation")
    assert "cross-namespace" in bad.message and "other/ca" in bad.message


def test_nginx_passthrough_and_redirect_and_client_auth(pki: dict[str, Any], ca: CA) -> None:
    snap, problems = run(
        k.ingress("pt", host="b.example.com", annotations={NGINX + "ssl-passthrough": "true"}),
        k.ingress("mtls", tls_secret="a-tls", annotations={
            NGINX + "ssl-redirect": "false", NGINX + "auth-tls-secret": "shop/cas",
            NGINX + "auth-tls-verify-client": "optional", NGINX + "auth-tls-verify-depth": "3",
            NGINX + "auth-tls-pass-certificate-to-upstream": "true"}),
        k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem), k.ca_secret("cas", ca.cert_pem), *web(),
    )
    assert tls_row(snap, "b.example.com").mode == "passthrough"
    auth = tls_row(snap, "a.example.com").client_auth
    assert auth is not None and (auth.mode, auth.verify_depth, auth.forward_headers) == ("optional", 3, True)
    # allow would let plain HTTP bypass the client certificate: refused with a Warning
    assert vhost(snap, "a.example.com").insecure_policy == "redirect"
    assert ("Warning", "InsecurePolicyOverridden") in reasons(problems)


def test_openshift_termination_and_destination_ca(pki: dict[str, Any], ca: CA) -> None:
    snap, problems = run(
        k.ingress("shop", tls_secret="a-tls", annotations={
            "route.openshift.io/termination": "reencrypt",
            "route.openshift.io/destination-ca-certificate-secret": "dca"}),
        k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem), k.ca_secret("dca", ca.cert_pem), *web(),
    )
    assert problems == []
    tls = snap.pool(vhost(snap, "a.example.com").routes[0].pool_id).tls  # type: ignore[union-attr]
    assert tls is not None and tls.verify and tls.ca_id == snap.ca_bundles[0].id


def test_native_annotation_wins_over_compatible_one() -> None:
    snap, _ = run(k.ingress("shop", annotations={NGINX + "ssl-passthrough": "true", P + "tls-mode": "offload"},
                            tls_hosts=["a.example.com"]), *web())
    assert tls_row(snap, "a.example.com").mode == "terminate"


# --- every annotation: valid and invalid values --------------------------------------------------

VALID = [
    (P + "insecure-policy", "deny", lambda s: vhost(s, "a.example.com").insecure_policy == "deny"),
    (P + "insecure-policy", "allow", lambda s: vhost(s, "a.example.com").insecure_policy == "allow"),
    (P + "hsts", "max-age=60; includesubdomains; preload",
     lambda s: vhost(s, "a.example.com").hsts == "max-age=60; includeSubDomains; preload"),
    (P + "hsts", "off", lambda s: vhost(s, "a.example.com").hsts is None),
    (P + "tls-min-version", "1.3", lambda s: tls_row(s, "a.example.com").min_version == "1.3"),
    (P + "load-balance", "least-conn", lambda s: s.pools[0].load_balance == "least-conn"),
    (P + "load-balance", "client-ip-hash", lambda s: s.pools[0].load_balance == "client-ip-hash"),
    (P + "connect-timeout", "1500ms", lambda s: s.pools[0].connect_timeout == 1.5),
    (P + "read-timeout", "2m", lambda s: s.pools[0].read_timeout == 120.0),
    (P + "read-timeout", "30", lambda s: s.pools[0].read_timeout == 30.0),
    (NGINX + "force-ssl-redirect", "true", lambda s: vhost(s, "a.example.com").insecure_policy == "redirect"),
]


@pytest.mark.parametrize(("key", "value", "check"), VALID, ids=[f"{k}={v}" for k, v, _ in VALID])
def test_valid_annotation_values(pki: dict[str, Any], key: str, value: str, check: Any) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={key: value}),
                         k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem), *web())
    assert problems == []
    assert check(snap)


INVALID = [
    (P + "insecure-policy", "sometimes"), (P + "hsts", "max-age=abc"), (P + "hsts", "includeSubDomains"),
    (P + "hsts", "max-age=1; bogus"), (P + "backend-ca-secret", "Bad_Name"), (P + "backend-server-name", "-x-"),
    (P + "backend-verify", "maybe"), (P + "backend-client-secret", "a/b"), (P + "client-auth-secret", "UPPER"),
    (P + "client-auth", "sometimes"), (P + "client-cert-headers", "2"), (P + "proxy-protocol", "v3"),
    (P + "tls-min-version", "1.1"), (P + "load-balance", "random"), (P + "connect-timeout", "5 s"),
    (P + "read-timeout", "2d"), (P + "read-timeout", "0s"), (NGINX + "auth-tls-verify-client", "optional-no-ca"),
    (NGINX + "auth-tls-verify-depth", "0"), (NGINX + "proxy-ssl-server-name", "off"),
    (NGINX + "ssl-redirect", "perhaps"), (NGINX + "proxy-ssl-verify", "yes please"),
]


@pytest.mark.parametrize(("key", "value"), INVALID, ids=[f"{k}={v}" for k, v in INVALID])
def test_invalid_annotation_values_are_problems_naming_annotation_and_value(key: str, value: str) -> None:
    snap, problems = run(k.ingress("shop", annotations={key: value}), *web())
    bad = [p for p in problems if p.reason == "InvalidAnnotation"]
    assert len(bad) == 1 and bad[0].severity == "Error"
    assert bad[0].field == f"metadata.annotations[{key}]" and repr(value) in bad[0].message
    assert str(bad[0].obj) == "Ingress shop/shop"
    assert vhost(snap, "a.example.com").routes, "an invalid setting is ignored; the Ingress keeps serving"


@pytest.mark.parametrize("key", [P + "tls-mode", NGINX + "backend-protocol", "route.openshift.io/termination"])
def test_invalid_mode_skips_the_ingress_but_not_others(key: str) -> None:
    snap, problems = run(k.ingress("bad", annotations={key: "GRPC-ish"}), k.ingress("good", host="b.example.com"),
                         *web())
    assert ("Error", "IngressSkipped") in reasons(problems)
    assert [v.host for v in snap.virtual_hosts] == ["b.example.com"]


def test_unknown_native_annotation_is_a_warning() -> None:
    _, problems = run(k.ingress("shop", annotations={P + "tls-mod": "passthrough"}), *web())
    assert reasons(problems) == {("Warning", "UnknownAnnotation")}


def test_settings_irrelevant_to_the_mode_are_reported() -> None:
    _, problems = run(k.ingress("shop", annotations={P + "proxy-protocol": "v1", P + "client-auth": "required"}),
                      *web())
    ignored = sorted(p.field for p in problems if p.reason == "AnnotationIgnored")
    assert ignored == [f"metadata.annotations[{P}client-auth]", f"metadata.annotations[{P}proxy-protocol]"]


# --- certificates -------------------------------------------------------------------------------


def test_wildcard_and_default_certificates(pki: dict[str, Any]) -> None:
    snap, problems = run(
        k.ingress("shop", host="*.example.com", tls_secret="wild"),
        k.tls_secret("wild", pki["wild"].cert_pem, pki["wild"].key_pem),
        k.tls_secret("fallback", pki["default"].cert_pem, pki["default"].key_pem, namespace="edge"),
        *web(), config=RenderConfig(default_certificate="edge/fallback"),
    )
    assert problems == []
    assert tls_row(snap, "*.example.com").certificate_id != snap.default_certificate_id
    assert snap.certificate(snap.default_certificate_id).cert_pem == pki["default"].cert_pem  # type: ignore[union-attr]


def test_missing_secret_falls_back_to_default_for_that_host_only(pki: dict[str, Any]) -> None:
    snap, problems = run(
        k.ingress("broken", tls_secret="gone"),
        k.ingress("fine", host="b.example.com", tls_secret="b-tls"),
        k.tls_secret("b-tls", pki["b"].cert_pem, pki["b"].key_pem), *web(),
    )
    assert reasons(problems) == {("Error", "SecretNotFound"), ("Warning", "DefaultCertificateUsed")}
    assert tls_row(snap, "a.example.com").certificate_id is None
    assert tls_row(snap, "b.example.com").certificate_id is not None
    assert vhost(snap, "a.example.com").routes, "the host keeps serving with the default certificate"


@pytest.mark.parametrize("case", ["mismatched key", "not pem", "missing key"])
def test_invalid_tls_secret_is_a_problem_for_that_host(pki: dict[str, Any], case: str) -> None:
    secret = {
        "mismatched key": k.tls_secret("a-tls", pki["a"].cert_pem, unrelated_key_pem()),
        "not pem": k.tls_secret("a-tls", "hello", pki["a"].key_pem),
        "missing key": {"kind": "Secret", "metadata": {"name": "a-tls", "namespace": k.NS},
                        "data": {"tls.crt": k.tls_secret("x", pki["a"].cert_pem, "")["data"]["tls.crt"]}},
    }[case]
    snap, problems = run(k.ingress("shop", tls_secret="a-tls"), secret, *web())
    assert ("Error", "InvalidSecret") in reasons(problems)
    assert tls_row(snap, "a.example.com").certificate_id is None


def test_expired_and_mismatched_certificates_warn(pki: dict[str, Any]) -> None:
    _, problems = run(
        k.ingress("old", tls_secret="old"), k.ingress("other", host="c.example.com", tls_secret="b-tls"),
        k.tls_secret("old", pki["expired"].cert_pem, pki["expired"].key_pem),
        k.tls_secret("b-tls", pki["b"].cert_pem, pki["b"].key_pem), *web(),
        config=RenderConfig(now=int(pki["a"].cert.not_valid_before_utc.timestamp()) + 86400),
    )
    assert ("Warning", "CertificateExpiring") in reasons(problems)
    assert ("Warning", "CertificateNameMismatch") in reasons(problems)


def test_client_auth_with_missing_ca_fails_closed(pki: dict[str, Any]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={P + "client-auth-secret": "nope"}),
                         k.ingress("other", host="b.example.com"),
                         k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem), *web())
    assert ("Error", "IngressSkipped") in reasons(problems)
    assert [v.host for v in snap.virtual_hosts] == ["b.example.com"] and snap.tls_hosts == ()


def test_client_auth_with_crl(pki: dict[str, Any], ca: CA) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={P + "client-auth-secret": "cas",
                                                                              P + "client-auth": "optional"}),
                         k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem),
                         k.ca_secret("cas", ca.cert_pem, ca.crl([pki["client"]])), *web())
    assert problems == []
    assert snap.ca_bundles[0].crl_pem.startswith("-----BEGIN X509 CRL")
    assert tls_row(snap, "a.example.com").client_auth.mode == "optional"  # type: ignore[union-attr]


# --- backends -----------------------------------------------------------------------------------


def test_named_ports_resolve_through_service_and_slices() -> None:
    snap, problems = run(
        k.ingress("shop", port="http"), k.service("web", port=80, port_name="http"),
        k.endpoints("web", "10.0.0.1", port=9000, name="web-1"), k.endpoints("web", "10.0.0.2", port=9001,
                                                                             name="web-2", not_ready=("10.0.0.3",)),
        k.endpoints("web", "10.9.9.9", port_name="metrics", name="web-3"),
    )
    assert problems == []
    assert {(e.address, e.port) for e in snap.pools[0].endpoints} == {("10.0.0.1", 9000), ("10.0.0.2", 9001)}


def test_missing_service_port_and_endpoints_are_reported() -> None:
    snap, problems = run(
        k.ingress("a", host="a.example.com", service="ghost"),
        k.ingress("b", host="b.example.com", port=81),
        k.ingress("c", host="c.example.com", service="idle"), k.service("idle"),
        *web(),
    )
    assert reasons(problems) == {("Error", "ServiceNotFound"), ("Error", "ServicePortNotFound"),
                                 ("Warning", "NoReadyEndpoints")}
    assert all(p.endpoints == () for p in snap.pools), "routes stay and answer 503 until endpoints exist"
    assert len(snap.virtual_hosts) == 3


def test_app_protocol_https_means_tls_to_the_backend() -> None:
    snap, problems = run(k.ingress("shop"), k.service("web", app_protocol="https"), k.endpoints("web", "10.0.0.1"))
    assert problems == []
    assert snap.pools[0].tls is not None and snap.pools[0].tls.verify


def test_path_types_and_default_backend() -> None:
    snap, problems = run(
        k.ingress("shop", paths=[("/exact", "Exact", "web", 80), ("/docs/", "Prefix", "web", 80),
                                 ("/impl", "ImplementationSpecific", "web", 80), ("bad", "Prefix", "web", 80)],
                  default_backend=("web", 80)),
        *web(),
    )
    assert reasons(problems) == {("Error", "InvalidPath")}
    routes = {(r.path, r.path_type) for r in vhost(snap, "a.example.com").routes}
    # the defaultBackend also takes the unmatched paths of the Ingress's own host
    assert routes == {("/exact", "Exact"), ("/docs", "Prefix"), ("/impl", "Prefix"), ("/", "Prefix")}
    assert [(r.path, r.path_type) for r in vhost(snap, "").routes] == [("/", "Prefix")]


# --- conflicts ----------------------------------------------------------------------------------


def test_oldest_ingress_wins_a_mode_conflict_and_loser_is_told_who_won() -> None:
    snap, problems = run(
        k.ingress("young", annotations={P + "tls-mode": "passthrough"}, created="2026-02-01T00:00:00Z"),
        k.ingress("old", tls_hosts=["a.example.com"], created="2026-01-01T00:00:00Z"),
        *web(),
    )
    conflict = next(p for p in problems if p.reason == "HostConflict")
    assert conflict.obj.name == "young" and "shop/old" in conflict.message
    assert tls_row(snap, "a.example.com").mode == "terminate"


def test_same_path_twice_oldest_wins_and_other_paths_merge() -> None:
    snap, problems = run(
        k.ingress("b-young", created="2026-03-01T00:00:00Z", paths=[("/", "Prefix", "web", 80),
                                                                      ("/extra", "Prefix", "web", 80)]),
        k.ingress("a-old", created="2026-01-01T00:00:00Z"),
        *web(),
    )
    conflict = next(p for p in problems if p.reason == "PathConflict")
    assert conflict.obj.name == "b-young" and "shop/a-old" in conflict.message
    routes = {r.path: r.source for r in vhost(snap, "a.example.com").routes}
    assert routes == {"/": "Ingress shop/a-old", "/extra": "Ingress shop/b-young"}


def test_equal_timestamps_break_ties_by_namespace_and_name() -> None:
    _, problems = run(k.ingress("zeta"), k.ingress("alpha"), *web())
    assert next(p for p in problems if p.reason == "PathConflict").obj.name == "zeta"


def test_younger_ingress_cannot_weaken_client_auth(pki: dict[str, Any], ca: CA) -> None:
    snap, problems = run(
        k.ingress("old", tls_secret="a-tls", annotations={P + "client-auth-secret": "cas"}),
        k.ingress("young", created="2026-05-01T00:00:00Z", tls_secret="a-tls", paths=[("/open", "Prefix", "web", 80)]),
        k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem), k.ca_secret("cas", ca.cert_pem), *web(),
    )
    assert ("Warning", "TLSSettingsConflict") in reasons(problems)
    assert [r.path for r in vhost(snap, "a.example.com").routes] == ["/"]


# --- class selection ----------------------------------------------------------------------------

CLASS_CASES = [
    ("class name matches configured class without IngressClass objects", {"class_name": "portcullis"}, [], True),
    ("other class name", {"class_name": "nginx"}, [], False),
    ("class object of another controller", {"class_name": "portcullis"},
     [k.ingress_class("portcullis", controller="k8s.io/ingress-nginx")], False),
    ("class object of ours under another name", {"class_name": "edge"}, [k.ingress_class("edge")], True),
    ("legacy annotation", {"class_name": None, "annotations": {"kubernetes.io/ingress.class": "portcullis"}}, [], True),
    ("legacy annotation of another class", {"class_name": None,
                                            "annotations": {"kubernetes.io/ingress.class": "nginx"}}, [], False),
    ("no class, our class is default", {"class_name": None}, [k.ingress_class("portcullis", default=True)], True),
    ("no class, no default", {"class_name": None}, [k.ingress_class("portcullis")], False),
    ("no class, default class is someone else's", {"class_name": None},
     [k.ingress_class("nginx", controller="k8s.io/ingress-nginx", default=True)], False),
]


@pytest.mark.parametrize(("name", "kwargs", "classes", "served"), CLASS_CASES, ids=[c[0] for c in CLASS_CASES])
def test_ingress_class_selection(name: str, kwargs: dict[str, Any], classes: list[dict[str, Any]],
                                 served: bool) -> None:
    snap, _ = run(k.ingress("shop", **kwargs), *classes, *web())
    assert bool(snap.virtual_hosts) is served


def test_watch_namespaces_filter() -> None:
    snap, _ = run(k.ingress("shop"), k.ingress("other", host="b.example.com", namespace="elsewhere"), *web(),
                  config=RenderConfig(watch_namespaces=("shop",)))
    assert [v.host for v in snap.virtual_hosts] == ["a.example.com"]


# --- determinism --------------------------------------------------------------------------------


def _world(pki: dict[str, Any], ca: CA) -> list[dict[str, Any]]:
    return [
        k.ingress("a", tls_secret="a-tls", created="2026-01-02T00:00:00Z"),
        k.ingress("b", host="b.example.com", tls_secret="b-tls", annotations={P + "tls-mode": "reencrypt",
                                                                              P + "backend-ca-secret": "cas"}),
        k.ingress("c", host="c.example.com", annotations={P + "tls-mode": "passthrough"}),
        k.ingress("d", annotations={P + "tls-mode": "passthrough"}, created="2026-04-01T00:00:00Z"),
        k.ingress("e", paths=[("/e", "Exact", "web", 80)], default_backend=("web", 80)),
        k.tls_secret("a-tls", pki["a"].cert_pem, pki["a"].key_pem),
        k.tls_secret("b-tls", pki["b"].cert_pem, pki["b"].key_pem), k.ca_secret("cas", ca.cert_pem),
        k.service("web"), k.endpoints("web", "10.0.0.3", "10.0.0.1", name="s1"),
        k.endpoints("web", "10.0.0.2", name="s2"), k.ingress_class("portcullis"),
    ]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_shuffled_inputs_give_a_byte_identical_snapshot(seed: int) -> None:
    ca = _CA_FOR_PROPERTY
    world = _world(_PKI_FOR_PROPERTY, ca)
    expected_snap, expected_problems = run(*world)
    shuffled = list(world)
    random.Random(seed).shuffle(shuffled)
    snap, problems = run(*shuffled)
    assert snap.to_json() == expected_snap.to_json()
    assert problems == expected_problems


_CA_FOR_PROPERTY = CA()
_PKI_FOR_PROPERTY = {"a": _CA_FOR_PROPERTY.issue("a.example.com"), "b": _CA_FOR_PROPERTY.issue("b.example.com")}


def test_examples_render_cleanly() -> None:
    from controller.manifests import load_paths

    snap, problems = run(*load_paths(["deploy/examples"]))
    assert problems == []
    modes = {h.host: (h.mode, h.client_auth is not None) for h in snap.tls_hosts}
    assert modes == {
        "edge.portcullis.test": ("terminate", False), "bridge.portcullis.test": ("terminate", False),
        "legacy.portcullis.test": ("terminate", False), "mtls.portcullis.test": ("terminate", True),
        "direct.portcullis.test": ("passthrough", False),
    }
    for host in ("bridge.portcullis.test", "legacy.portcullis.test"):
        tls = snap.pool(vhost(snap, host).routes[0].pool_id).tls  # type: ignore[union-attr]
        assert tls is not None and tls.verify and tls.server_name == "secure-web.demo.svc" and tls.ca_id


# --- defaultBackend: fallback for the Ingress's own hosts -----------------------------------------


def _fallback_objects() -> list[dict[str, Any]]:
    return [*web(), k.service("fallback"), k.endpoints("fallback", "10.0.0.9"), k.service("other"),
            k.endpoints("other", "10.0.0.8")]


def _host_only(name: str, host: str, default_backend: str, created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    """An Ingress whose rule names a host without any http paths (everything to the defaultBackend)."""
    obj = k.ingress(name, host=host, default_backend=(default_backend, 80), created=created)
    obj["spec"]["rules"] = [{"host": host}]
    return obj


OLD, YOUNG = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"


@pytest.mark.parametrize(("objs", "expected", "problem_reasons"), [
    pytest.param(  # unmatched paths of its own host go to the defaultBackend, not 404
        [k.ingress("i", paths=[("/api", "Prefix", "web", 80)], default_backend=("fallback", 80))],
        {"a.example.com": {("/api", "Prefix"): "web", ("/", "Prefix"): "fallback"},
         "": {("/", "Prefix"): "fallback"}},
        set(), id="own-host-fallback"),
    pytest.param(  # an explicit / Prefix rule of the same Ingress wins
        [k.ingress("i", paths=[("/", "Prefix", "web", 80)], default_backend=("fallback", 80))],
        {"a.example.com": {("/", "Prefix"): "web"}}, set(), id="explicit-root-same-ingress"),
    pytest.param(  # an Exact / does not cover other paths: the fallback still takes them
        [k.ingress("i", paths=[("/", "Exact", "web", 80)], default_backend=("fallback", 80))],
        {"a.example.com": {("/", "Exact"): "web", ("/", "Prefix"): "fallback"}}, set(), id="exact-root"),
    pytest.param(  # a younger Ingress's explicit / Prefix wins over an older one's fallback
        [k.ingress("old", paths=[("/api", "Prefix", "web", 80)], default_backend=("fallback", 80), created=OLD),
         k.ingress("young", paths=[("/", "Prefix", "other", 80)], created=YOUNG)],
        {"a.example.com": {("/api", "Prefix"): "web", ("/", "Prefix"): "other"}}, set(),
        id="explicit-root-of-younger-wins"),
    pytest.param(  # and an older explicit / Prefix wins over a younger fallback
        [k.ingress("old", paths=[("/", "Prefix", "other", 80)], created=OLD),
         k.ingress("young", paths=[("/api", "Prefix", "web", 80)], default_backend=("fallback", 80), created=YOUNG)],
        {"a.example.com": {("/api", "Prefix"): "web", ("/", "Prefix"): "other"}}, set(),
        id="explicit-root-of-older-wins"),
    pytest.param(  # two fallbacks for one host: the oldest wins, the younger is told
        [k.ingress("young", paths=[("/b", "Prefix", "web", 80)], default_backend=("other", 80), created=YOUNG),
         k.ingress("old", paths=[("/a", "Prefix", "web", 80)], default_backend=("fallback", 80), created=OLD)],
        {"a.example.com": {("/a", "Prefix"): "web", ("/b", "Prefix"): "web", ("/", "Prefix"): "fallback"},
         "": {("/", "Prefix"): "fallback"}},
        {("Warning", "PathConflict")}, id="oldest-fallback-wins"),
    pytest.param(  # a fallback reaches only the Ingress's own hosts
        [k.ingress("i", paths=[("/api", "Prefix", "web", 80)], default_backend=("fallback", 80), created=OLD),
         k.ingress("j", host="b.example.com", paths=[("/x", "Prefix", "other", 80)], created=YOUNG)],
        {"b.example.com": {("/x", "Prefix"): "other"}}, set(), id="not-other-ingresses-hosts"),
    pytest.param(  # a rule with a host and no paths: the whole host goes to the defaultBackend
        [_host_only("i", "c.example.com", "fallback")],
        {"c.example.com": {("/", "Prefix"): "fallback"}, "": {("/", "Prefix"): "fallback"}}, set(),
        id="host-without-paths"),
    pytest.param(  # a TLS host of the Ingress without a rule of its own is also its host
        [k.ingress("i", paths=[("/api", "Prefix", "web", 80)], default_backend=("fallback", 80),
                   annotations={P + "tls-mode": "offload"}, tls_hosts=["a.example.com", "t.example.com"])],
        {"a.example.com": {("/api", "Prefix"): "web", ("/", "Prefix"): "fallback"},
         "t.example.com": {("/", "Prefix"): "fallback"}},
        set(), id="tls-host-without-rule"),
])
def test_default_backend_is_the_fallback_for_its_own_hosts(
    objs: list[dict[str, Any]], expected: dict[str, dict[tuple[str, str], str]],
    problem_reasons: set[tuple[str, str]],
) -> None:
    snap, problems = run(*objs, *_fallback_objects())
    assert reasons(problems) == problem_reasons
    for host, routes in expected.items():
        got = {(r.path, r.path_type): r.pool_id for r in vhost(snap, host).routes}
        assert got == {key: f"{k.NS}/{svc}:80" for key, svc in routes.items()}, host
        assert all(snap.pool(pool_id) is not None for pool_id in got.values())


def test_default_backend_does_not_attach_to_a_passthrough_host() -> None:
    snap, problems = run(
        k.ingress("pt", annotations={P + "tls-mode": "passthrough"}, created=OLD),
        k.ingress("i", paths=[("/api", "Prefix", "web", 80)], default_backend=("fallback", 80), created=YOUNG),
        *_fallback_objects(),
    )
    assert ("Warning", "HostConflict") in reasons(problems)
    assert vhost(snap, "a.example.com").routes == ()
    assert tls_row(snap, "a.example.com").mode == "passthrough"
    assert [r.pool_id for r in vhost(snap, "").routes] == [f"{k.NS}/fallback:80"]
