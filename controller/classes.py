"""Step 1 of the render pipeline: which Ingresses are ours, oldest first.

Rules, in the order Kubernetes documents them:
1. ``spec.ingressClassName`` names an IngressClass; it is ours when that class's controller is
   ours. Without any IngressClass objects (``portcullis local``), the configured class name counts.
2. Otherwise the legacy ``kubernetes.io/ingress.class`` annotation, compared with our class name.
3. Otherwise the Ingress is ours when an IngressClass of ours is marked default.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.model import INGRESS_CLASS_ANNOTATION, Ingress, IngressClass


def is_ours(ingress: Ingress, classes: Sequence[IngressClass], ingress_class: str, controller_name: str) -> bool:
    by_name = {c.ref.name: c for c in classes}
    if ingress.class_name:
        known = by_name.get(ingress.class_name)
        if known is not None:
            return known.controller == controller_name
        return ingress.class_name == ingress_class
    legacy = ingress.annotations.get(INGRESS_CLASS_ANNOTATION)
    if legacy:
        return legacy == ingress_class
    return any(c.is_default and c.controller == controller_name for c in classes)


def select(
    ingresses: Sequence[Ingress],
    classes: Sequence[IngressClass],
    ingress_class: str,
    controller_name: str,
    namespaces: Sequence[str] = (),
) -> list[Ingress]:
    """Our Ingresses in the documented conflict order (creationTimestamp, then namespace/name)."""
    chosen = [
        i for i in ingresses
        if (not namespaces or i.ref.namespace in namespaces) and is_ours(i, classes, ingress_class, controller_name)
    ]
    return sorted(chosen, key=lambda i: i.order)
