"""The TLS-policy, timeout and body-size annotations (issue 10 items 3, 4, 9; issue 11 item 6), through ``render``.

Each annotation: a valid value lands in the snapshot field it names, an invalid one is an Error problem naming
the Ingress, the annotation and the value (the setting ignored, the Ingress still served), the ingress-nginx
alias means the same, and the native key wins over it. Numbers are ASCII only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controller import annotations as ann
from controller.model import Inputs
from controller.problems import Problem
from controller.render import RenderConfig, render
from dataplane.snapshot import Snapshot, validate
from tests.pki import CA
from tests.unit import objects as k

P = "portcullis.io/"
NGINX = "nginx.ingress.kubernetes.io/"
HOST = "a.example.com"


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture(scope="module")
def world(ca: CA) -> list[dict[str, Any]]:
    issued = ca.issue(HOST)
    return [
        k.tls_secret("a-tls", issued.cert_pem, issued.key_pem), k.ca_secret("cas", ca.cert_pem),
        k.service("web"), k.endpoints("web", "10.0.0.1"),
    ]


def run(*objs: dict[str, Any]) -> tuple[Snapshot, list[Problem]]:
    inputs, problems = Inputs.from_objects(objs)
    snapshot, render_problems = render(inputs, RenderConfig())
    assert validate(snapshot, check_pem=True) == [], "the renderer must never emit a snapshot the data plane refuses"
    return snapshot, problems + render_problems


def serve(world: list[dict[str, Any]], annotations: dict[str, str], **kwargs: Any) -> tuple[Snapshot, list[Problem]]:
    """One reencrypt Ingress with client auth on a.example.com, so every setting here has an effect."""
    base = {P + "tls-mode": "reencrypt", P + "backend-ca-secret": "cas", P + "client-auth-secret": "cas"}
    return run(k.ingress("shop", tls_secret="a-tls", annotations=base | annotations, **kwargs), *world)


def row(snap: Snapshot) -> Any:
    return next(h for h in snap.tls_hosts if h.host == HOST)


def route(snap: Snapshot) -> Any:
    return next(v for v in snap.virtual_hosts if v.host == HOST).routes[0]


def pool(snap: Snapshot) -> Any:
    return snap.pools[0]


Check = Callable[[Snapshot], bool]
VALID: list[tuple[str, str, Check]] = [
    (P + "max-body-size", "8m", lambda s: route(s).max_body_size == 8 << 20),
    (P + "max-body-size", "512K", lambda s: route(s).max_body_size == 512 << 10),
    (P + "max-body-size", "1g", lambda s: route(s).max_body_size == 1 << 30),
    (P + "max-body-size", "1000", lambda s: route(s).max_body_size == 1000),
    (P + "max-body-size", "0", lambda s: route(s).max_body_size == 0),
    (NGINX + "proxy-body-size", "1m", lambda s: route(s).max_body_size == 1 << 20),
    (P + "send-timeout", "15s", lambda s: pool(s).send_timeout == 15.0),
    (NGINX + "proxy-send-timeout", "90", lambda s: pool(s).send_timeout == 90.0),
    (NGINX + "proxy-read-timeout", "120", lambda s: pool(s).read_timeout == 120.0),
    (NGINX + "proxy-connect-timeout", "3", lambda s: pool(s).connect_timeout == 3.0),
    (P + "tls-ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384",
     lambda s: row(s).ciphers == "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"),
    (NGINX + "ssl-ciphers", "ECDHE+AESGCM", lambda s: row(s).ciphers == "ECDHE+AESGCM"),
    (P + "tls-prefer-server-ciphers", "false", lambda s: row(s).prefer_server_ciphers is False),
    (NGINX + "ssl-prefer-server-ciphers", "off", lambda s: row(s).prefer_server_ciphers is False),
    (NGINX + "ssl-prefer-server-ciphers", "on", lambda s: row(s).prefer_server_ciphers is True),
    (P + "client-auth", "optional_no_ca", lambda s: row(s).client_auth.mode == "optional_no_ca"),
    (NGINX + "auth-tls-verify-client", "optional_no_ca", lambda s: row(s).client_auth.mode == "optional_no_ca"),
    (P + "client-auth-match-cn", "CN=client-[0-9]+", lambda s: row(s).client_auth.match_cn == "CN=client-[0-9]+"),
    (NGINX + "auth-tls-match-cn", "CN=(alice|bob)$", lambda s: row(s).client_auth.match_cn == "CN=(alice|bob)$"),
    (P + "client-auth-error-page", "https://login.example.com/cert?x=1",
     lambda s: row(s).client_auth.error_page == "https://login.example.com/cert?x=1"),
    (NGINX + "auth-tls-error-page", "HTTP://err.example.com/",
     lambda s: row(s).client_auth.error_page == "http://err.example.com/"),
    (P + "backend-tls-versions", "TLSv1.3", lambda s: (pool(s).tls.min_version, pool(s).tls.max_version) == ("1.3",
                                                                                                          "1.3")),
    (NGINX + "proxy-ssl-protocols", "TLSv1.2", lambda s: (pool(s).tls.min_version, pool(s).tls.max_version) == (
        "1.2", "1.2")),
    (NGINX + "proxy-ssl-protocols", "TLSv1.3 TLSv1.2", lambda s: (pool(s).tls.min_version,
                                                                    pool(s).tls.max_version) == ("1.2", "1.3")),
    (P + "backend-ciphers", "ECDHE+CHACHA20", lambda s: pool(s).tls.ciphers == "ECDHE+CHACHA20"),
    (NGINX + "proxy-ssl-ciphers", "ECDHE+AESGCM", lambda s: pool(s).tls.ciphers == "ECDHE+AESGCM"),
    (P + "backend-verify-depth", "3", lambda s: pool(s).tls.verify_depth == 3),
    (NGINX + "proxy-ssl-verify-depth", "2", lambda s: pool(s).tls.verify_depth == 2),
]


@pytest.mark.parametrize(("key", "value", "check"), VALID, ids=[f"{k}={v}" for k, v, _ in VALID])
def test_valid_values_reach_the_snapshot(world: list[dict[str, Any]], key: str, value: str, check: Check) -> None:
    snap, problems = serve(world, {key: value})
    assert [p for p in problems if p.severity == "Error"] == []
    assert check(snap)


def test_defaults_when_unset(world: list[dict[str, Any]]) -> None:
    snap, _ = serve(world, {})
    assert route(snap).max_body_size == -1 and pool(snap).send_timeout == 60.0
    assert (row(snap).ciphers, row(snap).prefer_server_ciphers) == ("", True)
    assert row(snap).client_auth.match_cn == "" and row(snap).client_auth.error_page == ""
    tls = pool(snap).tls
    assert (tls.min_version, tls.max_version, tls.ciphers, tls.verify_depth) == ("1.2", "1.3", "", 0)


ARABIC_10 = "\u0661\u0660"  # Arabic-Indic "10": int() and \d accept it
FULLWIDTH_5 = "\uff15"
INVALID = [
    (P + "max-body-size", "1t"), (P + "max-body-size", "-1"), (P + "max-body-size", "1.5m"),
    (P + "max-body-size", "2000g"), (P + "max-body-size", ""), (NGINX + "proxy-body-size", "1 m"),
    (P + "send-timeout", "0s"), (P + "send-timeout", "2d"), (NGINX + "proxy-send-timeout", "60s"),
    (NGINX + "proxy-read-timeout", "-1"), (NGINX + "proxy-connect-timeout", "0"),
    (NGINX + "proxy-read-timeout", "1_0"), (NGINX + "proxy-read-timeout", "+10"),
    (P + "tls-ciphers", "NOT-A-CIPHER"), (NGINX + "ssl-ciphers", "eNULL-nothing"), (P + "tls-ciphers", ""),
    (P + "tls-ciphers", "ECDHE+AESGCM\x00"), (P + "tls-prefer-server-ciphers", "sure"),
    (P + "client-auth", "optional-no-ca"), (NGINX + "auth-tls-verify-client", "maybe"),
    (P + "client-auth-match-cn", "CN=(unclosed"), (NGINX + "auth-tls-match-cn", "alice"),
    (P + "client-auth-error-page", "/relative"), (P + "client-auth-error-page", "javascript:alert(1)"),
    (NGINX + "auth-tls-error-page", "https://x.example.com/a b"),
    (NGINX + "auth-tls-error-page", "https://x.example.com/\"><script>"),
    (P + "backend-tls-versions", "TLSv1.1 TLSv1.2"), (NGINX + "proxy-ssl-protocols", "SSLv3"),
    (NGINX + "proxy-ssl-protocols", "TLSv1"), (NGINX + "proxy-ssl-protocols", "TLSv1.4"),
    (NGINX + "proxy-ssl-protocols", ""), (P + "backend-ciphers", "NOPE"), (NGINX + "proxy-ssl-ciphers", "!ALL"),
    (P + "backend-verify-depth", "0"), (NGINX + "proxy-ssl-verify-depth", "11"),
]


@pytest.mark.parametrize(("key", "value"), INVALID, ids=[f"{k}={v!r}" for k, v in INVALID])
def test_invalid_values_are_errors_naming_ingress_annotation_and_value(world: list[dict[str, Any]], key: str,
                                                                       value: str) -> None:
    snap, problems = serve(world, {key: value})
    bad = [p for p in problems if p.reason == "InvalidAnnotation"]
    assert len(bad) == 1 and bad[0].severity == "Error"
    assert bad[0].field == f"metadata.annotations[{key}]" and repr(value) in bad[0].message
    assert str(bad[0].obj) == "Ingress shop/shop"
    assert route(snap).pool_id, "an invalid setting is ignored; the Ingress keeps serving"


# Every annotation whose value holds a number, with a value that is a valid number in ASCII.
NUMERIC = {
    P + "hsts": "max-age={}", P + "connect-timeout": "{}s", P + "read-timeout": "{}s", P + "send-timeout": "{}s",
    P + "max-body-size": "{}m", P + "backend-verify-depth": "{}", NGINX + "auth-tls-verify-depth": "{}",
    NGINX + "proxy-body-size": "{}k", NGINX + "proxy-connect-timeout": "{}", NGINX + "proxy-read-timeout": "{}",
    NGINX + "proxy-send-timeout": "{}", NGINX + "proxy-ssl-verify-depth": "{}",
}


def test_every_numeric_annotation_is_in_the_ascii_test() -> None:
    numeric_parsers = {ann.duration, ann.read_duration, ann.depth, ann.seconds, ann.read_seconds, ann.size, ann.hsts}
    assert {s.key for s in ann.SPECS if s.parse in numeric_parsers} == set(NUMERIC)


@pytest.mark.parametrize("key", sorted(NUMERIC))
@pytest.mark.parametrize("digits", [ARABIC_10, FULLWIDTH_5, "1\u0660"], ids=["arabic", "fullwidth", "mixed"])
def test_numbers_are_ascii_only(world: list[dict[str, Any]], key: str, digits: str) -> None:
    ascii_value = NUMERIC[key].format("5")
    _, problems = serve(world, {key: ascii_value})
    assert [p for p in problems if p.reason == "InvalidAnnotation"] == [], "the ASCII form is valid"
    _, problems = serve(world, {key: NUMERIC[key].format(digits)})
    assert [p.field for p in problems if p.reason == "InvalidAnnotation"] == [f"metadata.annotations[{key}]"]


@pytest.mark.parametrize(("native", "nginx", "value", "alias_value", "check"), [
    ("max-body-size", "proxy-body-size", "2m", "9m", lambda s: route(s).max_body_size == 2 << 20),
    ("send-timeout", "proxy-send-timeout", "7s", "99", lambda s: pool(s).send_timeout == 7.0),
    ("read-timeout", "proxy-read-timeout", "8s", "99", lambda s: pool(s).read_timeout == 8.0),
    ("tls-ciphers", "ssl-ciphers", "ECDHE+CHACHA20", "ECDHE+AESGCM", lambda s: row(s).ciphers == "ECDHE+CHACHA20"),
    ("client-auth", "auth-tls-verify-client", "required", "optional_no_ca",
     lambda s: row(s).client_auth.mode == "required"),
    ("backend-tls-versions", "proxy-ssl-protocols", "TLSv1.3", "TLSv1.2",
     lambda s: pool(s).tls.min_version == "1.3"),
    ("backend-verify-depth", "proxy-ssl-verify-depth", "4", "2", lambda s: pool(s).tls.verify_depth == 4),
])
def test_native_wins_over_nginx_alias(world: list[dict[str, Any]], native: str, nginx: str, value: str,
                                      alias_value: str, check: Check) -> None:
    snap, problems = serve(world, {P + native: value, NGINX + nginx: alias_value})
    assert [p for p in problems if p.severity == "Error"] == []
    assert check(snap)


def test_body_size_applies_to_every_route_of_that_ingress_only(world: list[dict[str, Any]]) -> None:
    snap, _ = run(
        k.ingress("limited", annotations={P + "max-body-size": "4k"},
                  paths=[("/a", "Prefix", "web", 80), ("/b", "Exact", "web", 80)]),
        k.ingress("other", paths=[("/c", "Prefix", "web", 80)]), *world,
    )
    sizes = {r.path: r.max_body_size for v in snap.virtual_hosts for r in v.routes}
    assert sizes == {"/a": 4096, "/b": 4096, "/c": -1}


def test_send_timeout_gives_a_distinct_pool(world: list[dict[str, Any]]) -> None:
    snap, _ = run(
        k.ingress("slow", annotations={P + "send-timeout": "5s"}, paths=[("/a", "Prefix", "web", 80)]),
        k.ingress("fast", paths=[("/b", "Prefix", "web", 80)]), *world,
    )
    assert sorted(p.send_timeout for p in snap.pools) == [5.0, 60.0]


@pytest.mark.parametrize("annotations", [
    {P + "tls-ciphers": "ECDHE+CHACHA20"}, {P + "tls-prefer-server-ciphers": "false"},
    {P + "client-auth-secret": "cas", P + "client-auth-match-cn": "CN=.*"},
    {P + "client-auth-secret": "cas", P + "client-auth": "optional_no_ca"},
])
def test_younger_ingress_with_other_host_tls_settings_is_refused(world: list[dict[str, Any]],
                                                                 annotations: dict[str, str]) -> None:
    base = {P + "client-auth-secret": "cas"} if P + "client-auth-secret" in annotations else {}
    snap, problems = run(
        k.ingress("old", tls_secret="a-tls", annotations=base),
        k.ingress("young", created="2026-05-01T00:00:00Z", tls_secret="a-tls", annotations=annotations,
                  paths=[("/open", "Prefix", "web", 80)]), *world,
    )
    assert [p.obj.name for p in problems if p.reason == "TLSSettingsConflict"] == ["young"]
    assert [r.path for r in next(v for v in snap.virtual_hosts if v.host == HOST).routes] == ["/"]


def test_client_cert_policy_without_client_auth_is_reported_ignored(world: list[dict[str, Any]]) -> None:
    snap, problems = run(k.ingress("shop", tls_secret="a-tls", annotations={
        P + "client-auth-match-cn": "CN=x", NGINX + "auth-tls-error-page": "https://e.example.com/"}), *world)
    assert row(snap).client_auth is None
    assert sorted(p.field for p in problems if p.reason == "AnnotationIgnored") == [
        f"metadata.annotations[{NGINX}auth-tls-error-page]", f"metadata.annotations[{P}client-auth-match-cn]"]


@pytest.mark.parametrize("key", [P + "backend-ciphers", P + "backend-verify-depth", P + "backend-tls-versions",
                                 P + "tls-ciphers"])
def test_tls_settings_outside_their_mode_are_reported_ignored(world: list[dict[str, Any]], key: str) -> None:
    value = {"backend-ciphers": "ECDHE+AESGCM", "backend-verify-depth": "2", "backend-tls-versions": "TLSv1.3",
             "tls-ciphers": "ECDHE+AESGCM"}[key.removeprefix(P)]
    _, problems = run(k.ingress("shop", annotations={key: value}), *world)  # plain HTTP Ingress
    assert [p.field for p in problems if p.reason == "AnnotationIgnored"] == [f"metadata.annotations[{key}]"]
