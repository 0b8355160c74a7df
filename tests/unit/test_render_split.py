"""The renderer against golden files: ``deploy/examples`` and generated worlds of a few hundred Ingresses that hit
every mode, annotation family, conflict kind, missing and broken reference must give, byte for byte, the snapshot
JSON and the problems recorded in ``golden/render/``.

The golden files were recorded from the renderer after the plan/merge split, which gave on every case here the same
bytes and problems as the renderer the split replaced (``controller/render.py`` at cd14781, the reference this test
once loaded from git). They live in the tree, not in git history, so the suite passes on a source tarball
(``git archive``, a distribution's build) as in a clone.

``golden/render/inputs.sha256`` holds a digest of each case's inputs and config: when an input moves (an example
edited, the generator changed) the test says so instead of blaming the renderer. The generator draws only from
``random.Random.random()``, the one draw Python promises to keep across versions for a seed, so a packager's
Python generates the same worlds. A deliberate behaviour change (or a changed input) rewrites the files with
``.venv/bin/python -m tests.unit.test_render_split`` and the diff is reviewed with the change.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from controller.manifests import load_paths
from controller.model import Inputs
from controller.problems import Problem
from controller.render import RenderConfig, render
from dataplane.snapshot import Snapshot, validate
from tests.unit import objects as k

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden" / "render"
DIGESTS = GOLDEN / "inputs.sha256"
P = "portcullis.io/"
NGINX = "nginx.ingress.kubernetes.io/"
NS = "demo"
T = TypeVar("T")


def _examples() -> list[dict[str, Any]]:
    return load_paths([str(ROOT / "deploy/examples")])


_SECRETS = ("edge-tls", "bridge-tls", "legacy-tls", "mtls-tls", "tls-app-serving", "missing-tls")
_CAS = ("example-ca", "missing-ca", "edge-tls")  # edge-tls has no ca.crt: an unusable CA
_ODD_HOSTS = ("*.portcullis.test", "", "bad_host.test")
_ANNOTATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (P + "tls-mode", ("passthrough", "offload", "reencrypt", "edge", "bridge", "bogus")),
    (P + "insecure-policy", ("redirect", "allow", "deny", "maybe")),
    (P + "hsts", ("max-age=60", "off", "max-age=1; preload; includeSubDomains", "nope")),
    (P + "backend-ca-secret", _CAS),
    (P + "backend-server-name", ("web.demo.svc", "secure-web.demo.svc", "not a name")),
    (P + "backend-verify", ("true", "false")),
    (P + "backend-client-secret", ("edge-tls", "missing-tls")),
    (P + "client-auth-secret", _CAS),
    (P + "client-auth", ("required", "optional", "optional_no_ca", "sometimes")),
    (P + "client-auth-match-cn", ("CN=client", "CN=[")),
    (P + "client-auth-error-page", ("https://errors.test/denied", "ftp://x")),
    (P + "client-cert-headers", ("true", "false")),
    (P + "proxy-protocol", ("v1", "v2", "off", "v3")),
    (P + "tls-min-version", ("1.2", "1.3", "1.1")),
    (P + "tls-ciphers", ("ECDHE+AESGCM", "NOTACIPHER")),
    (P + "tls-prefer-server-ciphers", ("true", "false")),
    (P + "load-balance", ("round-robin", "least-conn", "client-ip-hash", "random")),
    (P + "connect-timeout", ("2s", "500ms", "2d")),
    (P + "read-timeout", ("30s", "1m")),
    (P + "send-timeout", ("45s",)),
    (P + "max-body-size", ("1m", "0", "512k", "huge")),
    (P + "allow-underscore-headers", ("true", "false")),
    (P + "backend-tls-versions", ("TLSv1.2", "TLSv1.3", "TLSv1.2 TLSv1.3", "TLSv1")),
    (P + "backend-ciphers", ("ECDHE+AESGCM",)),
    (P + "backend-verify-depth", ("3", "11")),
    (P + "unknown-thing", ("x",)),
    (NGINX + "ssl-passthrough", ("true", "false")),
    # GRPC/GRPCS and portcullis.io/backend-protocol, http2 (issue 13) came after the split, whose reference renderer
    # lacked them: test_render_backend_protocol.py covers them; AJP keeps the refused-value path exercised.
    (NGINX + "backend-protocol", ("HTTPS", "HTTP", "AJP")),
    (NGINX + "proxy-ssl-secret", ("demo/example-ca", "demo/bridge-tls", "other/example-ca")),
    (NGINX + "proxy-ssl-verify", ("on", "off")),
    (NGINX + "ssl-redirect", ("true", "false")),
    (NGINX + "force-ssl-redirect", ("true",)),
    (NGINX + "auth-tls-secret", ("demo/example-ca",)),
    (NGINX + "auth-tls-verify-client", ("on", "optional", "off")),
    (NGINX + "proxy-body-size", ("8m",)),
    (NGINX + "proxy-read-timeout", ("120",)),
    (NGINX + "proxy-ssl-protocols", ("TLSv1.3",)),
    ("route.openshift.io/termination", ("edge", "passthrough", "reencrypt")),
)
_PATHS = ("/", "/api", "/api/", "/static", "/x y", "relative", "/a/b/")
_PATH_TYPES = ("Prefix", "Exact", "ImplementationSpecific", "Regex")
_SERVICES = ("web", "secure-web", "tls-app", "nothing-ready", "missing")


def _backends() -> list[dict[str, Any]]:
    # No appProtocol kubernetes.io/h2c port: it selects HTTP/2 (issue 13), which came after the split (the worlds
    # were checked then against the renderer before it); test_render_backend_protocol.py covers it.
    return [
        k.service("web", namespace=NS), k.endpoints("web", "10.0.0.1", "10.0.0.2", namespace=NS),
        k.service("secure-web", port=443, port_name="https", app_protocol="https", namespace=NS),
        k.endpoints("secure-web", "10.0.1.1", port=8443, port_name="https", namespace=NS),
        k.service("tls-app", port=443, port_name="tls", namespace=NS),
        k.endpoints("tls-app", "10.0.2.1", port=8443, port_name="tls", namespace=NS),
        k.service("nothing-ready", namespace=NS), k.endpoints("nothing-ready", not_ready=("10.0.3.1",), namespace=NS),
        k.ingress_class("portcullis"),
    ]


def _secrets() -> list[dict[str, Any]]:
    return [o for o in _examples() if o["kind"] == "Secret"]


class _Draw:
    """Choices from ``random.Random.random()`` alone: ``choice``, ``sample`` and ``randrange`` are free to change
    between Python versions for a seed, ``random()`` is not (the ``random`` module's reproducibility note)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def random(self) -> float:
        return self._rng.random()

    def below(self, n: int) -> int:
        return min(int(self._rng.random() * n), n - 1)

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.below(len(seq))]

    def sample(self, seq: Sequence[T], n: int) -> list[T]:
        pool = list(seq)
        for i in range(n):  # a partial Fisher-Yates shuffle: n distinct items
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:n]


