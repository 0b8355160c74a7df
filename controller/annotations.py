"""The annotation contract (design.md section 3): one table row per annotation, native and compatible.

Every annotation Portcullis reads is a row of ``SPECS``: its key, the setting it fills, a parser
that validates the value, and a doc line (``portcullis render --annotations`` prints the table).
Parsers are pure and raise ``ValueError`` with a message fit for an Event; ``parse_annotations``
turns those into problems naming the Ingress, the annotation and the bad value, and leaves the
setting unset (so the documented default applies and the Event says so).

Precedence: a native ``portcullis.io/`` row beats a compatible one for the same setting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from controller.problems import ObjectRef, Problem

NATIVE = "portcullis.io/"
NGINX = "nginx.ingress.kubernetes.io/"
OPENSHIFT = "route.openshift.io/"

MODES = ("passthrough", "offload", "reencrypt")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_HSTS_MAX_AGE = re.compile(r"^max-age=(\d{1,10})$", re.IGNORECASE)


@dataclass(frozen=True)
class SecretRef:
    """A Secret in the Ingress's own namespace (cross-namespace references are refused)."""

    name: str
    annotation: str


@dataclass(frozen=True)
class Settings:
    """What an Ingress's annotations ask for; None means "not set" (the documented default applies).

    ``origin`` maps each set field to the annotation that set it, so later stages can name it in
    problems ("ignored in passthrough mode", "Secret missing").
    """

    mode: str | None = None
    insecure_policy: str | None = None
    hsts: str | None = None  # "" means off
    backend_ca_secret: SecretRef | None = None
    backend_server_name: str | None = None
    backend_verify: bool | None = None
    backend_client_secret: SecretRef | None = None
    client_auth_secret: SecretRef | None = None
    client_auth: str | None = None  # required | optional | off (ingress-nginx "off")
    client_auth_depth: int | None = None
    client_cert_headers: bool | None = None
    proxy_protocol: str | None = None
    tls_min_version: str | None = None
    load_balance: str | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    origin: Mapping[str, str] = field(default_factory=dict)
    nginx_unverified_https: bool = False  # backend-protocol HTTPS without proxy-ssl-verify: ingress-nginx semantics


Parser = Callable[[str, "Context"], Any]


@dataclass(frozen=True)
class Context:
    namespace: str
    key: str


@dataclass(frozen=True)
class Spec:
    key: str
    setting: str
    parse: Parser
    doc: str
    values: str


# --- value parsers ----------------------------------------------------------------------------


def choice(*allowed: str, aliases: Mapping[str, str] | None = None) -> Parser:
    table = {a: a for a in allowed} | dict(aliases or {})

    def parse(value: str, _: Context) -> str:
        key = value.strip().lower()
        if key not in table:
            raise ValueError(f"must be one of {', '.join(sorted(table))}")
        return table[key]

    return parse


def boolean(value: str, _: Context) -> bool:
    key = value.strip().lower()
    if key in ("true", "on", "yes", "1"):
        return True
    if key in ("false", "off", "no", "0"):
        return False
    raise ValueError("must be true or false")


def duration(value: str, _: Context) -> float:
    """``5s``, ``500ms``, ``1m``, ``1h`` or bare seconds; between 1 ms and 1 hour."""
    match = _DURATION.match(value.strip())
    if not match:
        raise ValueError("must be a duration such as 5s, 500ms or 1m")
    seconds = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[match.group(2)]
    if not 0.001 <= seconds <= 3600:
        raise ValueError("must be between 1ms and 1h")
    return seconds


def hsts(value: str, _: Context) -> str:
    """Normalised header value, or "" for off; unknown directives are refused (typos would be silent)."""
    text = value.strip()
    if text.lower() in ("off", "false"):
        return ""
    max_age: str | None = None
    flags: list[str] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        age = _HSTS_MAX_AGE.match(part)
        if age:
            max_age = age.group(1)
        elif part.lower() == "includesubdomains":
            flags.append("includeSubDomains")
        elif part.lower() == "preload":
            flags.append("preload")
        else:
            raise ValueError(f"unknown HSTS directive {part!r} (max-age=N; includeSubDomains; preload, or off)")
    if max_age is None:
        raise ValueError("max-age=N is required (or off)")
    return "; ".join([f"max-age={max_age}", *sorted(set(flags), key=flags.index)])


def dns_name(value: str, _: Context) -> str:
    name = value.strip().lower().rstrip(".")
    if len(name) > 253 or not _DNS_NAME.match(name):
        raise ValueError("must be a DNS name")
    return name


