"""An Ingress's read timeout bounds its WebSockets' silence (issue 20 item 7): rendered from real annotations, served
by the HTTP engine to a real aiohttp WebSocket backend through real sockets, on a virtual clock.

Three hosts behind one data plane whose ``--upgrade-idle-timeout`` is the default hour: one Ingress sets
``proxy-read-timeout: "86400"`` (long-lived sockets, which the hour used to cut), one sets ``"60"`` (idle sockets,
which the hour used to keep), one sets nothing (the hour). The clock moves past each bound in turn and the
``upgrade_idle`` timeout count and the client's close show which socket went when. asyncio's loop only (uvloop's
clock cannot be moved).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import aiohttp

from controller.model import Inputs
from controller.render import RenderConfig, render
from dataplane.http.settings import HTTPSettings
from dataplane.snapshot import Snapshot, validate
from tests.integration.http_fixtures import LOCAL, Proxy, proxy, start_echo
from tests.unit import objects as k
from tests.virtual_clock import virtual_clock

TIMEOUTS = "portcullis_http_timeouts_total"
NGINX = "nginx.ingress.kubernetes.io/"
HOSTS = {"long.test": "86400", "short.test": "60", "unset.test": None}


def rendered(backend_port: int) -> Snapshot:
    objs = [k.service("web"), k.endpoints("web", LOCAL, port=backend_port)]
    for host, timeout in HOSTS.items():
        annotations = {NGINX + "proxy-read-timeout": timeout} if timeout else None
        objs.append(k.ingress(host.split(".")[0], host=host, annotations=annotations))
    inputs, problems = Inputs.from_objects(objs)
    snapshot, render_problems = render(inputs, RenderConfig())
    assert not problems and not render_problems, problems + render_problems
    assert validate(snapshot, check_pem=False) == []
    return snapshot


async def sockets(px: Proxy, stack: AsyncExitStack) -> AsyncIterator[tuple[str, aiohttp.ClientWebSocketResponse]]:
    session = await stack.enter_async_context(aiohttp.ClientSession())
    for host in HOSTS:
        ws = await stack.enter_async_context(session.ws_connect(
            f"http://{LOCAL}:{px.port}/ws", headers={"Host": host}, autoping=False, heartbeat=None))
        yield host, ws


async def closed(ws: aiohttp.ClientWebSocketResponse) -> bool:
    msg = await ws.receive(timeout=10)
    return msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def test_each_ingress_read_timeout_bounds_its_websockets_silence_and_unset_the_flag_does() -> None:
    backend = await start_echo()
    settings = HTTPSettings()
    assert settings.upgrade_idle_timeout == 3600.0  # the data plane's default, which nothing here overrides
    with virtual_clock() as clock:
        async with proxy(rendered(backend.port), settings=settings) as px, AsyncExitStack() as stack:
            ws = {host: socket async for host, socket in sockets(px, stack)}
            for host, socket in ws.items():  # each socket went both ways through the proxy: all are tunnels
                await socket.send_str(host)
                assert (await socket.receive(timeout=5)).data == f"echo:{host}"

            def closes() -> float:
                return px.metric(TIMEOUTS, reason="upgrade_idle")

            await clock.advance(59)
            assert closes() == 0
            await clock.advance(2)  # 61 s of silence: proxy-read-timeout "60" closed its socket
            assert closes() == 1 and await closed(ws["short.test"])
            await clock.advance(3599 - 61)
            assert closes() == 1
            await clock.advance(2)  # 3601 s: the Ingress that set nothing is left to --upgrade-idle-timeout
            assert closes() == 2 and await closed(ws["unset.test"])
            await clock.advance(86399 - 3601)  # past the hour, which used to cut proxy-read-timeout "86400" too
            assert closes() == 2
            await ws["long.test"].send_str("still there")  # alive, and traffic restarts its silence
            assert (await ws["long.test"].receive(timeout=5)).data == "echo:still there"
            await clock.advance(86399)
            assert closes() == 2
            await clock.advance(2)
            assert closes() == 3 and await closed(ws["long.test"])
    backend.close()
