"""The admission webhook renders the candidate Ingress with everything else in place."""

from __future__ import annotations

from controller.model import Inputs
from controller.render import RenderConfig
from controller.webhook import admission_response
from tests.unit import objects as k


def review(ingress: dict[str, object], *others: dict[str, object]) -> dict[str, object]:
    inputs, _ = Inputs.from_objects(list(others))
    body = {"request": {"uid": "u-1", "operation": "CREATE", "namespace": k.NS, "object": ingress}}
    response = admission_response(body, inputs, RenderConfig())["response"]
    assert isinstance(response, dict) and response["uid"] == "u-1"
    return response


def test_valid_ingress_is_allowed() -> None:
    assert review(k.ingress("shop"), k.service("web"), k.endpoints("web", "10.0.0.1"))["allowed"] is True


def test_invalid_annotation_is_denied_with_the_renderers_message() -> None:
    response = review(k.ingress("shop", annotations={"portcullis.io/tls-mode": "sideways"}), k.service("web"))
    assert response["allowed"] is False
    message = response["status"]["message"]  # type: ignore[index]
    assert "portcullis.io/tls-mode" in message and "'sideways'" in message


def test_warnings_do_not_block_and_other_ingresses_problems_are_not_this_ones() -> None:
    broken_other = k.ingress("other", host="b.example.com", annotations={"portcullis.io/hsts": "bogus"})
    response = review(k.ingress("shop", annotations={"portcullis.io/proxy-protocol": "v1"}), broken_other,
                      k.service("web"), k.endpoints("web", "10.0.0.1"))
    assert response["allowed"] is True


def test_other_kinds_and_deletes_pass() -> None:
    inputs, _ = Inputs.from_objects([])
    body = {"request": {"uid": "u", "operation": "DELETE", "object": None}}
    assert admission_response(body, inputs, RenderConfig())["response"]["allowed"] is True  # type: ignore[index]


def test_missing_references_are_admitted_so_apply_order_does_not_matter() -> None:
    response = review(k.ingress("shop", tls_secret="later", annotations={"portcullis.io/client-auth-secret": "ca"}))
    assert response["allowed"] is True
