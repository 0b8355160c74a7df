"""Slim, frozen projections of the five Kubernetes kinds the renderer reads.

The controller keeps these in kopf indexes instead of whole objects (memory, and no accidental
dependence on fields we do not understand); ``portcullis local`` builds them from YAML. Projection
never raises: odd input (a string where a list belongs, bad base64) becomes a ``Problem`` on the
view, so one malformed object cannot stop the render of all the others.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.problems import ObjectRef, Problem

INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class BackendRef:
    """``service.name`` + port number or port name (exactly one of them)."""

    service: str
    port_number: int | None
    port_name: str | None
    field: str

    @property
    def port_text(self) -> str:
        return str(self.port_number) if self.port_number is not None else str(self.port_name)


@dataclass(frozen=True)
class IngressPath:
    path: str
    path_type: str
    backend: BackendRef | None
    field: str


@dataclass(frozen=True)
class IngressRule:
    host: str
    paths: tuple[IngressPath, ...]
    field: str


@dataclass(frozen=True)
class IngressTLS:
    hosts: tuple[str, ...]
    secret_name: str
    field: str


@dataclass(frozen=True)
class Ingress:
    ref: ObjectRef
    created: str
    annotations: Mapping[str, str]
    class_name: str | None
    default_backend: BackendRef | None
    rules: tuple[IngressRule, ...]
    tls: tuple[IngressTLS, ...]
    uid: str = ""
    generation: int = 0
    problems: tuple[Problem, ...] = ()
    status_addresses: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip/hostname, as last written

    @property
    def order(self) -> tuple[str, str, str]:
        """Oldest first, then namespace/name: the documented conflict winner order."""
        return (self.created or "9999", self.ref.namespace, self.ref.name)


@dataclass(frozen=True)
class Secret:
    ref: ObjectRef
    type: str
    data: Mapping[str, bytes]
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str | None
    app_protocol: str


@dataclass(frozen=True)
class Service:
    ref: ObjectRef
    type: str
    ports: tuple[ServicePort, ...]
    problems: tuple[Problem, ...] = ()
    published: tuple[str, ...] = ()  # load-balancer ingress addresses, else external IPs: what clients reach


@dataclass(frozen=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool


@dataclass(frozen=True)
class SlicePort:
    name: str
    port: int
    app_protocol: str


@dataclass(frozen=True)
class EndpointSlice:
    ref: ObjectRef
    service: str
    address_type: str
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[SlicePort, ...]
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class IngressClass:
    ref: ObjectRef
    controller: str
    is_default: bool
    problems: tuple[Problem, ...] = ()


Projection = Ingress | Secret | Service | EndpointSlice | IngressClass


@dataclass(frozen=True)
class Inputs:
    """Everything the renderer may look at; order of each tuple is irrelevant to the result."""

    ingresses: tuple[Ingress, ...] = ()
    secrets: tuple[Secret, ...] = ()
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    ingress_classes: tuple[IngressClass, ...] = ()

    @classmethod
    def from_projections(cls, views: Iterable[Projection]) -> Inputs:
        buckets: dict[type, list[Any]] = {k: [] for k in (Ingress, Secret, Service, EndpointSlice, IngressClass)}
        for view in views:
            buckets[type(view)].append(view)
        return cls(
            ingresses=tuple(buckets[Ingress]),
            secrets=tuple(buckets[Secret]),
            services=tuple(buckets[Service]),
            endpoint_slices=tuple(buckets[EndpointSlice]),
            ingress_classes=tuple(buckets[IngressClass]),
        )

    @classmethod
    def from_objects(cls, objs: Iterable[Mapping[str, Any]]) -> tuple[Inputs, list[Problem]]:
        """Project raw objects; kinds the renderer does not read are skipped without a word."""
        views: list[Projection] = []
        problems: list[Problem] = []
        for obj in objs:
            view = project(obj)
            if view is not None:
                views.append(view)
                problems.extend(view.problems)
        return cls.from_projections(views), problems


# --- projection ----------------------------------------------------------------------------


class _Reader:
    """Type-checked access into an untrusted object; wrong shapes are recorded, not raised."""

    def __init__(self, ref: ObjectRef) -> None:
        self.ref = ref
        self.problems: list[Problem] = []

    def problem(self, field_path: str, message: str, reason: str = "InvalidObject") -> None:
        self.problems.append(Problem(self.ref, "Error", reason, field_path, message))

    def mapping(self, value: Any, field_path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(field_path, f"expected an object, got {type(value).__name__}")
            return {}
        return value

    def items(self, value: Any, field_path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(field_path, f"expected a list, got {type(value).__name__}")
            return []
        return value

    def text(self, value: Any, field_path: str, default: str = "") -> str:
        if value is None:
            return default
        if isinstance(value, str):
            return value
        self.problem(field_path, f"expected a string, got {value!r}")
        return default

    def port(self, value: Any, field_path: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
            return value
        if value is not None:
            self.problem(field_path, f"not a valid port number: {value!r}")
        return None


# --- what the apiserver's validation refuses (networking.k8s.io/v1 Ingress) ---------------------
# Local manifests never meet an apiserver; these mirror its checks so `portcullis render`/`local`
# report what `kubectl apply` would refuse, naming the field, instead of serving it silently.

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*", re.ASCII)
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?", re.ASCII)
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9]|-(?!-))*", re.ASCII)
PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")
_INVALID_PATH_SEQUENCES = ("//", "/./", "/../", "%2f", "%2F")
_INVALID_PATH_SUFFIXES = ("/..", "/.")


def host_problem(host: str) -> str:
    """Why the apiserver refuses ``host`` as an Ingress rule or TLS host ("" when it does not)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return "must be a DNS name, not an IP address"
    name = host[2:] if host.startswith("*.") else host
    if "*" in name:
        return "a wildcard is allowed only as the whole first label (*.example.com)"
    if len(host) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name):
        return "must be a lower-case DNS name (RFC 1123: a-z, 0-9, '-' and '.', at most 253 characters)"
    return ""


