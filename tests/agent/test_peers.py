"""Spores from peers: real agents on loopback, a real fabric with a keyring, real processes.

Agent A fetches a spore from the reconciler's repo and runs it; the repo goes away (its
host died); agent B, told to run the same digest from the dead repo URL only, fetches it
from A (found through A's node record) over mutual TLS with its own certificate, and runs
it. A's spore route serves members only: not people, not another mesh, not a revoked one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.fabric import Fabric, open_fabric
from reconciler.fabric.joining import JoinSettings
from reconciler.fabric.keyring import Keyring
from reconciler.httpclient import one_attempt_session
from reconciler.identity import MemberDir
from reconciler.records import KEY_NODE, InstanceRecord, NodeRecord, Nutrients
from reconciler.spore.trust import TrustPolicy
from tests.agent.mesh import instance_seen, make_spore, one, publish_intent, serve_repo
from tests.helpers import async_wait_for
from tests.identity.pki import Pki


@asynccontextmanager
async def running_agent(
    tmp: Path, node: str, rec: Fabric, ring: Keyring, key_file: Path, pub: Path, pki: Pki
) -> AsyncIterator[tuple[Agent, Fabric]]:
    """A real agent with its identity: its API is mutual TLS even on loopback, and it
    fetches from its peers with its own certificate."""
    async with open_fabric(
        node, seeds=[rec.addr], keyring=ring, state_dir=tmp / f"{node}-fabric"
    ) as fab:
        cfg = AgentConfig(
            node=node,
            state_dir=tmp / f"{node}-state",
            fabric=JoinSettings(gossip_key=key_file),
            capacity=Nutrients(1000, 1024),
            resync_s=0.2,
            drain_delay_s=0.05,
            drain_timeout_s=5.0,
        )
        agent = Agent(cfg, fab, TrustPolicy.load([pub]), live=pki.live("agent", node))
        task = asyncio.ensure_future(agent.run())
        try:
            await async_wait_for(agent.ready.is_set, what=f"{node} ready")
            yield agent, fab
        finally:
            publish_intent(rec, node, 10**6)  # wither what is left: no process outlives us
            await async_wait_for(
                lambda: task.done() or not agent.records, within=30, what=f"{node} withered"
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # re-raises whatever made the agent stop early


def ready_on(rec: Fabric, node: str, iid: str) -> InstanceRecord | None:
    r = instance_seen(rec, node, iid)
    return r if r is not None and r.phase == "ready" else None


def announces(fab: Fabric, node: str, digest: str) -> bool:
    value = fab.get(node, KEY_NODE)
    return value is not None and digest in NodeRecord.from_json(value).spores


async def test_a_peer_serves_the_spore_when_the_repo_is_gone(tmp_path: Path) -> None:
    spore, digest, pub = make_spore(tmp_path)
    pki = Pki(tmp_path / "pki")
    ring = Keyring.generate()
    key_file = tmp_path / "gossip.key"
    ring.save(key_file)
    async with AsyncExitStack() as stack:
        rec = await stack.enter_async_context(
            open_fabric("reconciler", keyring=ring, state_dir=tmp_path / "rf")
        )
        repo_cm = serve_repo(tmp_path / "repo")
        repo, repo_url = await repo_cm.__aenter__()
        stack.push_async_exit(repo_cm)  # (exited early below; a second exit is harmless)
        await asyncio.to_thread(repo.put, spore)
        a, fab_a = await stack.enter_async_context(
            running_agent(tmp_path, "node-a", rec, ring, key_file, pub, pki)
        )
        b, fab_b = await stack.enter_async_context(
            running_agent(tmp_path, "node-b", rec, ring, key_file, pub, pki)
        )

        publish_intent(rec, "node-a", 1, one("web-a", "web", digest, (repo_url,)))
        await async_wait_for(
            lambda: ready_on(rec, "node-a", "web-a"),
            within=30,
            what="web-a ready on node-a",
        )
        assert a.cache is not None
        assert a.cache.sources[digest] == repo_url
        await async_wait_for(
            lambda: announces(fab_b, "node-a", digest), what="node-a announces the digest"
        )

        # The reconciler's host dies: its repo no longer answers.
        await repo_cm.__aexit__(None, None, None)
        async with one_attempt_session() as s:
            try:
                async with s.get(f"{repo_url}/spores/{digest}") as resp:
                    raise AssertionError(f"the repo still answers: HTTP {resp.status}")
            except aiohttp.ClientConnectionError:
                pass

        publish_intent(rec, "node-b", 1, one("web-b", "web", digest, (repo_url,)))
        ready = await async_wait_for(
            lambda: ready_on(rec, "node-b", "web-b"),
            within=30,
            what="web-b ready on node-b, from node-a's copy",
        )
        assert ready is not None
        assert b.cache is not None
        assert b.cache.sources[digest] == a.api_url  # from A, over mutual TLS
        assert a.api_url.startswith("https://")
        async with (
            one_attempt_session() as s,
            s.get(f"http://{ready.endpoint}/hi") as resp,
        ):
            assert (await resp.text()).strip() == "web-b /hi"
        # B now holds it verified too, and says so
        await async_wait_for(
            lambda: announces(fab_a, "node-b", digest), what="node-b announces the digest"
        )


async def test_the_spore_route_takes_a_member_certificate_and_nothing_else(
    tmp_path: Path,
) -> None:
    spore, digest, pub = make_spore(tmp_path)
    ring = Keyring.generate()
    key_file = tmp_path / "gossip.key"
    ring.save(key_file)
    pki = Pki(tmp_path / "pki")
    async with AsyncExitStack() as stack:
        rec = await stack.enter_async_context(
            open_fabric("reconciler", keyring=ring, state_dir=tmp_path / "rf")
        )
        repo, repo_url = await stack.enter_async_context(serve_repo(tmp_path / "repo"))
        await asyncio.to_thread(repo.put, spore)
        a, _ = await stack.enter_async_context(
            running_agent(tmp_path, "node-a", rec, ring, key_file, pub, pki)
        )
        spores = f"{a.api_url}/spores/{digest}"

        async def status(
            who: MemberDir | None, url: str = spores, headers: dict[str, str] | None = None
        ) -> int | str:
            connector = aiohttp.TCPConnector(ssl=pki.client(who))
            try:
                async with (
                    one_attempt_session(connector=connector) as s,
                    s.get(url, headers=headers) as resp,
                ):
                    return resp.status
            except aiohttp.ClientError:
                return "refused"

        peer = pki.member("agent", "node-b")
        # not verified here yet: not served, even to a member
        assert await status(peer) == 404

        publish_intent(rec, "node-a", 1, one("web-a", "web", digest, (repo_url,)))
        await async_wait_for(lambda: a.serves_spore(digest), within=30, what="spore verified")

        connector = aiohttp.TCPConnector(ssl=pki.client(peer))
        async with one_attempt_session(connector=connector) as s, s.get(spores) as resp:
            assert resp.status == 200
            assert hashlib.sha256(await resp.read()).hexdigest() == digest
        assert await status(pki.member("edge", "edge-1")) == 200  # any member role
        # nobody, a person (even an admin), another mesh's member: never
        assert await status(None) == 401
        admin = {"Authorization": f"Bearer {pki.token('root', 'admin')}"}
        assert await status(None, headers=admin) == 403
        assert await status(pki.member("operator", "alice", access="admin")) == 403
        assert await status(Pki(tmp_path / "other").member("agent", "node-b")) in ("refused", 401)
        # a person reads the rest of the API, a member too
        assert await status(None, f"{a.api_url}/v1/node", admin) == 200
        assert await status(peer, f"{a.api_url}/v1/node") == 200
        # a revoked member is refused at its next request
        assert a.live is not None
        a.live.verifier.revocations.add("node-b", time.time() + 1)
        assert await status(peer) == 401
