"""The renderer refuses exactly what the apiserver and the data plane would, per Ingress, naming the field.

Three layers, three tables: the Ingress API's own validation (``controller/model.py``, what
``kubectl apply`` refuses), the snapshot validator (``controller/conformance.py`` asks
``dataplane.snapshot.validate`` object by object), and a property: whatever the objects, the
rendered snapshot is one the data plane applies.
"""

from __future__ import annotations

import base64
import copy
import functools
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import conformance
from controller.model import Ingress, IngressPath, IngressRule, IngressTLS, Inputs, project
from controller.problems import Problem
from controller.render import RenderConfig, render
from dataplane.runtime import DataPlane, DataPlaneConfig
from dataplane.snapshot import ClientAuth, Pool, Route, Snapshot, TLSHost, UpstreamTLS, VirtualHost, validate
from tests.pki import CA, unrelated_key_pem
from tests.unit import objects as k

P = "portcullis.io/"
NGINX = "nginx.ingress.kubernetes.io/"


def run(*objs: dict[str, Any]) -> tuple[Snapshot, list[Problem]]:
    inputs, problems = Inputs.from_objects(objs)
    snapshot, render_problems = render(inputs, RenderConfig())
    assert validate(snapshot, check_pem=True) == []
    return snapshot, sorted(set(problems) | set(render_problems))


def web() -> list[dict[str, Any]]:
    return [k.service("web"), k.endpoints("web", "10.0.0.1")]


def hosts(snapshot: Snapshot) -> set[str]:
    return {v.host for v in snapshot.virtual_hosts}