def _random_ingress(rng: _Draw, index: int, hosts: tuple[str, ...]) -> dict[str, Any]:
    def port(service: str) -> int | str:
        return rng.choice({"web": (80, "http", 81), "secure-web": (443, "https"), "tls-app": (443, "tls")}
                          .get(service, (80,)))

    rules = []
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
        paths = []
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            service = rng.choice(_SERVICES)
            paths.append({"path": rng.choice(_PATHS), "pathType": rng.choice(_PATH_TYPES),
                          "backend": {"service": {"name": service, "port": _port(port(service))}}})
        rule: dict[str, Any] = {"http": {"paths": paths}} if paths or rng.random() < 0.5 else {}
        host = rng.choice(hosts)
        if host:
            rule["host"] = host
        rules.append(rule)
    spec: dict[str, Any] = {"rules": rules}
    if rng.random() < 0.9:
        spec["ingressClassName"] = rng.choice(("portcullis", "portcullis", "portcullis", "other"))
    if rng.random() < 0.6:
        spec["tls"] = [{**({"hosts": rng.sample(hosts[:-2], rng.choice((0, 1, 2)))}),
                        **({"secretName": rng.choice(_SECRETS)} if rng.random() < 0.85 else {})}
                       for _ in range(rng.choice((1, 1, 2)))]
    if rng.random() < 0.2:
        service = rng.choice(_SERVICES)
        spec["defaultBackend"] = {"service": {"name": service, "port": _port(port(service))}}
    annotations = {key: rng.choice(values) for key, values in rng.sample(_ANNOTATIONS, rng.choice((0, 1, 2, 4, 7)))}
    day = 1 + rng.below(27)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": f"ing-{index}", "namespace": NS, "annotations": annotations,
                         "creationTimestamp": f"2026-01-{day:02d}T00:00:00Z"},
            "spec": spec}


def _port(value: int | str) -> dict[str, Any]:
    return {"number": value} if isinstance(value, int) else {"name": value}


def _world(seed: int, count: int, host_count: int) -> list[dict[str, Any]]:
    """``host_count`` small: most Ingresses fight over the same hosts; large: most hosts are served."""
    rng = _Draw(seed)
    hosts = tuple(f"h{i}.portcullis.test" for i in range(host_count)) + _ODD_HOSTS
    return [*_backends(), *_secrets(), *(_random_ingress(rng, i, hosts) for i in range(count))]


