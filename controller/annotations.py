"""The annotation contract (docs/annotations.md): one table row per annotation, native and compatible.

Every annotation Portcullis reads is a row of ``SPECS``: its key, the setting it fills, a parser
that validates the value, and a doc line (``portcullis render --annotations`` prints the table).
Parsers are pure and raise ``ValueError`` with a message fit for an Event; ``parse_annotations``
turns those into problems naming the Ingress, the annotation and the bad value, and leaves the
setting unset (so the documented default applies and the Event says so).

Precedence: a native ``portcullis.io/`` row beats a compatible one for the same setting.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, get_args

from controller.problems import ObjectRef, Problem
from dataplane.limits import parse_whitelist
from dataplane.snapshot import (
    BackendProtocol,
    ClientAuthMode,
    InsecurePolicy,
    LoadBalance,
    ProxyProtocol,
    TLSVersion,
)

NATIVE = "portcullis.io/"
NGINX = "nginx.ingress.kubernetes.io/"
OPENSHIFT = "route.openshift.io/"

# The settings' value types are the snapshot's own literals, so a parsed value needs no cast to reach it.
Mode = Literal["passthrough", "offload", "reencrypt"]  # the TLS mode an annotation asks for
ClientAuthSetting = ClientAuthMode | Literal["off"]  # ingress-nginx's "off" turns a compatible CA annotation off
MODES: tuple[Mode, ...] = get_args(Mode)
# portcullis.io/backend-protocol: what requests are forwarded to the backend as (gRPC is HTTP/2).
BackendProtocolSetting = Literal["http1", "h2c", "h2", "grpc", "grpcs"]
BACKEND_PROTOCOLS: tuple[BackendProtocolSetting, ...] = get_args(BackendProtocolSetting)
# Each value's wire protocol (Pool.protocol) and whether it asks for TLS to the backend (None: tls-mode decides).
BACKEND_WIRE: dict[BackendProtocolSetting, tuple[BackendProtocol, bool | None]] = {
    "http1": ("http1", None), "h2c": ("h2", False), "grpc": ("h2", False), "h2": ("h2", True), "grpcs": ("h2", True),
}
# ingress-nginx backend-protocol values and the native value each sets (HTTP/HTTPS set only the mode, as before).
_NGINX_PROTOCOLS: dict[str, BackendProtocolSetting | None] = {"HTTP": None, "HTTPS": None, "GRPC": "grpc",
                                                              "GRPCS": "grpcs"}
# Pairs that mean the same, so setting both is no conflict (GRPCS/grpcs: the native one verifies the backend).
_SAME_PROTOCOL = {("HTTP", "http1"), ("GRPC", "grpc"), ("GRPC", "h2c"), ("GRPCS", "grpcs"), ("GRPCS", "h2")}
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
# A read timeout also bounds the silence of the Ingress's upgraded (WebSocket) connections, as ingress-nginx's
# proxy-read-timeout does, and users set 86400 for long-lived sockets: up to 7 days, where connect and send timeouts
# stop at 1 hour. (ingress-nginx sets no bound; beyond a week a value is likelier a unit slip than a wish.)
MAX_READ_TIMEOUT = 7 * 86400
READ_TIMEOUT_MEANING = "backend read timeout; also how long an upgraded (WebSocket) connection may stay silent"
# ASCII digits only: Python's \d and int() accept any Unicode digit (Arabic-Indic "10" is 10) and int() takes "1_0".
_DURATION = re.compile(r"^([0-9]{1,7}(?:\.[0-9]{1,6})?)(ms|s|m|h)?$", re.ASCII)
_HSTS_MAX_AGE = re.compile(r"^max-age=([0-9]{1,10})$", re.IGNORECASE | re.ASCII)
_INTEGER = re.compile(r"^[0-9]{1,9}$", re.ASCII)
_SIZE = re.compile(r"^([0-9]{1,15})([kmg]?)$", re.IGNORECASE | re.ASCII)
_TLS_PROTOCOLS: dict[str, TLSVersion] = {"tlsv1.2": "1.2", "tlsv1.3": "1.3"}
_OLD_PROTOCOLS = ("sslv2", "sslv3", "tlsv1", "tlsv1.1")
MAX_BODY_SIZE = 1 << 40  # 1 TiB: beyond any real limit, and exact in JSON


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

    mode: Mode | None = None
    insecure_policy: InsecurePolicy | None = None
    hsts: str | None = None  # "" means off
    backend_ca_secret: SecretRef | None = None
    backend_server_name: str | None = None
    backend_verify: bool | None = None
    backend_client_secret: SecretRef | None = None
    client_auth_secret: SecretRef | None = None
    client_auth: ClientAuthSetting | None = None
    client_auth_depth: int | None = None
    client_cert_headers: bool | None = None
    proxy_protocol: ProxyProtocol | None = None
    tls_min_version: TLSVersion | None = None
    load_balance: LoadBalance | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    send_timeout: float | None = None
    max_body_size: int | None = None  # bytes, 0: no limit
    tls_ciphers: str | None = None
    tls_prefer_server_ciphers: bool | None = None
    client_auth_match_cn: str | None = None
    client_auth_error_page: str | None = None
    backend_tls_versions: tuple[TLSVersion, TLSVersion] | None = None  # (min, max)
    backend_ciphers: str | None = None
    backend_verify_depth: int | None = None
    allow_underscore_headers: bool | None = None
    access_log: bool | None = None  # None: logged (the data plane's --access-log decides the format)
    limit_connections: int | None = None  # concurrent connections per client IP to the Ingress's TLS hosts
    limit_rps: int | None = None  # requests a second per client IP to the Ingress's routes (burst 5x)
    limit_whitelist: tuple[str, ...] | None = None  # client CIDRs exempt from both
    backend_protocol: BackendProtocolSetting | None = None  # None: http1
    http2: bool | None = None  # None: ALPN offers h2 on the Ingress's terminated hosts
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


T = TypeVar("T", bound=str)


def choice(allowed: tuple[T, ...], aliases: Mapping[str, T] | None = None) -> Callable[[str, Context], T]:
    """One of ``allowed`` (a literal type's ``get_args``, so the parser returns that type), case-insensitive."""
    table: dict[str, T] = {a: a for a in allowed} | dict(aliases or {})

    def parse(value: str, _: Context) -> T:
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
    return _duration(value, 3600, "1h")


def read_duration(value: str, _: Context) -> float:
    """A read timeout: as ``duration``, up to ``MAX_READ_TIMEOUT`` (it bounds WebSockets' silence too)."""
    return _duration(value, MAX_READ_TIMEOUT, "168h")


def _duration(value: str, most: float, most_text: str) -> float:
    match = _DURATION.match(value.strip())
    if not match:
        raise ValueError("must be a duration such as 5s, 500ms or 1m")
    seconds = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[match.group(2)]
    if not 0.001 <= seconds <= most:
        raise ValueError(f"must be between 1ms and {most_text}")
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


def integer(value: str) -> int:
    """A non-negative ASCII decimal integer (no sign, no "_", no Unicode digits)."""
    text = value.strip()
    if not _INTEGER.match(text):
        raise ValueError("must be a whole number written with the digits 0-9")
    return int(text)


def limit(value: str, _: Context) -> int:
    """limit-connections / limit-rps: a count per client IP; 0 turns the limit off."""
    number = integer(value)
    if number > 1_000_000:
        raise ValueError("must be at most 1000000 (0: no limit)")
    return number


def cidrs(value: str, _: Context) -> tuple[str, ...]:
    """limit-whitelist: comma-separated CIDRs or addresses (ingress-nginx's syntax)."""
    entries = tuple(e.strip() for e in value.split(",") if e.strip())
    problems = parse_whitelist(entries)[1]
    if problems:
        raise ValueError("; ".join(problems))
    if len(entries) > 1000:
        raise ValueError("at most 1000 entries")
    return entries


def depth(value: str, _: Context) -> int:
    number = integer(value)
    if not 1 <= number <= 10:
        raise ValueError("must be between 1 and 10")
    return number


def seconds(value: str, _: Context) -> float:
    """ingress-nginx timeouts: plain seconds (``"60"``); 1 s to 1 hour."""
    return _seconds(value, 3600)


def read_seconds(value: str, _: Context) -> float:
    """``proxy-read-timeout``: as ``seconds``, up to ``MAX_READ_TIMEOUT`` (it bounds WebSockets' silence too)."""
    return _seconds(value, MAX_READ_TIMEOUT)


def _seconds(value: str, most: int) -> float:
    number = integer(value)
    if not 1 <= number <= most:
        raise ValueError(f"must be a number of seconds between 1 and {most}")
    return float(number)


def size(value: str, _: Context) -> int:
    """nginx size syntax: bytes, or a number with k, m or g (1024-based); 0 means no limit."""
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError("must be a size such as 1m, 512k or a number of bytes (0: no limit)")
    number = int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    if number > MAX_BODY_SIZE:
        raise ValueError("must be at most 1024g (use 0 for no limit)")
    return number


def ciphers(value: str, _: Context) -> str:
    """An OpenSSL TLS 1.2 cipher list, checked by OpenSSL itself so a data plane never refuses it."""
    text = " ".join(value.split())
    if not text or not text.isascii() or any(not c.isprintable() for c in text) or len(text) > 1024:
        raise ValueError("must be an OpenSSL cipher list")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(text)
    except ssl.SSLError as exc:
        raise ValueError("OpenSSL selects no cipher from this list") from exc
    return text


def tls_versions(value: str, _: Context) -> tuple[TLSVersion, TLSVersion]:
    """ingress-nginx ``proxy-ssl-protocols`` (``TLSv1.2 TLSv1.3``) as (min, max); below TLS 1.2 is refused."""
    names = value.replace(",", " ").lower().split()
    if not names:
        raise ValueError("must list TLSv1.2 and/or TLSv1.3")
    old = [n for n in names if n in _OLD_PROTOCOLS]
    if old:
        raise ValueError(f"{', '.join(sorted(set(old)))} is insecure and refused; use TLSv1.2 and/or TLSv1.3")
    unknown = [n for n in names if n not in _TLS_PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol {unknown[0]!r}; use TLSv1.2 and/or TLSv1.3")
    versions = sorted({_TLS_PROTOCOLS[n] for n in names})
    return versions[0], versions[-1]


def dn_regex(value: str, _: Context) -> str:
    """A regular expression searched in the client certificate's subject DN (ingress-nginx ``CN=regex``)."""
    text = value.strip()
    if not text or len(text) > 1024 or any(not c.isprintable() for c in text):
        raise ValueError("must be a regular expression such as CN=client-[0-9]+")
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a regular expression ({exc})") from exc
    return text


def error_page(value: str, _: Context) -> str:
    """An absolute http(s) URL (the data plane answers 302 with it in Location, so no spaces or quotes)."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    host = rest.split("/", 1)[0]
    if (not sep or scheme.lower() not in ("http", "https") or not host or len(text) > 2048
            or any(c.isspace() or not c.isprintable() or c in "\"<>\\" for c in text) or not text.isascii()):
        raise ValueError("must be an absolute http:// or https:// URL")
    return f"{scheme.lower()}://{rest}"


def nginx_match_cn(value: str, ctx: Context) -> str:
    """ingress-nginx requires the ``CN=`` form; the whole value is the regex (as nginx uses it)."""
    if not value.strip().startswith("CN="):
        raise ValueError("must have the form CN=regex")
    return dn_regex(value, ctx)


def nginx_verify_client(value: str, _: Context) -> ClientAuthSetting:
    table: dict[str, ClientAuthSetting] = {
        "on": "required", "optional": "optional", "optional_no_ca": "optional_no_ca", "off": "off",
    }
    key = value.strip().lower()
    if key not in table:
        raise ValueError("must be on, optional, optional_no_ca or off")
    return table[key]


def nginx_backend_protocol(value: str, _: Context) -> Mode | None:
    """The mode ingress-nginx's value asks for (HTTPS, GRPCS: TLS to the backend); the protocol is set apart."""
    key = value.strip().upper()
    if key not in _NGINX_PROTOCOLS:
        raise ValueError("only HTTP, HTTPS, GRPC and GRPCS are supported (AJP, FCGI and AUTO_HTTP are not)")
    return "reencrypt" if key in ("HTTPS", "GRPCS") else None


def nginx_true_means(result: T) -> Callable[[str, Context], T | None]:
    def parse(value: str, ctx: Context) -> T | None:
        return result if boolean(value, ctx) else None

    return parse


def nginx_ssl_redirect(value: str, ctx: Context) -> InsecurePolicy:
    return "redirect" if boolean(value, ctx) else "allow"


def nginx_server_name_switch(value: str, ctx: Context) -> None:
    if not boolean(value, ctx):
        raise ValueError("off is not supported: Portcullis always sends the verified name as SNI")
    return None


# --- the table --------------------------------------------------------------------------------

_MODE = choice(MODES, aliases={"edge": "offload", "bridge": "reencrypt", "re-encrypt": "reencrypt"})
_INSECURE_POLICIES: tuple[InsecurePolicy, ...] = get_args(InsecurePolicy)
_CLIENT_AUTH_MODES: tuple[ClientAuthMode, ...] = get_args(ClientAuthMode)
_PROXY_PROTOCOLS: tuple[ProxyProtocol, ...] = get_args(ProxyProtocol)
_TLS_VERSIONS: tuple[TLSVersion, ...] = get_args(TLSVersion)
_LOAD_BALANCES: tuple[LoadBalance, ...] = get_args(LoadBalance)

SPECS: tuple[Spec, ...] = (
    Spec(NATIVE + "tls-mode", "mode", _MODE, "TLS handling for the Ingress's hosts",
         "passthrough | offload | reencrypt (edge, bridge, re-encrypt)"),
    Spec(NATIVE + "insecure-policy", "insecure_policy", choice(_INSECURE_POLICIES),
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
    Spec(NATIVE + "client-auth", "client_auth", choice(_CLIENT_AUTH_MODES),
         "optional: verify if given, pass the result on; optional_no_ca: accept any certificate, forward it "
         "marked unverified unless it verified", "required | optional | optional_no_ca"),
    Spec(NATIVE + "client-auth-match-cn", "client_auth_match_cn", dn_regex,
         "regex searched in the verified client subject DN; no match: 403", "regex (CN=name)"),
    Spec(NATIVE + "client-auth-error-page", "client_auth_error_page", error_page,
         "missing, failed or unmatched client certificate: 302 to this URL", "http(s) URL"),
    Spec(NATIVE + "client-cert-headers", "client_cert_headers", boolean,
         "forward verified client certificate details as ssl-client-* headers", "true | false"),
    Spec(NATIVE + "proxy-protocol", "proxy_protocol", choice(_PROXY_PROTOCOLS),
         "PROXY header to passthrough backends", "v1 | v2 | off"),
    Spec(NATIVE + "tls-min-version", "tls_min_version", choice(_TLS_VERSIONS), "minimum TLS version per host",
         "1.2 | 1.3"),
    Spec(NATIVE + "tls-ciphers", "tls_ciphers", ciphers, "TLS 1.2 cipher list per host (TLS 1.3 suites are fixed)",
         "OpenSSL cipher list"),
    Spec(NATIVE + "tls-prefer-server-ciphers", "tls_prefer_server_ciphers", boolean,
         "server's cipher order wins (per host)", "true | false (true)"),
    Spec(NATIVE + "load-balance", "load_balance", choice(_LOAD_BALANCES),
         "endpoint choice", "round-robin | least-conn | client-ip-hash"),
    Spec(NATIVE + "connect-timeout", "connect_timeout", duration, "backend connect timeout", "duration (5s)"),
    Spec(NATIVE + "read-timeout", "read_timeout", read_duration, READ_TIMEOUT_MEANING, "duration (60s)"),
    Spec(NATIVE + "send-timeout", "send_timeout", duration, "backend must accept written request bytes within it",
         "duration (60s)"),
    Spec(NATIVE + "max-body-size", "max_body_size", size, "request body limit (413 above it)",
         "size: 1m, 512k, bytes; 0 = no limit"),
    Spec(NATIVE + "allow-underscore-headers", "allow_underscore_headers", boolean,
         "forward client header names containing '_' (default: dropped, as nginx; trusted names never pass)",
         "true | false (false)"),
    Spec(NATIVE + "access-log", "access_log", boolean,
         "one access-log line per request (passthrough: per connection); false: none for this Ingress",
         "true | false (true)"),
    Spec(NATIVE + "backend-protocol", "backend_protocol", choice(BACKEND_PROTOCOLS),
         "what requests are forwarded to the backend as: h2c and grpc HTTP/2 cleartext, h2 and grpcs HTTP/2 over "
         "TLS (verified as reencrypt, whatever the tls-mode); gRPC trailers kept; passthrough: ignored",
         "http1 | h2c | h2 | grpc | grpcs (http1)"),
    Spec(NATIVE + "http2", "http2", boolean,
         "offer HTTP/2 (ALPN h2, then http/1.1) on the Ingress's terminated hosts; false: HTTP/1.1 only",
         "true | false (true)"),
    Spec(NATIVE + "backend-tls-versions", "backend_tls_versions", tls_versions, "TLS versions offered to the backend",
         "TLSv1.2 TLSv1.3"),
    Spec(NATIVE + "backend-ciphers", "backend_ciphers", ciphers, "TLS 1.2 cipher list offered to the backend",
         "OpenSSL cipher list"),
    Spec(NATIVE + "backend-verify-depth", "backend_verify_depth", depth, "longest backend certificate chain",
         "1-10"),
    Spec(NATIVE + "limit-connections", "limit_connections", limit,
         "concurrent connections per client IP to the Ingress's TLS hosts, checked once the SNI is known; "
         "beyond, closed before the handshake", "count (0: none)"),
    Spec(NATIVE + "limit-rps", "limit_rps", limit,
         "requests a second per client IP to the Ingress's routes (burst 5x); beyond, 429 with Retry-After",
         "count (0: none)"),
    Spec(NATIVE + "limit-whitelist", "limit_whitelist", cidrs, "client addresses exempt from both limits",
         "CIDR list: 10.0.0.0/8,192.168.1.7"),
    # ingress-nginx (original semantics; insecure ones are flagged by the renderer)
    Spec(NGINX + "ssl-passthrough", "mode", nginx_true_means("passthrough"), "TLS passthrough", "true | false"),
    Spec(NGINX + "backend-protocol", "mode", nginx_backend_protocol, "HTTPS, GRPCS: TLS to the backend (not "
         "verified unless proxy-ssl-verify is on, as in ingress-nginx); GRPC, GRPCS: HTTP/2 to the backend",
         "HTTP | HTTPS | GRPC | GRPCS"),
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
         "on | optional | optional_no_ca | off"),
    Spec(NGINX + "auth-tls-match-cn", "client_auth_match_cn", nginx_match_cn, "regex searched in the client subject DN",
         "CN=regex"),
    Spec(NGINX + "auth-tls-error-page", "client_auth_error_page", error_page,
         "redirect target when the client certificate fails", "http(s) URL"),
    Spec(NGINX + "ssl-ciphers", "tls_ciphers", ciphers, "TLS 1.2 cipher list per host", "OpenSSL cipher list"),
    Spec(NGINX + "ssl-prefer-server-ciphers", "tls_prefer_server_ciphers", boolean, "server's cipher order wins",
         "true | false"),
    Spec(NGINX + "limit-connections", "limit_connections", limit,
         "concurrent connections per client IP (TLS hosts, after SNI)", "count"),
    Spec(NGINX + "limit-rps", "limit_rps", limit, "requests a second per client IP (burst 5x; 429)", "count"),
    Spec(NGINX + "limit-whitelist", "limit_whitelist", cidrs, "client CIDRs exempt from the limits", "CIDR list"),
    Spec(NGINX + "proxy-body-size", "max_body_size", size, "request body limit", "size: 1m, 8m; 0 = no limit"),
    Spec(NGINX + "proxy-connect-timeout", "connect_timeout", seconds, "backend connect timeout", "seconds"),
    Spec(NGINX + "proxy-read-timeout", "read_timeout", read_seconds, READ_TIMEOUT_MEANING, "seconds"),
    Spec(NGINX + "proxy-send-timeout", "send_timeout", seconds, "backend send timeout", "seconds"),
    Spec(NGINX + "proxy-ssl-protocols", "backend_tls_versions", tls_versions, "TLS versions to the backend",
         "TLSv1.2 TLSv1.3"),
    Spec(NGINX + "proxy-ssl-ciphers", "backend_ciphers", ciphers, "TLS 1.2 cipher list to the backend",
         "OpenSSL cipher list"),
    Spec(NGINX + "proxy-ssl-verify-depth", "backend_verify_depth", depth, "longest backend certificate chain",
         "1-10"),
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
    shadowed = _shadowed_nginx_protocol(ref, annotations, problems)
    ordered = sorted((k for k in annotations if k in SPEC_BY_KEY and k not in shadowed),
                     key=lambda k: (k.startswith(NATIVE), k))
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
    nginx_protocol = annotations.get(NGINX + "backend-protocol", "").strip().upper()
    if NGINX + "backend-protocol" in ordered and _NGINX_PROTOCOLS.get(nginx_protocol) \
            and "backend_protocol" not in origin:
        values["backend_protocol"] = _NGINX_PROTOCOLS[nginx_protocol]
        origin["backend_protocol"] = NGINX + "backend-protocol"
    settings = replace(Settings(**values), origin=origin)
    # ingress-nginx proxies HTTPS backends without verifying them unless proxy-ssl-verify is on.
    if origin.get("mode") == NGINX + "backend-protocol" and "backend_verify" not in origin:
        settings = replace(settings, backend_verify=False, nginx_unverified_https=True)
    if origin.get("backend_ca_secret") == NGINX + "proxy-ssl-secret" and "backend_client_secret" not in origin:
        settings = replace(settings, backend_client_secret=settings.backend_ca_secret,
                           origin={**origin, "backend_client_secret": NGINX + "proxy-ssl-secret"})
    return settings, problems


def _shadowed_nginx_protocol(ref: ObjectRef, annotations: Mapping[str, str], problems: list[Problem]) -> set[str]:
    """ingress-nginx's backend-protocol, when a valid portcullis.io/backend-protocol replaces it entirely.

    Entirely: its TLS mode too (HTTPS/GRPCS mean reencrypt), so the native value alone decides what reaches
    the backend. Unless both mean the same, a Warning says the compatible one is ignored.
    """
    native, nginx = NATIVE + "backend-protocol", NGINX + "backend-protocol"
    if native not in annotations or nginx not in annotations:
        return set()
    try:
        value = SPEC_BY_KEY[native].parse(annotations[native], Context(ref.namespace, native))
    except ValueError:
        return set()  # the native value is reported invalid and ignored: the compatible one applies
    if (annotations[nginx].strip().upper(), value) not in _SAME_PROTOCOL:
        problems.append(Problem(ref, "Warning", "AnnotationConflict", f"metadata.annotations[{native}]",
                                f"{native}={annotations[native]!r} disagrees with {nginx}={annotations[nginx]!r}; "
                                f"the native one wins and {nginx} is ignored (its TLS mode too)"))
    return {nginx}


def annotation_table() -> str:
    """Markdown table of every annotation, for docs and ``portcullis render --annotations``."""
    lines = ["| annotation | values | meaning |", "|---|---|---|"]
    lines.extend(f"| `{s.key}` | {s.values.replace('|', chr(92) + '|')} | {s.doc} |" for s in SPECS)
    return "\n".join(lines)