def errors(problems: list[Problem]) -> set[tuple[str, str]]:
    """(reason, field) of every Error."""
    return {(p.reason, p.field) for p in problems if p.severity == "Error"}


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``obj`` with the dotted ``path`` (list indexes as numbers) set; ``...`` deletes it."""
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = obj
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return obj


BASE = k.ingress("bad", host="bad.example.com")
PATH0 = "spec.rules.0.http.paths.0"


# --- what the apiserver refuses: reported with the field, the offending part left out ------------

@pytest.mark.parametrize(("change", "value", "reason", "field"), [
    (f"{PATH0}.pathType", ..., "InvalidPath", "spec.rules[0].http.paths[0].pathType"),
    (f"{PATH0}.path", "api", "InvalidPath", "spec.rules[0].http.paths[0].path"),
    (f"{PATH0}.path", "/a//b", "InvalidPath", "spec.rules[0].http.paths[0].path"),
    (f"{PATH0}.path", "/a/../b", "InvalidPath", "spec.rules[0].http.paths[0].path"),
    (f"{PATH0}.path", "/a/%2Fb", "InvalidPath", "spec.rules[0].http.paths[0].path"),
    (f"{PATH0}.path", "/a/.", "InvalidPath", "spec.rules[0].http.paths[0].path"),
    (f"{PATH0}.path", ..., "InvalidPath", "spec.rules[0].http.paths[0].path"),  # Prefix needs a path
    ("spec.rules.0.host", "10.0.0.1", "InvalidHost", "spec.rules[0].host"),
    ("spec.rules.0.host", "2001:db8::1", "InvalidHost", "spec.rules[0].host"),
    ("spec.rules.0.host", "foo.*.example", "InvalidHost", "spec.rules[0].host"),
    ("spec.rules.0.host", "*foo.example.com", "InvalidHost", "spec.rules[0].host"),
    ("spec.rules.0.host", "Bad.Example.com", "InvalidHost", "spec.rules[0].host"),
    ("spec.rules.0.host", "bad_host.example.com", "InvalidHost", "spec.rules[0].host"),
    ("spec.rules.0.http.paths", [], "InvalidObject", "spec.rules[0].http.paths"),
    (f"{PATH0}.backend.service.name", "Web", "InvalidObject", "spec.rules[0].http.paths[0].backend.service.name"),
    (f"{PATH0}.backend.service.name", ..., "InvalidObject", "spec.rules[0].http.paths[0].backend.service.name"),
    (f"{PATH0}.backend.service.port", {"number": 80, "name": "http"}, "InvalidObject",
     "spec.rules[0].http.paths[0].backend.service.port"),
    (f"{PATH0}.backend.service.port", {}, "InvalidObject", "spec.rules[0].http.paths[0].backend.service.port"),
    (f"{PATH0}.backend.service.port", {"name": "http--x"}, "InvalidObject",
     "spec.rules[0].http.paths[0].backend.service.port.name"),
    (f"{PATH0}.backend.service.port", {"name": "a-very-long-port-name"}, "InvalidObject",
     "spec.rules[0].http.paths[0].backend.service.port.name"),
    (f"{PATH0}.backend.service.port", {"number": 0}, "InvalidObject",
     "spec.rules[0].http.paths[0].backend.service.port.number"),
    (f"{PATH0}.backend.resource", {"kind": "Bucket", "name": "b"}, "InvalidObject",
     "spec.rules[0].http.paths[0].backend"),
    (f"{PATH0}.backend", {"resource": {"kind": "Bucket", "name": "b"}}, "Unsupported",
     "spec.rules[0].http.paths[0].backend.resource"),
    ("spec.rules", [], "InvalidObject", "spec"),
])
def test_apiserver_refusals_are_errors_naming_the_field(change: str, value: Any, reason: str, field: str) -> None:
    snap, problems = run(_set(BASE, change, value), k.ingress("good"), *web())
    assert (reason, field) in errors(problems), problems
    assert all(p.obj.name == "bad" for p in problems)
    assert "a.example.com" in hosts(snap)  # the other Ingress is served
    assert "bad.example.com" not in hosts(snap) or all(
        r.path != "/" for r in next(v for v in snap.virtual_hosts if v.host == "bad.example.com").routes)


@pytest.mark.parametrize(("path", "path_type"), [
    ("/", "Prefix"), ("/a/b/", "Prefix"), ("/a.b/c..d", "Exact"), ("/%41", "Exact"), ("", "ImplementationSpecific"),
    ("/x//y", "ImplementationSpecific"),  # only Exact and Prefix paths are held to the stricter rules
])
def test_paths_the_apiserver_accepts_are_served(path: str, path_type: str) -> None:
    snap, problems = run(_set(_set(BASE, f"{PATH0}.path", path), f"{PATH0}.pathType", path_type), *web())
    assert errors(problems) == set()
    assert "bad.example.com" in hosts(snap)


def test_bad_tls_host_is_left_out_but_its_entry_does_not_widen_to_every_rule_host() -> None:
    obj = _set(k.ingress("bad", host="bad.example.com", tls_hosts=["10.1.2.3"]), "spec.rules.0.host",
               "bad.example.com")
    snap, problems = run(obj, *web())
    assert ("InvalidHost", "spec.tls[0].hosts[0]") in errors(problems)
    assert snap.tls_hosts == ()  # not: every rule host served with the default certificate


def test_default_backend_only_ingress_is_valid() -> None:
    obj = _set(k.ingress("d", default_backend=("web", 80)), "spec.rules", ...)
    snap, problems = run(obj, *web())
    assert errors(problems) == set()
    assert [v.host for v in snap.virtual_hosts] == [""]


# --- what the data plane's validator refuses: the renderer refuses it first, per Ingress ---------

def _projected(name: str, **changes: Any) -> Ingress:
    view = project(k.ingress(name, host="ok.example.com"))
    assert isinstance(view, Ingress)
    return replace(view, **changes)


@pytest.mark.parametrize(("host", "tls"), [
    ("foo.*.example", False), ("foo.*.example", True), ("*.com", False), ("a" * 64 + ".example.com", False),
    ("x." * 127 + "com", True), ("UPPER.example.com", False), ("a..b.example.com", True),
])
def test_hosts_the_validator_refuses_cost_only_their_own_rule(host: str, tls: bool) -> None:
    """Cluster objects skip the model's apiserver checks (the apiserver did them), and the apiserver is
    laxer than the data plane (no 63-character label limit): the renderer checks every host itself."""
    base = _projected("bad")
    rule = IngressRule(host, base.rules[0].paths, "spec.rules[1]")
    changes: dict[str, Any] = {"rules": (*base.rules, rule)}
    if tls:
        changes["tls"] = (IngressTLS((host, "ok.example.com"), "", "spec.tls[0]"),)
        changes["annotations"] = {}
    bad = replace(base, **changes)
    good = project(k.ingress("good", host="good.example.com"))
    inputs, _ = Inputs.from_objects(web())
    snap, problems = render(replace(inputs, ingresses=(bad, good)), RenderConfig())  # type: ignore[arg-type]
    assert validate(snap) == []
    assert hosts(snap) >= {"ok.example.com", "good.example.com"}
    assert host not in hosts(snap) and host not in {h.host for h in snap.tls_hosts}
    refused = [p for p in problems if p.reason == "InvalidHost"]
    assert refused and all(p.severity == "Error" and p.obj.name == "bad" for p in refused)
    assert {p.field for p in refused} <= {"spec.rules[1].host", "spec.tls[0].hosts"}


def test_path_the_validator_refuses_is_skipped() -> None:
    bad = _projected("bad", rules=(IngressRule("ok.example.com", (
        IngressPath("/ok", "Prefix", _projected("x").rules[0].paths[0].backend, "spec.rules[0].http.paths[0]"),
        IngressPath("nope", "ImplementationSpecific", _projected("x").rules[0].paths[0].backend,
                    "spec.rules[0].http.paths[1]"),
    ), "spec.rules[0]"),))
    inputs, _ = Inputs.from_objects(web())
    snap, problems = render(replace(inputs, ingresses=(bad,)), RenderConfig())
    assert validate(snap) == []
    assert [r.path for r in snap.virtual_hosts[0].routes] == ["/ok"]
    assert [(p.reason, p.field) for p in problems] == [("InvalidPath", "spec.rules[0].http.paths[1].path")]


POOL = Pool("shop/web:80")
TLS = UpstreamTLS("web.shop.svc")


@pytest.mark.parametrize(("check", "obj"), [
    (conformance.pool_problems, replace(POOL, send_timeout=0)),
    (conformance.pool_problems, replace(POOL, read_timeout=float("nan"))),
    (conformance.pool_problems, replace(POOL, load_balance="random")),  # type: ignore[arg-type]
    (conformance.pool_problems, replace(POOL, unavailable="x\r\nSet-Cookie: a=b")),
    (conformance.pool_problems, replace(POOL, unavailable="x" * 201)),
    (conformance.pool_problems, replace(POOL, tls=replace(TLS, ciphers="NO-SUCH-CIPHER"))),
    (conformance.pool_problems, replace(POOL, tls=replace(TLS, min_version="1.3", max_version="1.2"))),
    (conformance.pool_problems, replace(POOL, tls=replace(TLS, max_version="1.1"))),  # type: ignore[arg-type]
    (conformance.pool_problems, replace(POOL, tls=replace(TLS, verify_depth=-1))),
    (conformance.pool_problems, replace(POOL, tls=replace(TLS, server_name=""))),
    (conformance.tls_host_problems, TLSHost("a.example.com", "terminate", ciphers="NOPE")),
    (conformance.tls_host_problems, TLSHost("a.example.com", "terminate", min_version="1.1")),  # type: ignore[arg-type]
    (conformance.tls_host_problems, TLSHost("a.example.com", "terminate",
                                            client_auth=ClientAuth("sha256:x", match_cn="CN=(unclosed"))),
    (conformance.tls_host_problems, TLSHost("a.example.com", "terminate",
                                            client_auth=ClientAuth("sha256:x", error_page="ftp://x/"))),
    (conformance.tls_host_problems, TLSHost("a.example.com", "terminate",
                                            client_auth=ClientAuth("sha256:x", verify_depth=0))),
    (conformance.tls_host_problems, TLSHost("a.example.com", "passthrough")),  # no pool
    (conformance.route_problems, Route("/a", "Prefix", "p", max_body_size=-2)),
    (conformance.route_problems, Route("a", "Prefix", "p")),
    (conformance.route_problems, Route("/a", "Regex", "p")),  # type: ignore[arg-type]
])
def test_conformance_checks_are_the_validators(check: Any, obj: Any) -> None:
    refused = check(obj)
    assert refused
    # the same object inside a whole snapshot is refused by the data plane for the same reason
    assert all(reason in validate(_whole(obj), check_pem=False) for reason in refused)


def _whole(obj: Any) -> Snapshot:
    if isinstance(obj, Pool):
        return Snapshot(pools=(obj,))
    if isinstance(obj, TLSHost):
        return Snapshot(tls_hosts=(obj,), certificates=(), ca_bundles=()) if obj.mode == "passthrough" else Snapshot(
            tls_hosts=(obj,), ca_bundles=conformance._stub_cas(obj.client_auth.ca_id if obj.client_auth else None))
    if isinstance(obj, Route):
        return Snapshot(virtual_hosts=(VirtualHost("", (obj,)),), pools=(Pool(obj.pool_id),))
    return Snapshot(virtual_hosts=(obj,))


@pytest.mark.parametrize("obj", [
    POOL, replace(POOL, tls=TLS, send_timeout=0.5, unavailable="Service shop/web not found"),
    TLSHost("*.example.com", "terminate", ciphers="ECDHE+AESGCM",
            client_auth=ClientAuth("sha256:x", mode="optional_no_ca", match_cn="CN=a", error_page="https://e/x")),
    Route("/", "Prefix", "p", max_body_size=0),
])
def test_conformance_accepts_what_the_validator_accepts(obj: Any) -> None:
    check: Any = {Pool: conformance.pool_problems, TLSHost: conformance.tls_host_problems,
                  Route: conformance.route_problems}[type(obj)]
    assert check(obj) == []


# --- why a pool has no endpoint: carried to the data plane ---------------------------------------

def test_pools_say_why_they_have_no_endpoint() -> None:
    snap, _ = run(
        k.ingress("a", host="a.example.com", service="missing"),
        k.ingress("b", host="b.example.com", service="idle"), k.service("idle"),
        k.ingress("c", host="c.example.com", port="nope"),
        k.ingress("d", host="d.example.com"), *web(),
    )
    assert {p.id: p.unavailable for p in snap.pools} == {
        "shop/missing:80": "Service shop/missing not found",
        "shop/idle:80": "no ready endpoint for shop/idle:80",
        "shop/web:nope": "Service shop/web has no port nope",
        "shop/web:80": "",
    }


# --- the property: whatever the objects, the data plane applies the snapshot ---------------------

@functools.cache
def _material() -> dict[str, str]:
    ca = CA()
    good = ca.issue("a.example.com")
    return {"cert": good.cert_pem, "key": good.key_pem, "ca": ca.cert_pem, "other_key": unrelated_key_pem()}


def mostly(good: st.SearchStrategy[Any], *hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else one of ``hostile``: the property must also cover what is served."""
    return st.integers(0, 3).flatmap(lambda i: good if i else st.one_of(*hostile))


