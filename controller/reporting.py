"""Pure decisions behind the controller's writes: which Events to post, which statuses to patch,
which data planes exist. The I/O shell (``controller.kube``) only carries them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from controller.model import EndpointSlice, Ingress, Service
from controller.problems import ObjectRef, Problem


def new_events(already: frozenset[Problem], current: Iterable[Problem]) -> tuple[list[Problem], frozenset[Problem]]:
    """Problems to post as Events now, and the ledger to keep.

    A problem is posted once while it persists; when it clears it leaves the ledger, so if it comes
    back it is posted again. Only objects that exist can carry Events, so the caller filters those.
    """
    now = frozenset(current)
    return sorted(now - already), now


def dataplane_addresses(slices: Sequence[EndpointSlice], service: tuple[str, str]) -> tuple[str, ...]:
    """Every data-plane pod address, ready or not: a pod becomes ready only after it got a snapshot."""
    namespace, name = service
    found = {
        address
        for s in slices
        if s.ref.namespace == namespace and s.service == name
        for ep in s.endpoints
        for address in ep.addresses
    }
    return tuple(sorted(found))


def published_addresses(services: Sequence[Service], publish_service: tuple[str, str] | None,
                        publish_address: str | None) -> tuple[str, ...]:
    if publish_address:
        return tuple(a.strip() for a in publish_address.split(",") if a.strip())
    if publish_service is None:
        return ()
    service = next((s for s in services if (s.ref.namespace, s.ref.name) == publish_service), None)
    return service.published if service is not None else ()


def status_updates(ingresses: Iterable[Ingress], addresses: tuple[str, ...]) -> list[ObjectRef]:
    """Ingresses whose status.loadBalancer differs from what should be published (write only those)."""
    return [i.ref for i in ingresses if tuple(i.status_addresses) != addresses]
