"""The idle backend pool follows demand: a steady load with more requests in flight to one endpoint than
``max_idle_per_endpoint`` reuses its connections round after round instead of closing the surplus after
each burst of responses and reconnecting for the next (real sockets, a backend that counts connections)."""

from __future__ import annotations

import asyncio

from dataplane.http.settings import HTTPSettings
from tests.integration.http_fixtures import Client, RawBackend, pool, proxy, snapshot, start_raw, vhost

IN_FLIGHT = 6
ROUNDS = 3


async def test_connections_in_flight_above_max_idle_are_reused() -> None:
    waiting: list[asyncio.Event] = []  # one per request of the round: the responses wait for all of them

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: RawBackend) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            backend.received.append(head.split(b"\r\n", 1)[0])
            mine = asyncio.Event()
            waiting.append(mine)
            if len(waiting) == IN_FLIGHT:  # every request of the round is in flight at once: answer them all
                for event in waiting:
                    event.set()
                waiting.clear()
            await asyncio.wait_for(mine.wait(), 10)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    backend = await start_raw(script)
    snap = snapshot([vhost("app.test", ("/", "Prefix", "p"))], [pool("p", backend.endpoint)])
    try:
        async with proxy(snap, settings=HTTPSettings(max_idle_per_endpoint=2)) as px:
            clients = [await Client.open(px.port) for _ in range(IN_FLIGHT)]
            for round_no in range(ROUNDS):
                answers = await asyncio.wait_for(
                    asyncio.gather(*(c.get(f"/r{round_no}/{i}") for i, c in enumerate(clients))), 20)
                assert [(r.status, r.body) for r in answers] == [(200, b"ok")] * IN_FLIGHT
                await asyncio.sleep(0)  # the last releases into the pool
            assert len(backend.received) == IN_FLIGHT * ROUNDS
            # One connection per request in flight, each reused every round (with the fixed cap of 2 it
            # was 6 + 4 + 4: the four beyond the cap closed after each round and reopened for the next).
            assert backend.connections == IN_FLIGHT
            upstream = px.table.upstreams["p"]
            assert upstream.connects == IN_FLIGHT
            for c in clients:
                await c.close()
    finally:
        backend.close()
