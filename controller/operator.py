"""``portcullis controller``: the kopf operator.

kopf keeps one watch per kind and an in-memory index of slim projections (``controller.model``);
its event handlers only mark the state dirty. No change-detection handlers, daemons or finalizers
are registered on user objects, so kopf never writes annotations or finalizers into Ingresses or
Secrets. Everything else — render, publish, Events, status, leader election — is ours, in
``controller.reconciler`` and its collaborators.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from controller import webhook
from controller.kube import KubeWriter
from controller.leader import LeaderElector, LeaseConfig
from controller.model import Ingress, Inputs, Projection, project
from controller.publisher import Publisher, PushConfig
from controller.reconciler import LoopConfig, Reconciler
from controller.render import RenderConfig

log = logging.getLogger("portcullis.controller")

KINDS = {
    "ingresses": ("networking.k8s.io", "v1", "ingresses"),
    "secrets": ("", "v1", "secrets"),
    "services": ("", "v1", "services"),
    "endpoint_slices": ("discovery.k8s.io", "v1", "endpointslices"),
    "ingress_classes": ("networking.k8s.io", "v1", "ingressclasses"),
}
INDEX_PREFIX = "portcullis_"


def _env(name: str, default: str) -> str:
    return os.environ.get("PORTCULLIS_" + name.upper().replace("-", "_"), default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--ingress-class", default=_env("ingress-class", "portcullis"))
    add("--controller-name", default=_env("controller-name", "portcullis.io/ingress-controller"))
    add("--watch-namespaces", default=_env("watch-namespaces", ""), help="comma-separated; empty: cluster-wide")
    add("--dataplane-service", default=_env("dataplane-service", "portcullis/portcullis-dataplane-admin"),
        metavar="NS/NAME", help="headless Service whose EndpointSlices list the data-plane pods")
    add("--dataplane-admin-port", type=int, default=int(_env("dataplane-admin-port", "9901")))
    add("--push-token-file", default=_env("push-token-file", ""), help="bearer token for the data planes' admin API")
    add("--push-ca-file", default=_env("push-ca-file", ""), help="CA of the data planes' admin certificate")
    add("--push-server-name", default=_env("push-server-name", "portcullis-dataplane"))
    add("--default-certificate", default=_env("default-certificate", "") or None, metavar="NS/NAME")
    add("--publish-service", default=_env("publish-service", ""), metavar="NS/NAME",
        help="Service whose load-balancer address goes into Ingress status")
    add("--publish-address", default=_env("publish-address", ""), help="fixed address(es) for Ingress status")
    add("--leader-election", action=argparse.BooleanOptionalAction,
        default=_env("leader-election", "true").lower() == "true")
    add("--lease-namespace", default=_env("lease-namespace", ""), help="default: the data-plane Service's namespace")
    add("--lease-name", default=_env("lease-name", "portcullis-controller"))
    # client-go's and kube-controller-manager's defaults (15, 10, 2): an apiserver outage of a control-plane upgrade
    # must not cost the leadership, as it costs none of the control plane's own controllers.
    add("--lease-duration", type=float, default=float(_env("lease-duration", "15")), metavar="SECONDS",
        help="a standby takes an unreleased Lease over after seeing it unchanged this long (client-go's default)")
    add("--renew-deadline", type=float, default=float(_env("renew-deadline", "10")), metavar="SECONDS",
        help="the leader stops leading when no renewal succeeded this long (below --lease-duration); "
             "every apiserver call times out after half of it (client-go's default)")
    add("--retry-period", type=float, default=float(_env("retry-period", "2")), metavar="SECONDS",
        help="how often the leader renews and standbys try to acquire (client-go's default)")
    add("--webhook-port", type=int, default=int(_env("webhook-port", "0")), help="0: admission webhook off")
    add("--webhook-cert-file", default=_env("webhook-cert-file", ""))
    add("--webhook-key-file", default=_env("webhook-key-file", ""))
    add("--health-port", type=int, default=int(_env("health-port", "8081")), help="/healthz (0: off)")
    add("--kubeconfig", default=os.environ.get("KUBECONFIG", ""), help="default: in-cluster, then ~/.kube/config")


def _split_ref(text: str, what: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name:
        raise SystemExit(f"portcullis controller: {what} must be NAMESPACE/NAME, got {text!r}")
    return namespace, name


@dataclass(frozen=True)
class ControllerConfig:
    loop: LoopConfig
    push: PushConfig
    lease: LeaseConfig | None
    webhook_port: int
    webhook_cert_file: str
    webhook_key_file: str
    health_port: int
    namespaces: tuple[str, ...]
    api_timeout: float = 3.5  # every apiserver call, ours and kopf's: below the renew deadline

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ControllerConfig:
        namespaces = tuple(n.strip() for n in args.watch_namespaces.split(",") if n.strip())
        dataplane = _split_ref(args.dataplane_service, "--dataplane-service")
        token = ""
        if args.push_token_file:
            with open(args.push_token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        identity = f"{socket.gethostname()}-{os.getpid()}"
        lease = LeaseConfig(args.lease_namespace or dataplane[0], args.lease_name, identity, args.lease_duration,
                            args.renew_deadline, args.retry_period)
        for problem in lease.problems():
            raise SystemExit(f"portcullis controller: {problem}")
        return cls(
            loop=LoopConfig(
                render=RenderConfig(args.ingress_class, args.controller_name, namespaces, args.default_certificate),
                dataplane_service=dataplane,
                publish_service=_split_ref(args.publish_service, "--publish-service") if args.publish_service
                else None,
                publish_address=args.publish_address or None,
            ),
            push=PushConfig(port=args.dataplane_admin_port, token=token, ca_file=args.push_ca_file or None,
                            server_name=args.push_server_name),
            lease=lease if args.leader_election else None,
            webhook_port=args.webhook_port,
            webhook_cert_file=args.webhook_cert_file,
            webhook_key_file=args.webhook_key_file,
            health_port=args.health_port,
            namespaces=namespaces,
            api_timeout=lease.request_timeout,
        )


class IndexedInputs:
    """Reads kopf's live indexes into renderer ``Inputs`` (the indexes are captured at startup)."""

    def __init__(self) -> None:
        self.indexes: dict[str, Mapping[Any, Any]] = {}

    def __call__(self) -> Inputs:
        views: list[Projection] = []
        for index in self.indexes.values():
            for store in index.values():
                views.extend(store)
        return Inputs.from_projections(views)


