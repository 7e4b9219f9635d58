"""Spores from peers: real agents on loopback, a real fabric with a keyring, real processes.

Agent A fetches a spore from the reconciler's repo and runs it; the repo goes away (its
host died); agent B, told to run the same digest from the dead repo URL only, fetches it
from A (found through A's node record) and runs it. A's API lets peers in with the mesh's
credential on the spore route only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.agent.api import TOKEN_FILE
from reconciler.fabric import Fabric, open_fabric
from reconciler.fabric.joining import JoinSettings
from reconciler.fabric.keyring import Keyring
from reconciler.records import KEY_NODE, InstanceRecord, NodeRecord, Nutrients
from reconciler.spore.trust import TrustPolicy
from tests.agent.mesh import instance_seen, make_spore, one, publish_intent, serve_repo
from tests.helpers import async_wait_for


@asynccontextmanager
async def running_agent(
    tmp: Path, node: str, rec: Fabric, ring: Keyring, key_file: Path, pub: Path
) -> AsyncIterator[tuple[Agent, Fabric]]:
    """A real agent whose API wants a token even on loopback (so the credential counts)."""
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
            api_auth="token",
        )
        agent = Agent(cfg, fab, TrustPolicy.load([pub]))
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
            running_agent(tmp_path, "node-a", rec, ring, key_file, pub)
        )
        b, fab_b = await stack.enter_async_context(
            running_agent(tmp_path, "node-b", rec, ring, key_file, pub)
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
        async with aiohttp.ClientSession() as s:
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
        assert b.cache.sources[digest] == a.api_url  # from A
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://{ready.endpoint}/hi") as resp,
        ):
            assert (await resp.text()).strip() == "web-b /hi"
        # B now holds it verified too, and says so
        await async_wait_for(
            lambda: announces(fab_a, "node-b", digest), what="node-b announces the digest"
        )


async def test_the_spore_route_takes_the_peer_credential_and_nothing_else(
    tmp_path: Path,
) -> None:
    spore, digest, pub = make_spore(tmp_path)
    new_key = Keyring.generate().primary
    ring = Keyring([Keyring.generate().primary, new_key])  # mid-rotation: two keys
    key_file = tmp_path / "gossip.key"
    ring.save(key_file)
    async with AsyncExitStack() as stack:
        rec = await stack.enter_async_context(
            open_fabric("reconciler", keyring=ring, state_dir=tmp_path / "rf")
        )
        repo, repo_url = await stack.enter_async_context(serve_repo(tmp_path / "repo"))
        await asyncio.to_thread(repo.put, spore)
        a, _ = await stack.enter_async_context(
            running_agent(tmp_path, "node-a", rec, ring, key_file, pub)
        )
        s = await stack.enter_async_context(aiohttp.ClientSession())
        spores = f"{a.api_url}/spores/{digest}"
        peer = {"Authorization": f"Bearer {ring.peer_token()}"}

        async def status(url: str, headers: dict[str, str] | None = None) -> int:
            async with s.get(url, headers=headers) as resp:
                return resp.status

        # not verified here yet: not served, even to a peer with the right credential
        assert await status(spores, peer) == 404

        publish_intent(rec, "node-a", 1, one("web-a", "web", digest, (repo_url,)))
        await async_wait_for(lambda: a.serves_spore(digest), within=30, what="spore verified")

        async with s.get(spores, headers=peer) as resp:
            assert resp.status == 200
            assert hashlib.sha256(await resp.read()).hexdigest() == digest
        # a credential from another keyring, none, or a mangled one: 401
        stranger = {"Authorization": f"Bearer {Keyring.generate().peer_token()}"}
        assert await status(spores, stranger) == 401
        assert await status(spores) == 401
        assert await status(spores, {"Authorization": ring.peer_token()}) == 401
        # the peer credential opens the spore route only
        assert await status(f"{a.api_url}/v1/node", peer) == 401
        assert await status(f"{a.api_url}/metrics", peer) == 401
        # the private token still opens everything
        token = (a.config.state_dir / TOKEN_FILE).read_text().strip()
        private = {"Authorization": f"Bearer {token}"}
        assert await status(f"{a.api_url}/v1/node", private) == 200
        assert await status(spores, private) == 200
        # key rotation: a peer already sending the new key's credential is let in
        rotated = Keyring([new_key])
        assert await status(spores, {"Authorization": f"Bearer {rotated.peer_token()}"}) == 200