def secret_name(value: str, ctx: Context) -> SecretRef:
    """A Secret name, or ``namespace/name`` (ingress-nginx style) naming the Ingress's own namespace."""
    text = value.strip()
    if "/" in text:
        namespace, _, text = text.partition("/")
        if namespace != ctx.namespace:
            raise ValueError(
                f"Secret must be in the Ingress's namespace {ctx.namespace!r} (cross-namespace references are refused)"
            )
    if len(text) > 253 or not _DNS_NAME.match(text):
        raise ValueError("must be a Secret name")
    return SecretRef(text, ctx.key)


def depth(value: str, _: Context) -> int:
    try:
        number = int(value.strip())
    except ValueError as exc:
        raise ValueError("must be an integer") from exc
    if not 1 <= number <= 10:
        raise ValueError("must be between 1 and 10")
    return number


def nginx_verify_client(value: str, _: Context) -> str:
    table = {"on": "required", "optional": "optional", "off": "off"}
    key = value.strip().lower()
    if key == "optional_no_ca":
        raise ValueError("optional_no_ca (accepting certificates nobody verified) is not supported; use optional")
    if key not in table:
        raise ValueError("must be on, optional or off")
    return table[key]


def nginx_backend_protocol(value: str, _: Context) -> str | None:
    key = value.strip().upper()
    if key == "HTTPS":
        return "reencrypt"
    if key == "HTTP":
        return None
    raise ValueError("only HTTP and HTTPS are supported")


def nginx_true_means(result: str) -> Parser:
    def parse(value: str, ctx: Context) -> str | None:
        return result if boolean(value, ctx) else None

    return parse


def nginx_ssl_redirect(value: str, ctx: Context) -> str:
    return "redirect" if boolean(value, ctx) else "allow"


def nginx_server_name_switch(value: str, ctx: Context) -> None:
    if not boolean(value, ctx):
        raise ValueError("off is not supported: Portcullis always sends the verified name as SNI")
    return None


# --- the table --------------------------------------------------------------------------------

_MODE = choice(*MODES, aliases={"edge": "offload", "bridge": "reencrypt", "re-encrypt": "reencrypt"})

SPECS: tuple[Spec, ...] = (
    Spec(NATIVE + "tls-mode", "mode", _MODE, "TLS handling for the Ingress's hosts",
         "passthrough | offload | reencrypt (edge, bridge, re-encrypt)"),
    Spec(NATIVE + "insecure-policy", "insecure_policy", choice("redirect", "allow", "deny"),
         "plain-HTTP behaviour for a TLS host (redirect is 308)", "redirect | allow | deny"),
    Spec(NATIVE + "hsts", "hsts", hsts, "Strict-Transport-Security on HTTPS responses",
         "max-age=N; includeSubDomains; preload | off"),
    Spec(NATIVE + "backend-ca-secret", "backend_ca_secret", secret_name,
         "trust for backend certificates (Secret key ca.crt)", "Secret name"),
    Spec(NATIVE + "backend-server-name", "backend_server_name", dns_name,
         "SNI sent to the backend and the name verified in its certificate", "DNS name"),
    Spec(NATIVE + "backend-verify", "backend_verify", boolean,
         "verify the backend certificate (false: insecure opt-out, Warning)", "true | false"),
    Spec(NATIVE + "backend-client-secret", "backend_client_secret", secret_name,
         "client certificate presented to the backend (kubernetes.io/tls)", "Secret name"),
    Spec(NATIVE + "client-auth-secret", "client_auth_secret", secret_name,
         "verify client certificates at the edge (Secret key ca.crt, optional ca.crl)", "Secret name"),
    Spec(NATIVE + "client-auth", "client_auth", choice("required", "optional"),
         "optional: verify if given, pass the result on", "required | optional"),
    Spec(NATIVE + "client-cert-headers", "client_cert_headers", boolean,
         "forward verified client certificate details as ssl-client-* headers", "true | false"),
    Spec(NATIVE + "proxy-protocol", "proxy_protocol", choice("v1", "v2", "off"),
         "PROXY header to passthrough backends", "v1 | v2 | off"),
    Spec(NATIVE + "tls-min-version", "tls_min_version", choice("1.2", "1.3"), "minimum TLS version per host",
         "1.2 | 1.3"),
    Spec(NATIVE + "load-balance", "load_balance", choice("round-robin", "least-conn", "client-ip-hash"),
         "endpoint choice", "round-robin | least-conn | client-ip-hash"),
    Spec(NATIVE + "connect-timeout", "connect_timeout", duration, "backend connect timeout", "duration (5s)"),
    Spec(NATIVE + "read-timeout", "read_timeout", duration, "backend read timeout", "duration (60s)"),
    # ingress-nginx (original semantics; insecure ones are flagged by the renderer)
    Spec(NGINX + "ssl-passthrough", "mode", nginx_true_means("passthrough"), "TLS passthrough", "true | false"),
    Spec(NGINX + "backend-protocol", "mode", nginx_backend_protocol, "HTTPS: TLS to the backend (not verified "
         "unless proxy-ssl-verify is on, as in ingress-nginx)", "HTTP | HTTPS"),
    Spec(NGINX + "proxy-ssl-secret", "backend_ca_secret", secret_name,
         "backend trust (ca.crt) and client certificate (tls.crt/tls.key)", "namespace/name"),
    Spec(NGINX + "proxy-ssl-verify", "backend_verify", boolean, "verify the backend certificate", "on | off"),
    Spec(NGINX + "proxy-ssl-name", "backend_server_name", dns_name, "name verified and sent as SNI", "DNS name"),
    Spec(NGINX + "proxy-ssl-server-name", "", nginx_server_name_switch, "SNI to the backend (always on)", "on"),
    Spec(NGINX + "ssl-redirect", "insecure_policy", nginx_ssl_redirect, "redirect plain HTTP", "true | false"),
    Spec(NGINX + "force-ssl-redirect", "insecure_policy", nginx_true_means("redirect"), "redirect plain HTTP",
         "true | false"),
    Spec(NGINX + "auth-tls-secret", "client_auth_secret", secret_name, "client CA (ca.crt, optional ca.crl)",
         "namespace/name"),
    Spec(NGINX + "auth-tls-verify-client", "client_auth", nginx_verify_client, "client certificate policy",
         "on | optional | off"),
    Spec(NGINX + "auth-tls-verify-depth", "client_auth_depth", depth, "client chain depth", "1-10"),
    Spec(NGINX + "auth-tls-pass-certificate-to-upstream", "client_cert_headers", boolean,
         "forward verified client certificate details", "true | false"),
    # OpenShift router
    Spec(OPENSHIFT + "termination", "mode", _MODE, "OpenShift Route termination", "edge | passthrough | reencrypt"),
    Spec(OPENSHIFT + "destination-ca-certificate-secret", "backend_ca_secret", secret_name,
         "backend trust for reencrypt (ca.crt)", "Secret name"),
)

