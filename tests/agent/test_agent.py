"""The agent over a real fabric, a real spore repo and real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.agent.runner import read_start_ticks
from reconciler.fabric import Fabric, open_fabric
from reconciler.httpclient import one_attempt_session
from reconciler.records import (
    KEY_NODE,
    Backend,
    IntentRecord,
    NodeRecord,
    Nutrients,
    RouteRecord,
    intents_key,
    routes_key,
)
from reconciler.spore.trust import TrustPolicy
from tests.agent.mesh import instance_seen, make_spore, one, publish_intent, serve_repo
from tests.helpers import async_wait_for
from tests.identity.pki import Pki


@dataclass
class Mesh:
    rec: Fabric  # plays the reconciler: publishes intents and routes
    agent: Agent
    fabric: Fabric
    digest: str
    url: str
    node: str
    pki: Pki  # the mesh CA the agent's identity (and its API's clients) come from


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    spore, digest, pub = make_spore(tmp_path)
    pki = Pki(tmp_path / "pki")
    async with (
        serve_repo(tmp_path / "repo") as (repo, url),
        open_fabric("reconciler", state_dir=tmp_path / "rf") as rec,
    ):
        await asyncio.to_thread(repo.put, spore)
        node = "node-a"
        async with open_fabric(node, seeds=[rec.addr], state_dir=tmp_path / "af") as fab:
            cfg = AgentConfig(
                node=node,
                state_dir=tmp_path / "state",
                capacity=Nutrients(1000, 1024),
                resync_s=0.2,
                drain_delay_s=0.05,
                drain_timeout_s=5.0,
            )
            live = pki.live("agent", node)  # its API: mutual TLS, even on loopback
            agent = Agent(cfg, fab, TrustPolicy.load([pub]), live=live)
            task = asyncio.ensure_future(agent.run())
            try:
                await async_wait_for(agent.ready.is_set, what="agent ready")
                yield Mesh(rec, agent, fab, digest, url, node, pki)
            finally:
                # wither whatever is left so no process outlives the test
                publish_intent(rec, node, 10**6)
                await async_wait_for(
                    lambda: task.done() or not agent.records, within=30, what="all withered"
                )
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task  # re-raises whatever made the agent stop early
                agent.enforcer.cleanup()


async def test_sprout_ready_then_wither(mesh: Mesh) -> None:
    rec, node = mesh.rec, mesh.node
    publish_intent(rec, node, 1, one("web-1", "web", mesh.digest, (mesh.url,)))
    ready = await async_wait_for(
        lambda: (r := instance_seen(rec, node, "web-1")) is not None and r.phase == "ready" and r,
        within=30,
        what="web-1 ready in the fabric",
    )
    assert ready.endpoint
    assert ready.pid
    assert ready.enforcement in ("cgroup2", "cgroup1", "rlimit")
    async with one_attempt_session() as s, s.get(f"http://{ready.endpoint}/hi") as resp:
        assert (await resp.text()).strip() == "web-1 /hi"
    node_rec = await async_wait_for(
        lambda: (
            (v := rec.get(node, KEY_NODE))
            and NodeRecord.from_json(v).free.cpu_milli == 900
            and NodeRecord.from_json(v)
        ),
        what="credits accounted",
    )
    assert node_rec.free == Nutrients(900, 960)
    assert node_rec.api_url == mesh.agent.api_url

    # an older epoch is ignored once a newer one was seen
    publish_intent(rec, node, 2, one("web-1", "web", mesh.digest, (mesh.url,)))
    await async_wait_for(lambda: mesh.agent.max_epoch == 2, what="epoch 2 seen")
    publish_intent(rec, node, 1)
    await async_wait_for(
        lambda: (
            (v := mesh.fabric.get("reconciler", intents_key(node)))
            and IntentRecord.from_json(v).epoch == 1
        ),
        what="the stale intent reached the agent's fabric",
    )
    mesh.agent.converge_once()
    assert "web-1" in mesh.agent.records
    assert mesh.agent.metrics["intents_ignored_total"] >= 1

    # the edge still routes to it: wither waits in draining
    route = RouteRecord("web", "/web", 2, backends=(Backend("web-1", ready.endpoint),))
    rec.publish(routes_key("web"), route.to_json())  # type: ignore[arg-type]
    await async_wait_for(lambda: mesh.agent.routed(ready.endpoint), what="route seen")
    publish_intent(rec, node, 3)
    await async_wait_for(
        lambda: (r := instance_seen(rec, node, "web-1")) is not None and r.phase == "draining",
        what="draining",
    )
    assert read_start_ticks(ready.pid) is not None
    rec.publish(routes_key("web"), RouteRecord("web", "/web", 3).to_json())  # type: ignore[arg-type]
    await async_wait_for(
        lambda: instance_seen(rec, node, "web-1") is None, within=30, what="withered"
    )
    assert read_start_ticks(ready.pid) is None


async def test_untrusted_or_missing_spore_is_reported(mesh: Mesh, tmp_path: Path) -> None:
    rec, node = mesh.rec, mesh.node
    other = tmp_path / "other"
    spore, digest, _ = make_spore(other, name="evil")  # signed by a key the agent doesn't trust
    (tmp_path / "repo2").mkdir()
    async with serve_repo(tmp_path / "repo2") as (repo2, url2):
        await asyncio.to_thread(repo2.put, spore)
        publish_intent(rec, node, 1, one("evil-1", "evil", digest, (url2,)))
        bad = await async_wait_for(
            lambda: (
                (r := instance_seen(rec, node, "evil-1")) is not None and r.phase == "failed" and r
            ),
            within=30,
            what="untrusted spore refused",
        )
    assert "trust" in bad.message.lower() or "signer" in bad.message.lower()


async def test_local_api(mesh: Mesh) -> None:
    rec, node, agent = mesh.rec, mesh.node, mesh.agent
    publish_intent(rec, node, 1, one("web-1", "web", mesh.digest, (mesh.url,)))
    await async_wait_for(
        lambda: (r := agent.records.get("web-1")) is not None and r.phase == "ready",
        within=30,
        what="ready",
    )
    base = agent.api_url
    assert base.startswith("https://")
    nobody = aiohttp.TCPConnector(ssl=mesh.pki.client(None))  # trusts the mesh, shows no cert
    async with one_attempt_session(connector=nobody) as s:
        for path in ("/v1/node", "/v1/instances", "/metrics", f"/spores/{mesh.digest}"):
            async with s.get(base + path) as resp:
                assert resp.status == 401, path
            async with s.get(base + path, headers={"Authorization": "Bearer nope"}) as resp:
                assert resp.status == 401, path
    # a peer's member certificate opens every route (reads and spores)
    peer = aiohttp.TCPConnector(ssl=mesh.pki.client(mesh.pki.member("agent", "node-b")))
    async with one_attempt_session(connector=peer) as s:
        async with s.get(base + "/v1/node") as resp:
            body = await resp.json()
            assert body["node_id"] == node
            assert body["enforcement"] == agent.enforcer.mechanism
        async with s.get(base + "/v1/instances") as resp:
            (inst,) = await resp.json()
            assert inst["instance_id"] == "web-1"
        async with s.get(base + "/v1/fabric?prefix=intents/") as resp:
            (entry,) = (await resp.json())["entries"]
            assert entry["owner"] == "reconciler"
        async with s.get(base + f"/spores/{mesh.digest}") as resp:
            assert resp.status == 200
            import hashlib

            assert hashlib.sha256(await resp.read()).hexdigest() == mesh.digest
        async with s.get(base + "/metrics") as resp:
            text = await resp.text()
            ready = [ln for ln in text.splitlines() if ln.startswith("myco_instances{")]
            assert any('phase="ready"' in ln and ln.endswith(" 1.0") for ln in ready), text
        async with s.get(base + "/v1/logs/web-1") as resp:
            assert "starting web-1 on port" in await resp.text()
        # a rotated file comes first; ``since`` leaves out files written before it
        log = agent.state.log_path("web-1")
        old = log.with_name(log.name + ".1")
        old.write_text("from before the rotation\n")
        async with s.get(base + "/v1/logs/web-1") as resp:
            text = await resp.text()
            assert text.startswith("from before the rotation\n")
            assert "starting web-1" in text
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        async with s.get(base + "/v1/logs/web-1?since=60") as resp:
            assert "from before" not in await resp.text()
        async with s.get(base + "/v1/logs/web-1?since=x") as resp:
            assert resp.status == 400
        async with s.get(base + "/v1/logs/nope") as resp:
            assert resp.status == 404
        # follow: the stream stays open and delivers what is written later
        async with s.get(base + "/v1/logs/web-1?follow=1&tail=1") as resp:
            first = await asyncio.wait_for(resp.content.readline(), 10)
            assert first
            log = agent.state.log_path("web-1")
            with log.open("a") as f:
                f.write("appended later\n")
            line = await asyncio.wait_for(resp.content.readline(), 10)
            assert line == b"appended later\n"


async def test_the_agent_service_stops_with_service_failed_when_its_fabric_dies(
    tmp_path: Path,
) -> None:
    from functools import partial

    from reconciler.agent.service import main
    from reconciler.aio import serve_until_signalled
    from reconciler.clock import RealClock
    from reconciler.errors import ServiceFailed
    from reconciler.fabric import MemoryNetwork, open_memory_fabric

    _, _, pub = make_spore(tmp_path)
    net = MemoryNetwork(RealClock())
    opened: list[Fabric] = []

    @contextlib.asynccontextmanager
    async def opener(name: str) -> AsyncIterator[Fabric]:
        async with open_memory_fabric(name, net) as fabric:
            opened.append(fabric)
            yield fabric

    cfg = AgentConfig(node="n-fail", state_dir=tmp_path / "state", capacity=Nutrients(1000, 1024))
    service = partial(main, config=cfg, trust=TrustPolicy.load([pub]), open_fabric=opener)
    run = asyncio.create_task(serve_until_signalled(service, name="agent"))
    try:
        await async_wait_for(
            lambda: opened and opened[0].get("n-fail", KEY_NODE) is not None,
            within=20,
            what="the agent publishing its node",
        )
        assert not run.done()
        await opened[0].close()  # the fabric dies under the running agent
        with pytest.raises(ServiceFailed, match="the fabric watch stopped unexpectedly"):
            await asyncio.wait_for(run, 20)
    finally:
        if not run.done():
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, ServiceFailed):
                await run
