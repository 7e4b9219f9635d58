"""The edge fed by the real control fabric: a route published by one member is served."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import aiohttp

from reconciler.edge.config import EdgeConfig
from reconciler.edge.server import running_edge
from reconciler.edge.source import FabricRouteSource
from reconciler.fabric import Keyring, open_fabric
from reconciler.records import KEY_EDGE_ROUTES, KEY_EDGE_STATS, EdgeStatsRecord, routes_key
from tests.edge.conftest import EdgeProcess, StartBackends, route
from tests.helpers import async_wait_for


async def _backend_of(client: aiohttp.ClientSession, url: str) -> str | None:
    async with client.get(url) as resp:
        if resp.status != 200:
            return None
        return str((await resp.json())["backend"])


async def test_route_published_by_another_member_is_served_and_followed(
    backends: StartBackends, client: aiohttp.ClientSession, edge_config: EdgeConfig
) -> None:
    blue, green = await backends("blue", "green")
    async with (
        open_fabric("reconciler-1") as publisher,
        open_fabric("edge-1", seeds=[publisher.addr]) as member,
        running_edge(edge_config, FabricRouteSource(member, resync_s=0.2)) as edge,
    ):
        url = f"{edge.url}/billing/hello"
        publisher.publish(routes_key("billing"), route("billing", (blue, 1)).to_json())
        await async_wait_for(
            lambda: _backend_of(client, url), within=15, what="the route to reach the edge"
        )
        assert await _backend_of(client, url) == "blue"
        switched = route("billing", (blue, 1), (green, 1), draining=(blue,))
        publisher.publish(routes_key("billing"), replace(switched, generation=7).to_json())

        async def green_only() -> bool:
            return {await _backend_of(client, url) for _ in range(4)} == {"green"}

        await async_wait_for(green_only, within=15, what="the blue/green switch")

        # The edge says which route generation it serves, once it serves it (the
        # reconciler withers a draining instance only then).
        async def served() -> bool:
            return publisher.get("edge-1", KEY_EDGE_ROUTES) == {"apps": {"billing": 7}}

        await async_wait_for(served, within=15, what="the edge to report generation 7")
        publisher.delete(routes_key("billing"))

        async def gone() -> bool:
            async with client.get(url) as resp:
                return resp.status == 404

        await async_wait_for(gone, within=15, what="the route to be withdrawn")


async def test_edge_process_joins_with_a_key_and_publishes_stats(
    backends: StartBackends,
    client: aiohttp.ClientSession,
    edge_process: Callable[..., EdgeProcess],
    tmp_path: Path,
) -> None:
    (a,) = await backends("a")
    keyring = Keyring.generate()
    key_file = tmp_path / "gossip.key"
    keyring.save(key_file)
    async with open_fabric("reconciler-1", keyring=keyring) as publisher:
        publisher.publish(routes_key("app"), route("app", (a, 1)).to_json())
        edge = edge_process(
            "--join", publisher.addr, "--gossip-key", str(key_file), "--stats-interval", "0.3",
            "--name", "edge-test", "--loop", "asyncio",
        )  # fmt: skip
        await edge.ready(client)
        await async_wait_for(
            lambda: _backend_of(client, f"{edge.url}/app/x"), within=15, what="routes via gossip"
        )

        def stats() -> EdgeStatsRecord | None:
            for (owner, _key), value in publisher.view(KEY_EDGE_STATS).items():
                if owner == "edge-test" and value:
                    return EdgeStatsRecord.from_json(value)
            return None

        async def requested_stats() -> EdgeStatsRecord | None:
            await _backend_of(client, f"{edge.url}/app/x")
            return stats()

        got = await async_wait_for(requested_stats, within=15, what="edge stats in the fabric")
        assert got.apps["app"]["requests"] >= 1
        assert {"errors_5xx", "p50_ms", "p99_ms", "rps"} <= set(got.apps["app"])
        code, err = edge.stop()
        assert code == 0, err
        assert "stats app=app requests=" in err  # the per-app line, logged without -v
        assert "Traceback" not in err