CONFIGS = (RenderConfig(), RenderConfig(default_certificate="demo/edge-tls", now=1_800_000_000),
           RenderConfig(watch_namespaces=("demo",), default_certificate="demo/missing"))


@dataclass(frozen=True)
class Case:
    name: str
    objects: list[dict[str, Any]]
    config: RenderConfig

    def digest(self) -> str:
        text = json.dumps(self.objects, sort_keys=True, separators=(",", ":")) + "\n" + repr(self.config)
        return hashlib.sha256(text.encode()).hexdigest()


def _example_case(index: int) -> Case:
    return Case(f"examples-{index}", _examples(), CONFIGS[index])


def _world_case(seed: int, host_count: int) -> Case:
    return Case(f"world-{seed}-{host_count}", _world(seed, 300, host_count), CONFIGS[seed % len(CONFIGS)])


EXAMPLES = range(len(CONFIGS))
WORLDS = [(seed, hosts) for seed in range(3) for hosts in (12, 400)]


def _all_cases() -> list[Case]:
    return [*map(_example_case, EXAMPLES), *(_world_case(seed, hosts) for seed, hosts in WORLDS)]


def _problem_lines(problems: list[Problem]) -> str:
    """One problem a line, so a behaviour change reads as a diff of problems."""
    return "".join(json.dumps([p.obj.kind, p.obj.namespace, p.obj.name, p.severity, p.reason, p.field, p.message])
                   + "\n" for p in problems)


def _rendered(case: Case) -> tuple[Snapshot, str, str]:
    """The snapshot, and the two golden texts: indented snapshot JSON (its canonical form, indented so a change
    is a readable diff) and the problem lines."""
    inputs, _ = Inputs.from_objects(case.objects)
    snapshot, problems = render(inputs, case.config)
    return snapshot, snapshot.to_json(indent=1) + "\n", _problem_lines(problems)


def _recorded_digests() -> dict[str, str]:
    lines = DIGESTS.read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines)}


def _check(case: Case) -> str:
    recorded = _recorded_digests().get(case.name)
    assert recorded == case.digest(), (
        f"the inputs of {case.name} are not those the golden files were recorded from (an example or the generator "
        "changed): re-record with `python -m tests.unit.test_render_split` and review the diff")
    snapshot, snapshot_text, problem_text = _rendered(case)
    assert problem_text.splitlines() == (GOLDEN / f"{case.name}.problems.jsonl").read_text().splitlines()
    golden_snapshot = (GOLDEN / f"{case.name}.snapshot.json").read_text()
    if snapshot_text != golden_snapshot:  # a structural diff names the field; the text check below the bytes
        assert json.loads(snapshot_text) == json.loads(golden_snapshot)
    assert snapshot_text == golden_snapshot
    assert validate(snapshot, check_pem=False) == []
    return snapshot_text


@pytest.mark.parametrize("index", EXAMPLES)
def test_examples_render_as_recorded(index: int) -> None:
    _check(_example_case(index))


@pytest.mark.parametrize(("seed", "host_count"), WORLDS)
def test_generated_worlds_render_as_recorded(seed: int, host_count: int) -> None:
    case = _world_case(seed, host_count)
    text = _check(case)
    # the generated world really exercises the renderer: hosts of every mode served, many kinds of problem
    assert text.count('"host"') > 10
    if host_count > 100:
        assert '"mode": "passthrough"' in text and '"client_auth": {' in text and '"tls": {' in text
    reasons = {json.loads(line)[4] for line in (GOLDEN / f"{case.name}.problems.jsonl").read_text().splitlines()}
    assert len(reasons) > 15


def test_every_golden_file_belongs_to_a_case() -> None:
    """A case renamed or dropped leaves no stale golden file behind that nothing checks."""
    names = {case.name for case in _all_cases()}
    expected = {"inputs.sha256"} | {f"{n}.{kind}" for n in names for kind in ("snapshot.json", "problems.jsonl")}
    assert {p.name for p in GOLDEN.iterdir()} == expected
    assert set(_recorded_digests()) == names


def write_golden() -> None:
    """Re-record every golden file from today's renderer (after a deliberate behaviour change; review the diff)."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for stale in GOLDEN.iterdir():
        stale.unlink()
    digests = []
    for case in _all_cases():
        _, snapshot_text, problem_text = _rendered(case)
        (GOLDEN / f"{case.name}.snapshot.json").write_text(snapshot_text)
        (GOLDEN / f"{case.name}.problems.jsonl").write_text(problem_text)
        digests.append(f"{case.digest()}  {case.name}\n")
    DIGESTS.write_text("".join(digests))
    print(f"recorded {len(digests)} cases in {GOLDEN.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    write_golden()