GOOD_HOSTS = st.sampled_from(["a.example.com", "b.example.com", "*.example.com", "x.a.example.com", ""])
HOSTS = mostly(
    GOOD_HOSTS,
    st.sampled_from(["a.example.com", "*.example.com", "foo.*.example", "*.com", "*", "", "A.example.com",
                     "10.0.0.1", "::1", "a..b", "a" * 64 + ".x.y", "x." * 127 + "com", "é.example", "-a.example",
                     "a.example.com.", "a b", "*.*.example.com"]),
    st.text(alphabet="abc.*-_A1:", max_size=20),
)
PATHS = mostly(
    st.sampled_from(["/", "/a", "/a/b"]),
    st.sampled_from(["/", "/a", "/a/", "", "a", "//", "/a/../b", "/%2f", "/a b", "/{x}", "/é", "/a;b", "/.",
                     "/\x00", "/\r\n"]),
    st.text(max_size=12),
)
PATH_TYPES = mostly(st.sampled_from(["Prefix", "Exact", "ImplementationSpecific"]),
                    st.sampled_from(["Regex", "", None, 7]))
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2, 70000), st.text(max_size=8), st.lists(st.integers(),
                                                                                                  max_size=2))
GOOD_PORTS = st.sampled_from([{"number": 80}, {"name": "http"}, {"number": 443}, {"name": "https"}])
PORTS = mostly(GOOD_PORTS, st.sampled_from([{"number": 80, "name": "http"}, {},
                                                                       {"number": 0}, {"name": "Bad--"}]), JUNK)
