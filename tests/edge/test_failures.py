"""Ejection, recovery, retries: what the edge does when backends fail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import aiohttp
import pytest

from reconciler.edge.server import RunningEdge
from reconciler.records import Backend as BackendRecord
from reconciler.records import RouteRecord
from tests.edge.backends import reserve_port
from tests.edge.conftest import StartBackends, route
from tests.helpers import async_wait_for


async def test_repeated_5xx_ejects_then_backend_recovers(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    bad, good = await backends("bad", "good")
    bad.fail_with = 500
    edge.set_routes([route("app", (bad, 1), (good, 1))])
    statuses = []
    for _ in range(12):
        async with client.get(f"{edge.url}/app/x") as resp:
            statuses.append(resp.status)
    # 3 consecutive 5xx (the policy of the fixture) eject "bad"; 500 is not retried
    assert statuses.count(500) == 3
    assert len(bad.hits) == 3
    state = edge.table.backend("app", bad.endpoint)
    assert state is not None
    assert state.health.times == 1

    bad.fail_with = None  # it heals; after the ejection time it is tried again

    async def bad_serves_again() -> bool:
        async with client.get(f"{edge.url}/app/x") as resp:
            return bool((await resp.json())["backend"] == "bad")

    await async_wait_for(bad_serves_again, within=10, what="the ejected backend to recover")
    assert state.health.times == 0 or state.health.consecutive_5xx == 0


async def test_connect_failure_is_retried_on_another_backend_and_ejects(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    (good,) = await backends("good")
    dead = BackendRecord("dead", f"127.0.0.1:{reserve_port()}", 1)
    edge.set_routes(
        [RouteRecord("app", "/app", backends=(dead, BackendRecord("good", good.endpoint, 1)))]
    )
    for _ in range(6):
        async with client.post(f"{edge.url}/app/x", data=b"payload") as resp:
            assert resp.status == 200  # POST too: nothing was sent to the dead one
            assert (await resp.json())["body_bytes"] == 7
    state = edge.table.backend("app", dead.endpoint)
    assert state is not None
    assert state.health.times >= 1


async def test_only_dead_backends_give_502(
    edge: RunningEdge, client: aiohttp.ClientSession
) -> None:
    dead = [BackendRecord(f"d{i}", f"127.0.0.1:{reserve_port()}", 1) for i in range(2)]
    edge.set_routes([RouteRecord("app", "/app", backends=tuple(dead))])
    async with client.get(f"{edge.url}/app/x") as resp:
        assert resp.status == 502
    async with client.get(f"{edge.url}/app/x") as resp:  # both ejected now
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) >= 1


async def test_idempotent_request_is_retried_on_503(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    a, b = await backends("a", "b")
    a.fail_with = 503
    edge.set_routes([route("app", (a, 1), (b, 1))])
    for _ in range(4):
        async with client.get(f"{edge.url}/app/x") as resp:
            assert resp.status == 200
            assert (await resp.json())["backend"] == "b"
    assert 1 <= len(a.hits) <= 3


async def test_post_is_not_retried_once_its_body_was_sent(
    edge: RunningEdge, backends: StartBackends, client: aiohttp.ClientSession
) -> None:
    a, b = await backends("a", "b")
    edge.set_routes([route("app", (a, 1), (b, 1))])
    # the backend answers 503 after reading the body: not idempotent, not retried
    async with client.post(f"{edge.url}/app/status/503", data=b"x" * 1000) as resp:
        assert resp.status == 503
    # the backend reads the body and drops the connection: 502, not retried either
    async with client.post(f"{edge.url}/app/drop", data=b"y" * 1000) as resp:
        assert resp.status == 502
    hits = Counter(m for bk in (a, b) for (m, _) in bk.hits)
    assert hits == {"POST": 2}
    assert len(a.hits) == 1
    assert len(b.hits) == 1


@pytest.fixture
def killable_backends() -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    for name in ("p1", "p2"):
        port = reserve_port()
        p = subprocess.Popen(
            [sys.executable, "-m", "tests.edge.backends", str(port), name],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        procs.append((p, f"127.0.0.1:{port}"))
    try:
        for p, _ in procs:
            assert p.stdout is not None
            assert p.stdout.readline().startswith(b"listening")
        yield procs
    finally:
        for p, _ in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            if p.stdout is not None:
                p.stdout.close()


async def test_request_is_retried_after_a_backend_is_killed(
    edge: RunningEdge,
    client: aiohttp.ClientSession,
    killable_backends: list[tuple[subprocess.Popen[bytes], str]],
) -> None:
    (p1, e1), (_p2, e2) = killable_backends
    edge.set_routes(
        [RouteRecord("app", "/app", backends=(BackendRecord("p1", e1), BackendRecord("p2", e2)))]
    )
    for _ in range(4):  # both serve, keep-alive connections to both are pooled
        async with client.get(f"{edge.url}/app/x") as resp:
            assert resp.status == 200
    os.killpg(p1.pid, signal.SIGKILL)
    p1.wait()
    results = []
    for _ in range(10):
        async with client.get(f"{edge.url}/app/x") as resp:
            results.append((resp.status, (await resp.json())["backend"]))
    assert results == [(200, "p2")] * 10
    state = edge.table.backend("app", e1)
    assert state is not None
    assert state.health.times >= 1