def path_problem(path: str, path_type: str) -> str:
    """Why the apiserver refuses this path for its pathType ("" when it does not)."""
    if path_type == "ImplementationSpecific":
        return "must be an absolute path (start with /)" if path and not path.startswith("/") else ""
    if not path.startswith("/"):
        return "must be an absolute path (start with /)"
    for sequence in _INVALID_PATH_SEQUENCES:
        if sequence in path:
            return f"must not contain {sequence!r}"
    for suffix in _INVALID_PATH_SUFFIXES:
        if path.endswith(suffix):
            return f"must not end with {suffix!r}"
    return ""


def port_name_problem(name: str) -> str:
    """IANA service name: at most 15 of a-z, 0-9 and '-', a letter somewhere, no '--' or edge '-'."""
    if len(name) > 15 or not _IANA_SVC_NAME.fullmatch(name) or name.endswith("-") \
            or not any("a" <= c <= "z" for c in name):
        return "must be an IANA service name (at most 15 of a-z, 0-9 and '-', with a letter)"
    return ""


def _ref(obj: Mapping[str, Any], kind: str) -> tuple[ObjectRef, Mapping[str, Any]]:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    namespace = meta.get("namespace")
    name = meta.get("name")
    return (
        ObjectRef(kind, namespace if isinstance(namespace, str) else "default", name if isinstance(name, str) else ""),
        meta,
    )


def project(obj: Mapping[str, Any]) -> Projection | None:
    """The view of one object, or None for kinds the renderer does not read."""
    kind = obj.get("kind") if isinstance(obj, Mapping) else None
    builder = _BUILDERS.get(kind) if isinstance(kind, str) else None
    if builder is None:
        return None
    return builder(obj)


