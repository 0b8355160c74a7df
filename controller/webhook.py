"""Validating admission for Ingresses: the renderer, run on the candidate object.

The webhook renders the cluster as it would be with the candidate in place and rejects the object
when that produces error-level problems on it, with the renderer's own messages. It renders no
configuration text at all (no templates, no shell), so there is nothing to inject into — the class
of bug behind ingress-nginx's CVE-2025-1974 has no place to live here.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from aiohttp import web

from controller.model import Ingress, Inputs, project
from controller.render import REFERENCE_REASONS, RenderConfig, render

log = logging.getLogger("portcullis.webhook")



def review(request: Mapping[str, Any], inputs: Inputs, config: RenderConfig) -> tuple[bool, str]:
    """(allowed, message) for one AdmissionReview request."""
    obj = request.get("object")
    if request.get("operation") == "DELETE" or not isinstance(obj, Mapping):
        return True, ""
    obj = dict(obj)
    meta = dict(obj.get("metadata") or {})
    meta.setdefault("namespace", request.get("namespace") or "default")
    meta.setdefault("name", request.get("name") or meta.get("generateName") or "new")
    obj["metadata"] = meta
    candidate = project(obj)
    if not isinstance(candidate, Ingress):
        return True, ""
    others = tuple(i for i in inputs.ingresses if i.ref != candidate.ref)
    _, problems = render(replace(inputs, ingresses=(*others, candidate)), config)
    # `kubectl apply -f dir/` may create the Ingress before its Service or Secret: problems about
    # referenced objects become Events, never rejections.
    errors = [p for p in (*candidate.problems, *problems)
              if p.obj == candidate.ref and p.severity == "Error" and p.reason not in REFERENCE_REASONS]
    if not errors:
        return True, ""
    return False, "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in errors)[:4000]


def admission_response(body: Mapping[str, Any], inputs: Inputs, config: RenderConfig) -> dict[str, Any]:
    request = body.get("request") if isinstance(body.get("request"), Mapping) else {}
    assert isinstance(request, Mapping)
    allowed, message = review(request, inputs, config)
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": allowed}
    if not allowed:
        response["status"] = {"code": 422, "reason": "Invalid", "message": message}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def make_app(inputs: Callable[[], Inputs], config: Callable[[], RenderConfig]) -> web.Application:
    async def validate(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "AdmissionReview JSON expected"}, status=400)
        if not isinstance(body, Mapping):
            return web.json_response({"error": "AdmissionReview JSON expected"}, status=400)
        return web.json_response(admission_response(body, inputs(), config()))

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/validate", validate)
    return app


async def start(port: int, cert_file: str, key_file: str, inputs: Callable[[], Inputs],
                config: Callable[[], RenderConfig]) -> web.AppRunner:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    runner = web.AppRunner(make_app(inputs, config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port, ssl_context=context).start()
    log.info("admission webhook listening", extra={"port": port})
    return runner