SERVICES = st.sampled_from(["web", "web", "web", "missing", "Web", "", "idle"])
VALUES = st.one_of(st.text(max_size=30), st.sampled_from([
    "passthrough", "offload", "reencrypt", "edge", "true", "false", "on", "off", "optional", "optional_no_ca",
    "required", "1.2", "1.3", "5s", "0s", "1h", "ca", "tls", "client", "v1", "v2", "least-conn",
    "CN=(", "CN=a.*", "https://e.example/x", "ftp://x", "ECDHE+AESGCM", "NOPE", "TLSv1.2 TLSv1.3", "TLSv1.1",
    "0", "1m", "-1", "max-age=10; preload", "\u0661\u0660s", "web.shop.svc", "shop/ca", "other/ca",
    "http1", "h2c", "h2", "grpc", "grpcs", "GRPC", "GRPCS", "HTTPS", "AJP",
]))
ANNOTATION_KEYS = st.sampled_from([
    P + n for n in ("tls-mode", "insecure-policy", "hsts", "backend-ca-secret", "backend-server-name",
                    "backend-verify", "backend-client-secret", "client-auth-secret", "client-auth",
                    "client-cert-headers", "proxy-protocol", "tls-min-version", "load-balance", "connect-timeout",
                    "read-timeout", "send-timeout", "max-body-size", "tls-ciphers", "client-auth-match-cn",
                    "client-auth-error-page", "backend-tls-versions", "backend-ciphers", "backend-verify-depth",
                    "backend-protocol", "http2", "bogus")
] + [NGINX + n for n in ("ssl-passthrough", "backend-protocol", "proxy-ssl-secret", "proxy-ssl-verify",
                         "auth-tls-secret", "auth-tls-verify-client", "auth-tls-verify-depth", "auth-tls-match-cn",
                         "ssl-ciphers", "proxy-body-size", "proxy-read-timeout", "proxy-ssl-protocols")]
  + ["route.openshift.io/termination"])


