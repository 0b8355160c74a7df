"""A 503 says why: rendered from manifests, served by the real HTTP engine over a real socket.

"No ready endpoint" for every cause sends people looking in the wrong place; the renderer knows
whether the Service is missing, has no such port, or has nothing ready, and the data plane says so.
"""

from __future__ import annotations

from controller.model import Inputs
from controller.render import RenderConfig, render
from dataplane.snapshot import validate
from tests.integration.http_fixtures import LOCAL, Client, free_port, proxy, start_echo
from tests.unit import objects as k

LOOPS = ("asyncio", "uvloop")


async def test_503_names_the_missing_service_or_the_empty_port() -> None:
    backend = await start_echo()
    dead = free_port()
    inputs, problems = Inputs.from_objects([
        k.ingress("ok", host="ok.test", service="web"), k.service("web"), k.endpoints("web", LOCAL, port=backend.port),
        k.ingress("gone", host="gone.test", service="missing"),
        k.ingress("idle", host="idle.test", service="idle"), k.service("idle"),
        k.ingress("noport", host="noport.test", service="web", port="admin"),
        k.ingress("dead", host="dead.test", service="dead"), k.service("dead"), k.endpoints("dead", LOCAL, port=dead),
    ])
    snap, _ = render(inputs, RenderConfig())
    assert problems == [] and validate(snap) == []
    async with proxy(snap) as px:
        client = await Client.open(px.port)
        assert (await client.get("/", host="ok.test")).status == 200
        for host, body in [("gone.test", b"Service shop/missing not found\n"),
                           ("idle.test", b"no ready endpoint for shop/idle:80\n"),
                           ("noport.test", b"Service shop/web has no port admin\n")]:
            resp = await client.get("/", host=host)
            assert (resp.status, resp.body) == (503, body), host
        resp = await client.get("/", host="dead.test")  # refused: 502, and the endpoint is marked down
        assert resp.status == 502
        client = await Client.open(px.port)
        resp = await client.get("/", host="dead.test")
        assert (resp.status, resp.body) == (503, b"no endpoint up for shop/dead:80\n")
        await client.close()
    backend.close()
