"""Issue 11 item 5 as a user met it: in ``portcullis local`` one bad Ingress took every other down
(the data plane refused the whole snapshot) and nothing said why. Now the bad one is reported, by
object and field, and the rest is applied and served."""

from __future__ import annotations

import io
from pathlib import Path

import yaml

from controller.local import LocalServer
from controller.render import RenderConfig
from dataplane.runtime import DataPlaneConfig
from tests.integration.http_fixtures import LOCAL, Client, start_echo
from tests.unit import objects as k


async def test_a_bad_ingress_is_reported_and_the_others_keep_serving(tmp_path: Path) -> None:
    backend = await start_echo()
    (tmp_path / "good.yaml").write_text(yaml.safe_dump_all([
        k.ingress("good", host="good.test"), k.service("web"), k.endpoints("web", LOCAL, port=backend.port),
    ]))
    wildcard = k.ingress("wild", host="foo.*.example")
    long_label = k.ingress("long", host="a" * 64 + ".example.com")
    no_path_type = k.ingress("untyped", host="untyped.test")
    del no_path_type["spec"]["rules"][0]["http"]["paths"][0]["pathType"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump_all([wildcard, long_label, no_path_type]))
    out = io.StringIO()
    server = LocalServer([str(tmp_path)], RenderConfig(),
                         DataPlaneConfig(https_port=0, http_port=0, admin_port=0, admin_token="t"), out=out)
    assert await server.reload() == []  # applied, not refused
    await server.dataplane.start()
    try:
        client = await Client.open(server.dataplane.http_port)
        assert (await client.get("/", host="good.test")).status == 200
        assert (await client.get("/", host="untyped.test")).status == 404
        await client.close()
        text = out.getvalue()
        assert "Error: Ingress shop/wild spec.rules[0].host: host 'foo.*.example'" in text
        assert "Error: Ingress shop/long spec.rules[0].host: rule not served" in text
        assert "Error: Ingress shop/untyped spec.rules[0].http.paths[0].pathType: pathType is required" in text
        assert "snapshot refused" not in text
    finally:
        await server.dataplane.stop(drain_timeout=0.5)
        backend.close()
