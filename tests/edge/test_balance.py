"""Least outstanding requests on real sockets: the counts in flight and what they steer.

Every test runs for each front end × upstream path × event loop (the ``edge_config``
fixture). The counts are ``BackendState.inflight`` in the edge's route table; a count
that is only given back after the edge notices something (a client gone, a tunnel
closed) is awaited with ``async_wait_for``, never a sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random

import aiohttp
import pytest

from reconciler.edge.config import EdgeConfig, Timeouts
from reconciler.edge.server import RunningEdge, running_edge
from tests.edge.backends import Backend
from tests.edge.conftest import StartBackends, route
from tests.helpers import async_wait_for


def inflight(edge: RunningEdge, b: Backend) -> int:
    state = edge.table.backend("app", b.endpoint)
    assert state is not None
    return state.inflight


async def all_given_back(edge: RunningEdge, *bs: Backend) -> None:
    await async_wait_for(
        lambda: all(inflight(edge, b) == 0 for b in bs) and edge.proxy.in_flight == 0,
        what="every count in flight to come back to 0",
    )


async def test_a_count_is_held_while_the_backend_works_and_given_back_after(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("app", (a, 1))])
    slow = asyncio.create_task(client.get(f"{edge.url}/app/gate"))
    await async_wait_for(lambda: a.waiting == 1, what="the request to reach the backend")
    assert inflight(edge, a) == 1
    a.gate.set()
    async with await slow as resp:
        assert resp.status == 200
    await all_given_back(edge, a)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/app/x", 200),  # the inline path (lean client) or aiohttp's
        ("POST", "/app/upload", 200),  # a body
        ("GET", "/app/status/500", 500),  # a server error passed on
        ("GET", "/app/status/503", 503),  # retried on the other backend, then passed on
        ("POST", "/app/drop", 502),  # the exchange broke
        ("GET", "/app/download/3000000", 200),  # streamed
        ("HEAD", "/app/x", 200),
    ],
)
async def test_every_answer_gives_the_counts_back(
    edge: RunningEdge,
    backends: StartBackends,
    client: aiohttp.ClientSession,
    method: str,
    path: str,
    status: int,
) -> None:
    a, b = await backends("a", "b")
    edge.set_routes([route("app", (a, 1), (b, 1))])
    for _ in range(3):
        async with client.request(method, f"{edge.url}{path}", data=b"x" * 1000) as resp:
            assert resp.status == status
            await resp.read()
    await all_given_back(edge, a, b)


async def test_a_connect_failure_retried_elsewhere_gives_both_counts_back(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    a, dead = await backends("a", "dead")
    edge.set_routes([route("app", (dead, 5), (a, 1))])  # the dead one is the first pick
    await dead.stop()
    async with client.get(f"{edge.url}/app/x") as resp:
        assert resp.status == 200
        assert (await resp.json())["backend"] == "a"
    await all_given_back(edge, a, dead)


async def test_a_timeout_gives_the_count_back(
    edge_config: EdgeConfig, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    (a,) = await backends("a")
    config = dataclasses.replace(edge_config, timeouts=Timeouts(read=0.2))
    async with running_edge(config) as edge:
        edge.set_routes([route("app", (a, 1))])
        async with client.get(f"{edge.url}/app/gate") as resp:  # the gate stays shut
            assert resp.status == 504
        await all_given_back(edge, a)
        a.gate.set()  # let the backend's handler end (its server stops without a grace wait)


async def test_a_client_gone_while_the_backend_works_gives_the_count_back(
    edge: RunningEdge, backends: StartBackends
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("app", (a, 1))])
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"GET /app/gate HTTP/1.1\r\nHost: x\r\n\r\n")
    await async_wait_for(lambda: a.waiting == 1, what="the request to reach the backend")
    assert inflight(edge, a) == 1
    writer.close()  # the client leaves before its answer
    await writer.wait_closed()
    a.gate.set()  # the backend answers to nobody
    await all_given_back(edge, a)


async def test_a_client_gone_mid_stream_gives_the_count_back(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("app", (a, 1))])
    resp = await client.get(f"{edge.url}/app/download/50000000")
    assert resp.status == 200
    await resp.content.readexactly(100_000)
    assert inflight(edge, a) == 1
    resp.close()  # drops the connection mid-body
    await all_given_back(edge, a)


async def test_a_websocket_is_counted_until_it_closes(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("app", (a, 1))])
    async with client.ws_connect(f"{edge.url}/app/ws", protocols=("chat",)) as ws:
        await ws.send_str("hi")
        assert await ws.receive_str() == "a:hi"
        assert inflight(edge, a) == 1
        await ws.close()
    await all_given_back(edge, a)


async def test_a_backend_with_a_backlog_gets_nothing_new_while_another_has_room(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    """The issue's case in small: ``a`` served alone and holds 3 requests; ``b`` joins.
    Round robin would send ``a`` half of what follows; here ``b`` gets them all."""
    a, b = await backends("a", "b")
    edge.table.rng = random.Random(4)
    edge.set_routes([route("app", (a, 1))])
    held = [asyncio.create_task(client.get(f"{edge.url}/app/gate")) for _ in range(3)]
    await async_wait_for(lambda: a.waiting == 3, what="3 requests to wait in the backend")
    edge.set_routes([route("app", (a, 1), (b, 1))])  # a keeps its state and its count
    assert inflight(edge, a) == 3
    seen = {"a": 0, "b": 0}
    for _ in range(40):
        async with client.get(f"{edge.url}/app/x") as resp:
            seen[(await resp.json())["backend"]] += 1
    assert seen == {"a": 0, "b": 40}  # round robin: 20 each
    a.gate.set()
    for task in held:
        async with await task as resp:
            assert resp.status == 200
    await all_given_back(edge, a, b)