@st.composite
def backends(draw: st.DrawFn) -> Any:
    service = st.fixed_dictionaries({"service": st.fixed_dictionaries({"name": SERVICES, "port": PORTS})})
    return draw(mostly(service, st.just({"resource": {"kind": "X", "name": "y"}}), JUNK))


@st.composite
def ingresses(draw: st.DrawFn, name: str) -> dict[str, Any]:
    rules = draw(st.lists(st.fixed_dictionaries({
        "host": HOSTS,
        "http": mostly(st.fixed_dictionaries({"paths": st.lists(st.fixed_dictionaries({
            "path": PATHS, "pathType": PATH_TYPES, "backend": backends()}), min_size=1, max_size=3)}), st.none()),
    }), min_size=1, max_size=3))
    spec: dict[str, Any] = {"ingressClassName": "portcullis", "rules": rules}
    if draw(st.booleans()):
        spec["defaultBackend"] = draw(backends())
    if draw(st.booleans()):
        spec["tls"] = [{"hosts": draw(st.lists(HOSTS, max_size=3)),
                        "secretName": draw(mostly(st.just("tls"),
                                                  st.sampled_from(["garbage", "mismatch", "missing", "ca", "raw"])))}]
    coherent = st.sampled_from([
        {P + "client-auth-secret": "ca"}, {P + "tls-mode": "reencrypt", P + "backend-ca-secret": "ca"},
        {P + "tls-mode": "reencrypt", P + "backend-client-secret": "tls", P + "backend-verify": "false"},
        {P + "tls-mode": "passthrough", P + "proxy-protocol": "v2"}, {NGINX + "auth-tls-secret": "shop/ca"},
        {P + "client-auth-secret": "rawca"}, {P + "tls-mode": "reencrypt", P + "backend-client-secret": "raw"},
    ])
    extra = st.dictionaries(ANNOTATION_KEYS, VALUES, max_size=3)
    annotations = draw(st.one_of(st.just({}), coherent, st.tuples(coherent, extra).map(lambda t: {**t[0], **t[1]}),
                                 extra))
    created = draw(st.sampled_from(["2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", ""]))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": k.NS, "creationTimestamp": created, "annotations": annotations},
            "spec": spec}


def _raw_secret(name: str, type_: str, data: dict[str, bytes]) -> dict[str, Any]:
    """Secret data as arbitrary bytes: PEM wrapped in control and non-UTF-8 bytes."""
    return {"apiVersion": "v1", "kind": "Secret", "type": type_, "metadata": {"name": name, "namespace": k.NS},
            "data": {key: base64.b64encode(value).decode() for key, value in data.items()}}


