"""The edge holds the first requests of an app at zero while it wakes (a real edge)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from reconciler.edge.config import EdgeConfig
from reconciler.edge.proxy import HOLD_QUEUE
from reconciler.edge.server import RunningEdge, running_edge
from reconciler.httpclient import one_attempt_session
from reconciler.records import Backend as BackendRecord
from reconciler.records import RouteRecord
from tests.edge.backends import Backend
from tests.helpers import async_wait_for


def at_zero(hold_s: float) -> RouteRecord:
    return RouteRecord("web", "/web", hold_s=hold_s)


def woken(backend: Backend) -> RouteRecord:
    return RouteRecord("web", "/web", backends=(BackendRecord("i1", backend.endpoint),), hold_s=5)


@pytest.fixture
async def edge_and_log() -> AsyncIterator[tuple[RunningEdge, list[dict[str, Any]]]]:
    published: list[dict[str, Any]] = []
    # a long tick: a record before it comes from the first held request
    cfg = EdgeConfig(port=0, stats_interval_s=30.0, shutdown_grace_s=1.0)
    async with running_edge(cfg, stats_sink=lambda apps, at: published.append(apps)) as edge:
        yield edge, published


async def test_held_requests_go_out_when_the_app_wakes(
    edge_and_log: tuple[RunningEdge, list[dict[str, Any]]],
) -> None:
    edge, published = edge_and_log
    backend = await Backend("b1").start()
    try:
        edge.set_routes([at_zero(hold_s=10.0)])
        async with one_attempt_session() as client:
            calls = [asyncio.create_task(client.get(f"{edge.url}/web/x")) for _ in range(3)]
            record = await async_wait_for(
                lambda: next((p["web"] for p in published if "web" in p), None),
                what="the held request published at once",
            )
            assert record["held"] >= 1
            await async_wait_for(lambda: edge.stats.held.get("web") == 3, what="3 held")
            assert not any(c.done() for c in calls)
            edge.set_routes([woken(backend)])
            for resp in await asyncio.gather(*calls):
                assert resp.status == 200
                assert (await resp.json())["path"] == "/x"
        assert edge.stats.held["web"] == 0
    finally:
        await backend.stop()


async def test_a_burst_beyond_the_queue_gets_503_with_retry_after_and_is_counted(
    edge_and_log: tuple[RunningEdge, list[dict[str, Any]]],
) -> None:
    edge, _published = edge_and_log
    backend = await Backend("b1").start()
    extra = 7
    try:
        edge.set_routes([at_zero(hold_s=10.0)])
        conn = aiohttp.TCPConnector(limit=0)
        async with one_attempt_session(connector=conn) as client:
            first = [
                asyncio.create_task(client.get(f"{edge.url}/web/x")) for _ in range(HOLD_QUEUE)
            ]
            await async_wait_for(
                lambda: edge.stats.held.get("web") == HOLD_QUEUE, what="a full queue"
            )
            refused = await asyncio.gather(*(client.get(f"{edge.url}/web/x") for _ in range(extra)))
            assert [r.status for r in refused] == [503] * extra
            assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
            assert edge.stats.held_rejected["web"] == extra
            assert edge.stats.signal(now=1e9)["web"]["held_rejected"] == extra
            edge.set_routes([woken(backend)])
            answers = await asyncio.gather(*first)
            assert [r.status for r in answers] == [200] * HOLD_QUEUE
    finally:
        await backend.stop()


async def test_an_app_that_does_not_wake_in_time_gets_503(
    edge_and_log: tuple[RunningEdge, list[dict[str, Any]]],
) -> None:
    edge, _published = edge_and_log
    edge.set_routes([at_zero(hold_s=0.3)])
    async with one_attempt_session() as client, client.get(f"{edge.url}/web/x") as resp:
        assert resp.status == 503
        assert "did not wake" in (await resp.json())["error"]


async def test_without_hold_s_no_backend_is_503_at_once(
    edge_and_log: tuple[RunningEdge, list[dict[str, Any]]],
) -> None:
    edge, _published = edge_and_log
    edge.set_routes([at_zero(hold_s=0.0)])
    async with one_attempt_session() as client, client.get(f"{edge.url}/web/x") as resp:
        assert resp.status == 503
        assert edge.stats.held.get("web", 0) == 0
