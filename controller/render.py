"""The pure renderer: Kubernetes objects in, a canonical snapshot and a list of problems out.

Pipeline, in this order:

1. ``classes.select``        which Ingresses are ours, oldest first (the conflict order)
2. ``plan.Planner.plan``     one Ingress alone: its annotations (``annotations``), mode, TLS rows,
                             routes and pools, resolving Secrets and Services; problems on the plan
3. ``merge.Tables.merge``    fold plans in age order; a younger claim on a taken host/path loses
4. ``merge.Tables.snapshot`` defaultBackend fallbacks, virtual hosts with their policies, then
                             ``Snapshot.canonical()``

No I/O, no clock (``RenderConfig.now``), no kopf/asyncio: the controller, ``portcullis local``,
``portcullis render`` and the admission webhook all call this one function, so a setting means
the same thing everywhere. Same inputs in any order give a byte-identical snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller import classes
from controller.certificates import ParseCache
from controller.merge import Tables
from controller.model import Inputs
from controller.plan import Planner, Problems
from controller.problems import Problem
from dataplane.snapshot import Snapshot

# Reasons for problems caused by a referenced object (missing, or unusable), not by the Ingress's
# own content; they clear by themselves when the object appears. An Ingress skipped for an invalid
# TLS mode also carries InvalidAnnotation, which is about its content.
REFERENCE_REASONS = frozenset({
    "ServiceNotFound", "ServicePortNotFound", "SecretNotFound", "InvalidSecret", "BackendTLSUnavailable",
    "IngressSkipped",
})


@dataclass(frozen=True)
class RenderConfig:
    ingress_class: str = "portcullis"
    controller_name: str = "portcullis.io/ingress-controller"
    watch_namespaces: tuple[str, ...] = ()
    default_certificate: str | None = None  # "namespace/name" of a kubernetes.io/tls Secret
    now: int = 0  # unix seconds, for expiry warnings (0: skip)


def render(inputs: Inputs, config: RenderConfig, parsed: ParseCache | None = None) -> tuple[Snapshot, list[Problem]]:
    """The snapshot for these objects and every problem found on the way (canonical, generation 0).

    ``parsed`` is an optional cache of parsed certificate material owned by the caller (a long-lived
    controller passes one so a render re-parses only Secrets whose bytes changed); the result is the
    same with or without it.
    """
    planner = Planner(inputs, config.now, parsed)
    ours = classes.select(inputs.ingresses, inputs.ingress_classes, config.ingress_class, config.controller_name,
                          config.watch_namespaces)
    tables = Tables()
    problems = Problems()
    for ingress in ours:
        plan = planner.plan(ingress)
        problems.items += [*ingress.problems, *plan.problems.items]
        tables.merge(plan)
    default_certificate = planner.default_certificate(config.default_certificate, problems)
    snapshot = tables.snapshot(default_certificate)
    return snapshot, sorted({*problems.items, *tables.problems.items})