def _string_map(reader: _Reader, value: Any, field_path: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, item in reader.mapping(value, field_path).items():
        if isinstance(key, str) and isinstance(item, str):
            result[key] = item
        else:
            reader.problem(f"{field_path}[{key}]", f"value must be a string, got {item!r}")
    return result


def _backend(reader: _Reader, value: Any, field_path: str) -> BackendRef | None:
    spec = reader.mapping(value, field_path)
    if not spec:
        reader.problem(field_path, "backend is missing")
        return None
    if spec.get("resource") is not None and spec.get("service") is not None:
        reader.problem(field_path, "only one of service and resource may be set")
        return None
    if "resource" in spec:
        reader.problem(f"{field_path}.resource", "resource backends are not supported; use a Service", "Unsupported")
        return None
    if spec.get("service") is None:
        reader.problem(f"{field_path}.service", "a backend needs a service (or a resource)")
        return None
    service = reader.mapping(spec.get("service"), f"{field_path}.service")
    name = reader.text(service.get("name"), f"{field_path}.service.name")
    port = reader.mapping(service.get("port"), f"{field_path}.service.port")
    number = reader.port(port.get("number"), f"{field_path}.service.port.number")
    port_name = reader.text(port.get("name"), f"{field_path}.service.port.name") or None
    if not name:
        reader.problem(f"{field_path}.service.name", "backend service name is missing")
        return None
    if len(name) > 63 or not _DNS1035_LABEL.fullmatch(name):
        reader.problem(f"{field_path}.service.name", f"{name!r} is not a Service name (RFC 1035 label: a-z, 0-9 "
                       "and '-', starting with a letter, at most 63 characters)")
        return None
    if (number is None) == (port_name is None):
        reader.problem(f"{field_path}.service.port", "exactly one of port.number and port.name is required")
        return None
    if port_name is not None and port_name_problem(port_name):
        reader.problem(f"{field_path}.service.port.name", f"{port_name!r} {port_name_problem(port_name)}")
        return None
    return BackendRef(name, number, port_name, field_path)


def _ingress(obj: Mapping[str, Any]) -> Ingress:
    ref, meta = _ref(obj, "Ingress")
    r = _Reader(ref)
    spec = r.mapping(obj.get("spec"), "spec")
    annotations = _string_map(r, meta.get("annotations"), "metadata.annotations")
    class_name = r.text(spec.get("ingressClassName"), "spec.ingressClassName") or None
    default_backend = None
    if spec.get("defaultBackend") is not None:
        default_backend = _backend(r, spec.get("defaultBackend"), "spec.defaultBackend")
    rules: list[IngressRule] = []
    raw_rules = r.items(spec.get("rules"), "spec.rules")
    if not raw_rules and spec.get("defaultBackend") is None:
        r.problem("spec", "either defaultBackend or rules must be specified; nothing is served")
    for i, raw_rule in enumerate(raw_rules):
        rule = _rule(r, raw_rule, f"spec.rules[{i}]")
        if rule is not None:
            rules.append(rule)
    tls: list[IngressTLS] = []
    for i, raw_tls in enumerate(r.items(spec.get("tls"), "spec.tls")):
        where = f"spec.tls[{i}]"
        entry = r.mapping(raw_tls, where)
        hosts: list[str] = []
        for j, raw_host in enumerate(r.items(entry.get("hosts"), f"{where}.hosts")):
            host = r.text(raw_host, f"{where}.hosts[{j}]")
            if host and host_problem(host):
                r.problem(f"{where}.hosts[{j}]", f"host {host!r} {host_problem(host)}; TLS host skipped",
                          "InvalidHost")
            elif host:
                hosts.append(host)
        if entry.get("hosts") and not hosts:
            continue  # every host refused: the entry must not widen to all rule hosts
        tls.append(IngressTLS(tuple(hosts), r.text(entry.get("secretName"), f"{where}.secretName"), where))
    generation = meta.get("generation")
    if len(ref.name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(ref.name):
        r.problem("metadata.name", f"name {ref.name!r} is not a lower-case DNS name (required); Ingress not served")
        default_backend, rules, tls = None, [], []
    return Ingress(
        ref=ref,
        created=_timestamp(meta.get("creationTimestamp")),
        annotations=annotations,
        class_name=class_name,
        default_backend=default_backend,
        rules=tuple(rules),
        tls=tuple(tls),
        uid=r.text(meta.get("uid"), "metadata.uid"),
        generation=generation if isinstance(generation, int) else 0,
        problems=tuple(r.problems),
        status_addresses=_lb_addresses(obj),
    )


def _rule(r: _Reader, raw_rule: Any, where: str) -> IngressRule | None:
    """One rule; None (reported) when the apiserver would refuse its host. Refused paths are left out."""
    rule = r.mapping(raw_rule, where)
    host = r.text(rule.get("host"), f"{where}.host")
    if host and host_problem(host):
        r.problem(f"{where}.host", f"host {host!r} {host_problem(host)}; rule skipped", "InvalidHost")
        return None
    paths: list[IngressPath] = []
    if rule.get("http") is not None:
        http = r.mapping(rule.get("http"), f"{where}.http")
        raw_paths = r.items(http.get("paths"), f"{where}.http.paths")
        if not raw_paths:
            r.problem(f"{where}.http.paths", "at least one path is required")
        for j, raw_path in enumerate(raw_paths):
            path = _path(r, raw_path, f"{where}.http.paths[{j}]")
            if path is not None:
                paths.append(path)
    return IngressRule(host, tuple(paths), where)


def _path(r: _Reader, raw_path: Any, where: str) -> IngressPath | None:
    item = r.mapping(raw_path, where)
    path = r.text(item.get("path"), f"{where}.path")
    path_type = r.text(item.get("pathType"), f"{where}.pathType")
    backend = _backend(r, item.get("backend"), f"{where}.backend")
    if not path_type:
        r.problem(f"{where}.pathType", "pathType is required (Exact, Prefix or ImplementationSpecific); path skipped",
                  "InvalidPath")
        return None
    if path_type in PATH_TYPES and path_problem(path, path_type):
        r.problem(f"{where}.path", f"path {path!r} {path_problem(path, path_type)}; path skipped", "InvalidPath")
        return None
    return IngressPath(path=path or "/", path_type=path_type, backend=backend, field=where)


def _lb_addresses(obj: Mapping[str, Any]) -> tuple[str, ...]:
    status = obj.get("status")
    lb = status.get("loadBalancer") if isinstance(status, Mapping) else None
    items = lb.get("ingress") if isinstance(lb, Mapping) else None
    addresses: list[str] = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, Mapping):
            value = item.get("ip") or item.get("hostname")
            if isinstance(value, str) and value:
                addresses.append(value)
    return tuple(addresses)


def _timestamp(value: Any) -> str:
    """RFC 3339 text sorts chronologically; YAML may have parsed it into a datetime already."""
    if isinstance(value, str):
        return value
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return ""


def _secret(obj: Mapping[str, Any]) -> Secret:
    ref, _ = _ref(obj, "Secret")
    r = _Reader(ref)
    data: dict[str, bytes] = {}
    for key, value in r.mapping(obj.get("data"), "data").items():
        if not isinstance(value, str):
            r.problem(f"data[{key}]", "value must be a base64 string")
            continue
        try:
            data[str(key)] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            r.problem(f"data[{key}]", "value is not valid base64")
    # stringData is write-only in a cluster; in local manifests it is the friendly way to write PEM.
    for key, value in _string_map(r, obj.get("stringData"), "stringData").items():
        data[key] = value.encode()
    return Secret(ref, r.text(obj.get("type"), "type", "Opaque"), data, tuple(r.problems))


def _service(obj: Mapping[str, Any]) -> Service:
    ref, _ = _ref(obj, "Service")
    r = _Reader(ref)
    spec = r.mapping(obj.get("spec"), "spec")
    ports: list[ServicePort] = []
    for i, raw in enumerate(r.items(spec.get("ports"), "spec.ports")):
        item = r.mapping(raw, f"spec.ports[{i}]")
        port = r.port(item.get("port"), f"spec.ports[{i}].port")
        if port is None:
            continue
        target = item.get("targetPort")
        ports.append(
            ServicePort(
                name=r.text(item.get("name"), f"spec.ports[{i}].name"),
                port=port,
                target_port=target if isinstance(target, (int, str)) and not isinstance(target, bool) else None,
                app_protocol=r.text(item.get("appProtocol"), f"spec.ports[{i}].appProtocol").lower(),
            )
        )
    external = tuple(a for a in spec.get("externalIPs") or () if isinstance(a, str)) if isinstance(
        spec.get("externalIPs"), list) else ()
    return Service(ref, r.text(spec.get("type"), "spec.type", "ClusterIP"), tuple(ports), tuple(r.problems),
                   _lb_addresses(obj) or external)


def _endpoint_slice(obj: Mapping[str, Any]) -> EndpointSlice:
    ref, meta = _ref(obj, "EndpointSlice")
    r = _Reader(ref)
    labels = _string_map(r, meta.get("labels"), "metadata.labels")
    endpoints: list[SliceEndpoint] = []
    for i, raw in enumerate(r.items(obj.get("endpoints"), "endpoints")):
        item = r.mapping(raw, f"endpoints[{i}]")
        addresses = tuple(
            a for a in (r.text(x, f"endpoints[{i}].addresses") for x in r.items(item.get("addresses"),
                                                                                 f"endpoints[{i}].addresses")) if a
        )
        conditions = r.mapping(item.get("conditions"), f"endpoints[{i}].conditions")
        # Kubernetes: a nil "ready" means ready; only an explicit false excludes the endpoint.
        endpoints.append(SliceEndpoint(addresses, conditions.get("ready") is not False))
    ports: list[SlicePort] = []
    for i, raw in enumerate(r.items(obj.get("ports"), "ports")):
        item = r.mapping(raw, f"ports[{i}]")
        port = r.port(item.get("port"), f"ports[{i}].port")
        if port is not None:
            ports.append(SlicePort(r.text(item.get("name"), f"ports[{i}].name"), port,
                                   r.text(item.get("appProtocol"), f"ports[{i}].appProtocol").lower()))
    return EndpointSlice(
        ref,
        labels.get(SERVICE_NAME_LABEL, ""),
        r.text(obj.get("addressType"), "addressType", "IPv4"),
        tuple(endpoints),
        tuple(ports),
        tuple(r.problems),
    )


def _ingress_class(obj: Mapping[str, Any]) -> IngressClass:
    ref, meta = _ref(obj, "IngressClass")
    ref = ObjectRef("IngressClass", "", ref.name)
    r = _Reader(ref)
    spec = r.mapping(obj.get("spec"), "spec")
    annotations = _string_map(r, meta.get("annotations"), "metadata.annotations")
    return IngressClass(
        ref,
        r.text(spec.get("controller"), "spec.controller"),
        annotations.get(DEFAULT_CLASS_ANNOTATION, "").lower() == "true",
        tuple(r.problems),
    )


_BUILDERS: dict[str, Callable[[Mapping[str, Any]], Projection]] = {
    "Ingress": _ingress,
    "Secret": _secret,
    "Service": _service,
    "EndpointSlice": _endpoint_slice,
    "IngressClass": _ingress_class,
}

__all__ = [
    "BackendRef", "EndpointSlice", "Ingress", "IngressClass", "IngressPath", "IngressRule", "IngressTLS", "Inputs",
    "Projection", "Secret", "Service", "ServicePort", "SliceEndpoint", "SlicePort", "project",
]
