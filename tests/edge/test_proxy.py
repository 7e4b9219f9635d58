"""The edge proxying to real loopback backends: routing, headers, errors, balancing."""

from __future__ import annotations

import re
from collections import Counter

import aiohttp

from reconciler.edge.server import RunningEdge
from tests.edge.conftest import StartBackends, route


async def test_prefix_is_stripped_and_forwarding_headers_added(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("billing", (a, 1))])
    async with client.get(
        f"{edge.url}/billing/hello/x?q=1&r=%20",
        headers={
            "X-Forwarded-For": "10.0.0.1",
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "hop",
            "Keep-Alive": "timeout=5",
            "X-Custom": "kept",
        },
    ) as resp:
        assert resp.status == 200
        got = await resp.json()
        rid = resp.headers["X-Request-ID"]
    assert got["path"] == "/hello/x"
    assert got["query"] == "q=1&r=%20"
    h = got["headers"]
    assert h["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert h["X-Forwarded-Proto"] == "http"
    assert h["X-Forwarded-Host"] == f"127.0.0.1:{edge.port}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", h["X-Mycelium-Edge"])
    assert re.fullmatch(r"[0-9a-f]{32}", h["X-Request-ID"])
    assert h["X-Request-ID"] == rid
    assert h["X-Custom"] == "kept"
    assert "X-Secret" not in h
    assert "Keep-Alive" not in h


async def test_bare_prefix_maps_to_root_and_request_id_is_kept(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("billing", (a, 1))])
    async with client.get(f"{edge.url}/billing", headers={"X-Request-ID": "abc-123"}) as resp:
        got = await resp.json()
    assert got["path"] == "/"
    assert got["headers"]["X-Request-ID"] == "abc-123"
    async with client.get(f"{edge.url}/billing/", headers={"X-Request-ID": "bad id\t<>"}) as r2:
        got2 = await r2.json()
    assert got2["headers"]["X-Request-ID"] != "bad id\t<>"


async def test_unknown_app_is_404_and_empty_route_is_503(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    edge.set_routes([route("empty")])
    async with client.get(f"{edge.url}/nope/x") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "unknown app"
    async with client.get(f"{edge.url}/billingx/x") as resp:
        assert resp.status == 404
    async with client.get(f"{edge.url}/empty/x") as resp:
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) >= 1
        body = await resp.json()
        assert body["app"] == "empty"
        assert body["status"] == 503


async def test_round_robin_spreads_evenly(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    bs = await backends("a", "b", "c")
    edge.set_routes([route("app", *((b, 1) for b in bs))])
    seen: Counter[str] = Counter()
    for _ in range(30):
        async with client.get(f"{edge.url}/app/x") as resp:
            seen[(await resp.json())["backend"]] += 1
    assert seen == {"a": 10, "b": 10, "c": 10}


async def test_weighted_split_follows_route_weights(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    stable, canary = await backends("stable", "canary")
    edge.set_routes([route("app", (stable, 9), (canary, 1))])
    seen: Counter[str] = Counter()
    for _ in range(200):
        async with client.get(f"{edge.url}/app/x") as resp:
            seen[(await resp.json())["backend"]] += 1
    # smooth WRR is exact per cycle of 10: 180/20, within a tolerance for safety
    assert 170 <= seen["stable"] <= 190
    assert seen["canary"] == 200 - seen["stable"]


async def test_draining_backend_gets_no_new_requests(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    a, b = await backends("a", "b")
    edge.set_routes([route("app", (a, 1), (b, 1), draining=(a,))])
    for _ in range(10):
        async with client.get(f"{edge.url}/app/x") as resp:
            assert (await resp.json())["backend"] == "b"
    assert a.hits == []


async def test_hop_by_hop_response_headers_are_stripped(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("app", (a, 1))])
    async with client.get(f"{edge.url}/app/download/200000") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "200000"
        assert len(await resp.read()) == 200000
    async with client.head(f"{edge.url}/app/x") as resp:
        assert resp.status == 200