@st.composite
def world(draw: st.DrawFn) -> list[dict[str, Any]]:
    m = _material()
    objs: list[dict[str, Any]] = [draw(ingresses(f"i{n}")) for n in range(draw(st.integers(1, 4)))]
    objs += [
        k.tls_secret("tls", m["cert"], m["key"]),
        k.tls_secret("mismatch", m["cert"], m["other_key"]),
        k.tls_secret("garbage", draw(st.sampled_from([m["cert"] + "\n-----BEGIN CERTIFICATE-----\nAAAA\n", "x",
                                                      m["key"], m["cert"].replace("A", "B", 3)])), m["key"]),
        k.ca_secret("ca", draw(st.sampled_from([m["ca"], m["cert"], "junk", m["ca"] + "junk"]))),
        _raw_secret("raw", "kubernetes.io/tls", {
            "tls.crt": draw(st.binary(max_size=4)) + m["cert"].encode() + draw(st.binary(max_size=4)),
            "tls.key": draw(st.sampled_from([b"", b"\x00", b"\xff"])) + m["key"].encode()}),
        _raw_secret("rawca", "Opaque", {"ca.crt": draw(st.binary(max_size=4)) + m["ca"].encode(),
                                        "ca.crl": draw(st.binary(max_size=3))}),
        k.service("web"), k.service("idle"),
        k.service("web", port=443, port_name="https", app_protocol=draw(st.sampled_from(["https", "http", "tls"]))),
    ]
    endpoint = draw(st.fixed_dictionaries({
        "addresses": st.lists(st.one_of(st.sampled_from(["10.0.0.1", "::1", "", "not-an-ip"]), st.text(max_size=5)),
                              max_size=3),
        "conditions": st.one_of(st.none(), st.fixed_dictionaries({"ready": st.one_of(st.booleans(), st.none())})),
    }))
    objs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "web-x", "namespace": k.NS, "labels": {"kubernetes.io/service-name": "web"}},
                 "addressType": draw(st.sampled_from(["IPv4", "IPv6", "FQDN"])), "endpoints": [endpoint],
                 "ports": [{"name": draw(st.sampled_from(["http", "https", ""])),
                            "port": draw(st.integers(-1, 70000))}]})
    return objs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=world())
def test_whatever_the_objects_the_data_plane_applies_the_snapshot(objs: list[dict[str, Any]]) -> None:
    inputs, _ = Inputs.from_objects(objs)
    snapshot, _ = render(inputs, RenderConfig())
    assert validate(snapshot, check_pem=True) == []
    # and the data plane's whole apply (validate, load into OpenSSL, build the TLS and HTTP tables) takes it
    assert _dataplane().apply(Snapshot.from_json(snapshot.to_json())) == []


@functools.cache
def _dataplane() -> DataPlane:
    return DataPlane(DataPlaneConfig(https_port=0, http_port=0, admin_port=0, admin_token="t"))


# --- `portcullis render -f`: exit status and problem text -----------------------------------------

def _render_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", "render", "-f", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize(("bad", "expected"), [
    (_set(BASE, "spec.rules.0.host", "foo.*.example"),
     "Error: Ingress shop/bad spec.rules[0].host: host 'foo.*.example' a wildcard is allowed only as the whole "
     "first label"),
    (_set(BASE, f"{PATH0}.pathType", ...), "Error: Ingress shop/bad spec.rules[0].http.paths[0].pathType: pathType "
     "is required"),
    (_set(BASE, "spec.rules", []), "Error: Ingress shop/bad spec: either defaultBackend or rules must be specified"),
    (_set(BASE, "spec.rules.0.host", "a" * 64 + ".example.com"),
     "Error: Ingress shop/bad spec.rules[0].host: rule not served"),
])
def test_render_command_reports_refused_ingress_and_serves_the_rest(tmp_path: Path, bad: dict[str, Any],
                                                                    expected: str) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    (tmp_path / "good.yaml").write_text(yaml.safe_dump_all([k.ingress("good"), *web()]))
    result = _render_cli(tmp_path)
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr
    snapshot = Snapshot.from_json(result.stdout)
    assert validate(snapshot, check_pem=False) == []
    assert [v.host for v in snapshot.virtual_hosts] == ["a.example.com"]