SPEC_BY_KEY = {s.key: s for s in SPECS}


def parse_annotations(ref: ObjectRef, annotations: Mapping[str, str]) -> tuple[Settings, list[Problem]]:
    """Settings from one Ingress's annotations; native rows are applied last so they win."""
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    ordered = sorted((k for k in annotations if k in SPEC_BY_KEY), key=lambda k: (k.startswith(NATIVE), k))
    for key in ordered:
        spec = SPEC_BY_KEY[key]
        raw = annotations[key]
        try:
            value = spec.parse(raw, Context(ref.namespace, key))
        except ValueError as exc:
            problems.append(Problem(ref, "Error", "InvalidAnnotation", f"metadata.annotations[{key}]",
                                    f"invalid value {raw!r}: {exc}; setting ignored"))
            continue
        if not spec.setting or value is None:
            continue
        if key.startswith(NATIVE) or spec.setting not in origin:
            values[spec.setting] = value
            origin[spec.setting] = key
    for key in annotations:
        if key.startswith(NATIVE) and key not in SPEC_BY_KEY:
            problems.append(Problem(ref, "Warning", "UnknownAnnotation", f"metadata.annotations[{key}]",
                                    "unknown Portcullis annotation; ignored (see `portcullis render --annotations`)"))
    settings = replace(Settings(**values), origin=origin)
    # ingress-nginx proxies HTTPS backends without verifying them unless proxy-ssl-verify is on.
    if origin.get("mode") == NGINX + "backend-protocol" and "backend_verify" not in origin:
        settings = replace(settings, backend_verify=False, nginx_unverified_https=True)
    if origin.get("backend_ca_secret") == NGINX + "proxy-ssl-secret" and "backend_client_secret" not in origin:
        settings = replace(settings, backend_client_secret=settings.backend_ca_secret,
                           origin={**origin, "backend_client_secret": NGINX + "proxy-ssl-secret"})
    return settings, problems


def annotation_table() -> str:
    """Markdown table of every annotation, for docs and ``portcullis render --annotations``."""
    lines = ["| annotation | values | meaning |", "|---|---|---|"]
    lines.extend(f"| `{s.key}` | {s.values.replace('|', chr(92) + '|')} | {s.doc} |" for s in SPECS)
    return "\n".join(lines)