def _index_fn(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Projection] | None:
    view = project(body)
    if view is None:
        return None
    return {(view.ref.namespace, view.ref.name): view}


def _secret_is_material(body: kopf.Body, **_: Any) -> bool:
    """Only Secrets that can hold certificates or CAs are indexed (not tokens, not app config)."""
    data = body.get("data") or {}
    return any(key in data for key in ("tls.crt", "ca.crt"))


def build_registry(reconciler: Reconciler, inputs: IndexedInputs, config: ControllerConfig,
                   elector: LeaderElector | None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    for name, (group, version, plural) in KINDS.items():
        resource = (f"{group}/{version}" if group else version, plural)
        when = _secret_is_material if name == "secrets" else None
        kopf.index(*resource, id=INDEX_PREFIX + name, registry=registry, when=when)(_index_fn)

        def on_event(**_: Any) -> None:
            reconciler.mark_indexed()
            reconciler.mark_dirty()

        def on_ingress_event(body: kopf.Body, type: str | None = None, **_: Any) -> None:
            reconciler.mark_indexed()
            view = None if type == "DELETED" else project(body)
            key = (body.get("metadata", {}).get("namespace", ""), body.get("metadata", {}).get("name", ""))
            reconciler.ingress_event(key, view if isinstance(view, Ingress) else None)

        kopf.on.event(*resource, id=f"dirty-{name}", registry=registry, when=when)(
            on_ingress_event if name == "ingresses" else on_event)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The same credentials the kubernetes client loaded (kubeconfig or in-cluster)."""
        return kopf.login_via_client(**kwargs)

    tasks: list[asyncio.Task[Any]] = []

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        settings.peering.standalone = True
        # Only built-in kinds, in exact namespaces or cluster-wide: nothing to discover. kopf's scanning lists
        # namespaces and CustomResourceDefinitions, which the chart's least-privilege RBAC does not grant; on a
        # real cluster it failed with 403s and its retries delayed the first snapshot by about a minute.
        settings.scanning.disabled = True
        # A frozen apiserver must fail calls, not hang them (watch streams have inactivity_timeout);
        # listings come in pages so that a page fits in the timeout at scale.
        settings.networking.request_timeout = config.api_timeout
        settings.networking.connect_timeout = config.api_timeout
        settings.watching.connect_timeout = config.api_timeout
        settings.watching.chunk_size = 500
        for name in KINDS:
            inputs.indexes[name] = kwargs[INDEX_PREFIX + name]
        tasks.append(asyncio.create_task(reconciler.run(), name="reconciler"))
        if elector is not None:
            tasks.append(asyncio.create_task(elector.run(), name="leader election"))

            async def follow_leadership() -> None:
                while True:
                    await elector.leading.wait()
                    reconciler.mark_dirty()
                    while elector.is_leader:
                        await asyncio.sleep(0.5)
                    reconciler.mark_dirty()

            tasks.append(asyncio.create_task(follow_leadership(), name="leadership follower"))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if reconciler.status is not None:
            await reconciler.status.close()
        if elector is not None:
            await asyncio.to_thread(elector.release)

    return registry


def _load_kube_config(path: str) -> None:
    from kubernetes import config as kube_config

    if path:
        kube_config.load_kube_config(config_file=path)  # type: ignore[no-untyped-call]
        return
    try:
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        kube_config.load_kube_config()  # type: ignore[no-untyped-call]


async def serve(config: ControllerConfig, kubeconfig: str) -> int:
    from kubernetes import client

    _load_kube_config(kubeconfig)
    # No urllib3 retries: each retry would wait the request timeout again (three of them outlast the
    # renew deadline); the elector and the reconciler retry on their own schedule.
    settings = client.Configuration.get_default_copy()
    settings.retries = 0
    api = client.ApiClient(settings)
    elector = LeaderElector(client.CoordinationV1Api(api), config.lease) if config.lease else None
    writer = KubeWriter(client.CoreV1Api(api), client.NetworkingV1Api(api), timeout=config.api_timeout)
    inputs = IndexedInputs()
    async with Publisher(config.push, (lambda: elector.is_leader) if elector else (lambda: True)) as publisher:
        reconciler = Reconciler(config.loop, inputs, publisher, writer,
                                (lambda: elector.is_leader) if elector else (lambda: True))
        registry = build_registry(reconciler, inputs, config, elector)
        runner = None
        if config.webhook_port:
            runner = await webhook.start(config.webhook_port, config.webhook_cert_file, config.webhook_key_file,
                                         inputs, lambda: config.loop.render)
        namespaces = list(config.namespaces)
        if namespaces and config.loop.dataplane_service[0] not in namespaces:
            namespaces.append(config.loop.dataplane_service[0])  # the data-plane pods are found there
        try:
            await kopf.operator(
                registry=registry,
                clusterwide=not namespaces,
                namespaces=namespaces,
                standalone=True,
                liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None,
            )
        finally:
            if runner is not None:
                await runner.cleanup()
    return 0


class PerObjectAtDebug(logging.Filter):
    """kopf logs every handler run on every object at INFO ("Handler 'dirty-secrets' succeeded."): 14,500
    lines for one ``kubectl apply`` of 2,000 Ingresses, formatted and written on the event loop. Those are
    debug detail; the reconciler logs one INFO line per render and the publisher one per push."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_per_object_logs() -> None:
    logging.getLogger("kopf.objects").addFilter(PerObjectAtDebug())


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    quiet_per_object_logs()
    config = ControllerConfig.from_args(args)
    if args.kubeconfig:  # kopf's login re-reads the kubeconfig from the environment, not from our loader
        os.environ["KUBECONFIG"] = args.kubeconfig
    return asyncio.run(serve(config, args.kubeconfig))