def test_render_command_is_clean_without_the_bad_ingress(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(yaml.safe_dump_all([k.ingress("good"), *web()]))
    result = _render_cli(tmp_path)
    assert (result.returncode, result.stderr) == (0, "")


# --- the wiring: a refusal costs only the Ingress (or backend) it comes from -------------------------
# No annotation parser lets through a value the validator refuses today, so these stand in a refusal
# for one object, as a future validator rule would produce it.

def test_refused_tls_settings_skip_the_ingress_and_never_fall_back_to_plain_http(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = conformance.tls_host_problems
    monkeypatch.setattr(conformance, "tls_host_problems", lambda row, pool=None: (
        ["TLS host 'a.example.com': cipher list 'X' selects no cipher OpenSSL knows"]
        if row.host == "a.example.com" else real(row, pool)))
    snap, problems = run(
        k.ingress("bad", annotations={P + "tls-mode": "offload", P + "tls-ciphers": "ECDHE+AESGCM"}),
        k.ingress("good", host="b.example.com", annotations={P + "tls-mode": "offload"}), *web(),
    )
    assert hosts(snap) == {"b.example.com"}  # a.example.com is not served at all, not even over plain HTTP
    assert ("IngressSkipped", f"metadata.annotations[{P}tls-ciphers]") in errors(problems)


def test_refused_pool_costs_only_its_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    real = conformance.pool_problems
    monkeypatch.setattr(conformance, "pool_problems", lambda pool: (
        ["pool 'shop/idle:80': timeouts must be positive"] if pool.id.startswith("shop/idle") else real(pool)))
    snap, problems = run(
        k.ingress("i", paths=[("/a", "Prefix", "web", 80), ("/b", "Prefix", "idle", 80)]), k.service("idle"), *web(),
    )
    assert [r.path for r in snap.virtual_hosts[0].routes] == ["/a"]
    assert {p.id for p in snap.pools} == {"shop/web:80"}
    assert ("InvalidBackendSettings", "spec.rules[0].http.paths[1].backend") in errors(problems)


# --- Secret text OpenSSL reads differently from cryptography ---------------------------------------

@pytest.mark.parametrize("wrap", [
    lambda pem: b"x" + pem,  # junk on the BEGIN line: cryptography finds the block, OpenSSL does not
    lambda pem: b"\x00" + pem,
    lambda pem: b"\xff\xfe not utf-8\n" + pem,  # crashed the render (UnicodeDecodeError)
    lambda pem: b"Bag Attributes\n    localKeyID: 01\n" + pem.replace(b"\n", b"\r\n"),
])
@pytest.mark.parametrize("key", ["tls.crt", "tls.key", "ca.crt"])
def test_pem_wrapped_in_junk_is_served_as_its_blocks_or_refused_never_breaks_the_snapshot(wrap: Any, key: str) -> None:
    m = _material()
    tls = {"tls.crt": m["cert"].encode(), "tls.key": m["key"].encode()}
    ca = {"ca.crt": m["ca"].encode()}
    (tls if key in tls else ca)[key] = wrap((tls if key in tls else ca)[key])
    snap, problems = run(
        k.ingress("i", tls_secret="raw", annotations={P + "client-auth-secret": "rawca"}),
        _raw_secret("raw", "kubernetes.io/tls", tls), _raw_secret("rawca", "Opaque", ca), *web(),
    )
    assert _dataplane().apply(Snapshot.from_json(snap.to_json())) == []
    assert errors(problems) == set()  # the blocks themselves are fine: served as such
    row = snap.tls_hosts[0]
    assert row.certificate_id is not None and row.client_auth is not None


@pytest.mark.parametrize("name", ["", "Shop", "shop_1", None])
def test_ingress_without_a_valid_name_is_not_served(name: str | None) -> None:
    obj = _set(BASE, "metadata.name", name) if name is not None else _set(BASE, "metadata.name", ...)
    snap, problems = run(obj, k.ingress("good"), *web())
    assert ("InvalidObject", "metadata.name") in errors(problems)
    assert hosts(snap) == {"a.example.com"}
