"""WebSockets pass through; route changes under load fail no request."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest

from reconciler.edge.config import EdgeConfig
from reconciler.edge.server import RunningEdge, running_edge
from tests.edge.conftest import StartBackends, route
from tests.helpers import async_wait_for


async def test_websocket_echo_passes_through(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("chat", (a, 1))])
    async with client.ws_connect(f"{edge.url}/chat/ws", protocols=("chat",)) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hello")
        assert await ws.receive_str() == "a:hello"
        await ws.send_bytes(b"\x00\x01" * 50_000)
        assert await ws.receive_bytes() == b"\x00\x01" * 50_000
        await ws.close()
    assert a.hits == [("GET", "/ws")]


async def test_websocket_to_unknown_app_is_404(
    edge: RunningEdge, client: aiohttp.ClientSession
) -> None:
    edge.set_routes([])
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"{edge.url}/chat/ws")
    assert info.value.status == 404


async def test_route_changes_under_load_fail_no_request(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    old1, old2, new1, new2 = await backends("old1", "old2", "new1", "new2")
    edge.set_routes([route("app", (old1, 1), (old2, 1))])
    stop = asyncio.Event()
    statuses: Counter[int] = Counter()
    served: Counter[str] = Counter()
    progress = asyncio.Condition()

    async def load() -> None:
        while not stop.is_set():
            async with client.get(f"{edge.url}/app/x") as resp:
                statuses[resp.status] += 1
                if resp.status == 200:
                    served[(await resp.json())["backend"]] += 1
            async with progress:
                progress.notify_all()

    async def wait_requests(n: int) -> None:
        target = sum(statuses.values()) + n
        async with progress:
            await progress.wait_for(lambda: sum(statuses.values()) >= target)

    async with asyncio.TaskGroup() as tg:
        for _ in range(16):
            tg.create_task(load())
        await wait_requests(100)
        # blue/green: new set in (canary weight first), then old drained, then removed
        edge.set_routes([route("app", (old1, 5), (old2, 5), (new1, 1), (new2, 1))])
        await wait_requests(100)
        edge.set_routes(
            [route("app", (old1, 1), (old2, 1), (new1, 1), (new2, 1), draining=(old1, old2))]
        )
        await wait_requests(100)
        edge.set_routes([route("app", (new1, 1), (new2, 1))])
        await old1.stop()  # finishes what it has in flight, then is gone
        await old2.stop()
        await wait_requests(200)
        stop.set()
    assert set(statuses) == {200}, statuses
    assert served["new1"] > 0
    assert served["new2"] > 0
    assert sum(statuses.values()) >= 500


async def test_stopping_the_edge_lets_requests_in_flight_finish(
    edge_config: EdgeConfig, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    (a,) = await backends("a")
    async with running_edge(edge_config) as edge:
        edge.set_routes([route("app", (a, 1))])
        url = f"{edge.url}/app/gate"

        async def slow() -> tuple[int, str]:
            async with client.get(url) as resp:
                return resp.status, await resp.text()

        in_flight = asyncio.create_task(slow())
        await async_wait_for(lambda: a.waiting == 1, what="the request to reach the backend")
        # open the gate only once the edge is shutting down (its listener is closed)
        opener = asyncio.create_task(_open_when_refused(edge.port, a.gate))
    # the edge waited for the request in flight before it finished stopping
    assert in_flight.done()
    assert in_flight.result() == (200, "a passed the gate")
    await opener


async def _open_when_refused(port: int, gate: asyncio.Event) -> None:
    async def refused() -> bool:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        w.close()
        await w.wait_closed()
        return False

    await async_wait_for(refused, what="the edge to stop accepting")
    gate.set()


async def test_websocket_refused_by_the_backend_passes_its_answer_on(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("chat", (a, 1))])
    # the backend's catch-all route answers 200 JSON instead of switching protocols
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"{edge.url}/chat/not-a-socket")
    assert info.value.status == 200
    assert a.hits == [("GET", "/not-a-socket")]
    async with client.get(f"{edge.url}/chat/x") as resp:  # the edge still serves
        assert resp.status == 200
