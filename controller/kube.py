"""The controller's writes to the API server: Events and Ingress status. Thin on purpose.

Calls run in a thread (the kubernetes client is synchronous) and failures are logged, never
raised: a status write that fails is retried on the next reconcile because the status in the
index still differs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.problems import ObjectRef, Problem

log = logging.getLogger("portcullis.kube")

COMPONENT = "portcullis-controller"
API_VERSIONS = {"Ingress": "networking.k8s.io/v1", "Secret": "v1", "Service": "v1",
                "EndpointSlice": "discovery.k8s.io/v1", "IngressClass": "networking.k8s.io/v1"}


def event_body(problem: Problem, uid: str, now: dt.datetime) -> client.CoreV1Event:
    obj = problem.obj
    message = f"{problem.field}: {problem.message}" if problem.field else problem.message
    return client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{obj.name or 'portcullis'}.",
                                     namespace=obj.namespace or "default"),
        involved_object=client.V1ObjectReference(kind=obj.kind, namespace=obj.namespace or None, name=obj.name,
                                                 uid=uid or None, api_version=API_VERSIONS.get(obj.kind)),
        reason=problem.reason,
        message=message[:1024],
        type="Warning",  # Kubernetes Events are Normal or Warning; both our severities deserve attention
        source=client.V1EventSource(component=COMPONENT),
        reporting_component=COMPONENT,
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )


def status_body(addresses: tuple[str, ...]) -> dict[str, Any]:
    entries = []
    for address in addresses:
        try:
            ipaddress.ip_address(address)
            entries.append({"ip": address})
        except ValueError:
            entries.append({"hostname": address})
    return {"status": {"loadBalancer": {"ingress": entries}}}


class KubeWriter:
    """``timeout`` bounds every call (below the leader's renew deadline): a frozen apiserver fails
    writes instead of letting a leader that has lost its Lease write late."""

    def __init__(self, core: client.CoreV1Api, networking: client.NetworkingV1Api, timeout: float = 3.5) -> None:
        self.core = core
        self.networking = networking
        self.timeout = timeout

    async def post_events(self, problems: list[Problem], uids: dict[ObjectRef, str]) -> None:
        now = dt.datetime.now(dt.UTC)
        for problem in problems:
            body = event_body(problem, uids.get(problem.obj, ""), now)
            try:
                await asyncio.to_thread(self.core.create_namespaced_event, problem.obj.namespace or "default", body,
                                        _request_timeout=self.timeout)
            except ApiException as exc:
                log.warning("event not posted", extra={"object": str(problem.obj), "status": exc.status})
            except Exception as exc:  # timeout or unreachable apiserver: the next reconcile tries again
                log.warning("event not posted", extra={"object": str(problem.obj), "error": type(exc).__name__})

    async def write_status(self, ref: ObjectRef, addresses: tuple[str, ...]) -> bool:
        try:
            await asyncio.to_thread(self.networking.patch_namespaced_ingress_status, ref.name, ref.namespace,
                                    status_body(addresses), _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:  # deleted while its write was queued (hundreds when a namespace goes)
                log.debug("status not written: Ingress gone", extra={"object": str(ref)})
                return False
            log.warning("status not written", extra={"object": str(ref), "status": exc.status})
            return False
        except Exception as exc:  # timeout or unreachable apiserver: retried on the next reconcile
            log.warning("status not written", extra={"object": str(ref), "error": type(exc).__name__})
            return False
        return True
