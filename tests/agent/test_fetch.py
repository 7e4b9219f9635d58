"""Fetching spores: fail-over between URLs and peers, retries, one fetch per digest, trust,
cache, and what the cache lets the agent serve."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from reconciler.agent.fetch import FetchSettings, SporeCache
from reconciler.agent.peers import MAX_ANNOUNCED, Peer, announced, peers_holding
from reconciler.errors import FetchError, TrustError
from reconciler.fabric import MemoryNetwork, RealClock, open_memory_fabric
from reconciler.httpclient import one_attempt_session
from reconciler.records import KEY_NODE, NodeRecord
from reconciler.repo.http import spore_routes
from reconciler.repo.store import SporeRepo
from reconciler.spore.keys import generate_keypair
from reconciler.spore.trust import TrustPolicy
from tests.agent.mesh import make_spore
from tests.helpers import async_wait_for, free_port

FAST = FetchSettings(attempts=30, wait_initial_s=0.02, wait_max_s=0.05, timeout_s=10)


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def counting_repo(
    root: Path, auth: list[str] | None = None
) -> AsyncIterator[tuple[SporeRepo, str, list[str]]]:
    """A served repo that records the path (and, in ``auth``, the credential) asked for."""
    repo = SporeRepo(root)
    seen: list[str] = []

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        seen.append(request.path)
        if auth is not None:
            auth.append(request.headers.get("Authorization", ""))
        return await handler(request)

    app = web.Application(middlewares=[count])
    app.add_routes(spore_routes(repo))
    async with serve(app) as url:
        yield repo, url, seen


@asynccontextmanager
async def lying_peer(body: bytes) -> AsyncIterator[tuple[str, list[str]]]:
    """A peer that answers every spore request with ``body`` (other bytes than asked)."""
    seen: list[str] = []

    async def lie(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/spores/{digest}", lie)
    async with serve(app) as url:
        yield url, seen


async def test_failover_dedupe_and_cache(tmp_path: Path) -> None:
    spore, digest, pub = make_spore(tmp_path)
    dead = f"http://127.0.0.1:{free_port()}"
    async with counting_repo(tmp_path / "repo") as (repo, url, seen), one_attempt_session() as s:
        await asyncio.to_thread(repo.put, spore)
        cache = SporeCache(tmp_path / "state", TrustPolicy.load([pub]), s, FAST)
        got = await asyncio.gather(*(cache.prepare(digest, (dead, url)) for _ in range(5)))
        assert {g.payload for g in got} == {tmp_path / "state" / "payloads" / digest}
        assert (got[0].payload / "serve.py").is_file()
        assert got[0].manifest.name == "web"
        assert seen == [f"/spores/{digest}"]  # one download for five sprouts
        assert cache.held() == [digest]

        # a new agent process on the same state re-verifies the cache and fetches nothing
        again = SporeCache(tmp_path / "state", TrustPolicy.load([pub]), s, FAST)
        assert (await again.prepare(digest, (url,))).payload == got[0].payload
        assert len(seen) == 1

        # a corrupt cached copy is thrown away and fetched again
        third = SporeCache(tmp_path / "state2", TrustPolicy.load([pub]), s, FAST)
        cached = tmp_path / "state2" / "spores" / f"{digest}.spore"
        cached.write_bytes(spore.read_bytes()[:-10] + b"0123456789")
        await third.prepare(digest, (url,))
        assert len(seen) == 2


async def test_retries_until_the_spore_appears(tmp_path: Path) -> None:
    spore, digest, pub = make_spore(tmp_path)
    async with counting_repo(tmp_path / "repo") as (repo, url, seen), one_attempt_session() as s:
        cache = SporeCache(tmp_path / "state", TrustPolicy.load([pub]), s, FAST)
        task = asyncio.ensure_future(cache.prepare(digest, (url,)))
        while len(seen) < 2:  # refused (404) at least twice...
            await asyncio.wait_for(asyncio.shield(asyncio.sleep(0.01)), 10)
        await asyncio.to_thread(repo.put, spore)  # ...then it is published
        prepared = await asyncio.wait_for(task, 20)
        assert prepared.digest == digest


async def test_gives_up_with_a_temporary_error(tmp_path: Path) -> None:
    _, digest, pub = make_spore(tmp_path)
    few = FetchSettings(attempts=2, wait_initial_s=0.01, wait_max_s=0.01)
    async with one_attempt_session() as s:
        cache = SporeCache(tmp_path / "state", TrustPolicy.load([pub]), s, few)
        with pytest.raises(FetchError, match="unavailable"):
            await cache.prepare(digest, (f"http://127.0.0.1:{free_port()}",))
        with pytest.raises(FetchError, match="malformed digest"):
            await cache.prepare("../../etc/passwd", ("http://127.0.0.1:1",))


async def test_untrusted_signer_is_refused(tmp_path: Path) -> None:
    spore, digest, _ = make_spore(tmp_path)
    _, stranger = generate_keypair(tmp_path / "k2", "stranger")
    async with counting_repo(tmp_path / "repo") as (repo, url, _), one_attempt_session() as s:
        await asyncio.to_thread(repo.put, spore)
        cache = SporeCache(tmp_path / "state", TrustPolicy.load([stranger]), s, FAST)
        with pytest.raises(TrustError):
            await cache.prepare(digest, (url,))
        assert not (tmp_path / "state" / "payloads" / digest).exists()


async def test_falls_over_to_a_peer_refusing_one_that_serves_other_bytes(tmp_path: Path) -> None:
    spore, digest, pub = make_spore(tmp_path)
    dead_repo = f"http://127.0.0.1:{free_port()}"
    repo_auth: list[str] = []
    peer_auth: list[str] = []
    asked: list[str] = []
    async with (
        counting_repo(tmp_path / "repo", repo_auth) as (repo_only, repo_url, _),
        counting_repo(tmp_path / "peer", peer_auth) as (peer_store, peer_url, peer_seen),
        lying_peer(spore.read_bytes()[::-1]) as (liar_url, liar_seen),
        one_attempt_session() as s,
    ):
        await asyncio.to_thread(peer_store.put, spore)

        def peers(d: str) -> list[Peer]:
            asked.append(d)
            # only the liar on the first attempt: the good peer is found on the second
            good = [Peer("good", peer_url)] if len(asked) > 1 else []
            return [Peer("liar", liar_url), *good]

        cache = SporeCache(tmp_path / "state", TrustPolicy.load([pub]), s, FAST, peers=peers)
        # the repo URLs come first: a live repo without the spore, then a dead one
        got = await cache.prepare(digest, (repo_url, dead_repo))
        assert got.manifest.name == "web"
        assert cache.sources[digest] == peer_url
        assert liar_seen == [f"/spores/{digest}"]  # refused once, never asked again
        assert peer_seen == [f"/spores/{digest}"]
        assert asked == [digest, digest]
        # no shared secret goes anywhere: members prove who they are with certificates
        assert peer_auth == [""]
        assert repo_auth == ["", ""]
        assert cache.serves(digest)
        assert cache.verified() == [digest]


async def test_a_peer_that_appears_later_is_found_on_a_retry(tmp_path: Path) -> None:
    spore, digest, pub = make_spore(tmp_path)
    async with (
        counting_repo(tmp_path / "peer") as (store, url, seen),
        one_attempt_session() as s,
    ):
        await asyncio.to_thread(store.put, spore)
        calls: list[int] = []

        def peers(d: str) -> list[Peer]:
            calls.append(1)
            return [Peer("late", url)] if len(calls) >= 3 else []

        cache = SporeCache(tmp_path / "state", TrustPolicy.load([pub]), s, FAST, peers=peers)
        got = await cache.prepare(digest, ())  # no repo URL at all
        assert got.digest == digest
        assert len(calls) == 3
        assert seen == [f"/spores/{digest}"]

        few = FetchSettings(attempts=2, wait_initial_s=0.01, wait_max_s=0.01)
        lonely = SporeCache(tmp_path / "s2", TrustPolicy.load([pub]), s, few, peers=lambda d: [])
        with pytest.raises(FetchError, match="nor any live peer can serve it"):
            await lonely.prepare(digest, ())


async def test_serves_only_what_it_verified(tmp_path: Path) -> None:
    spore, digest, pub = make_spore(tmp_path)
    _, stranger = generate_keypair(tmp_path / "k2", "stranger")
    async with counting_repo(tmp_path / "repo") as (repo, url, _), one_attempt_session() as s:
        await asyncio.to_thread(repo.put, spore)
        wary = SporeCache(tmp_path / "state", TrustPolicy.load([stranger]), s, FAST)
        with pytest.raises(TrustError):
            await wary.prepare(digest, (url,))
        assert not wary.serves(digest)
        assert wary.held() == []  # an untrusted spore is not kept, so never served

        verified: list[str] = []
        cache = SporeCache(
            tmp_path / "state", TrustPolicy.load([pub]), s, FAST, on_verified=verified.append
        )
        await cache.prepare(digest, (url,))
        assert verified == [digest]
        assert cache.serves(digest)

        # a restarted agent serves the spores of the instances it adopts once re-verified
        again = SporeCache(tmp_path / "state", TrustPolicy.load([pub]), s, FAST)
        assert not again.serves(digest)
        await again.verify_held([digest, "0" * 64])  # (one it does not hold is skipped)
        assert again.verified() == [digest]
        # ...and drops a cached copy that no longer verifies
        strict = SporeCache(tmp_path / "state", TrustPolicy.load([stranger]), s, FAST)
        await strict.verify_held([digest])
        assert not strict.serves(digest)
        assert strict.held() == []


def test_the_node_record_announces_a_bounded_verified_list() -> None:
    mine = ["b" * 64, "a" * 64, "f" * 64]  # "f...": an instance whose spore is not verified
    verified = [f"{i:064x}" for i in range(100)] + ["a" * 64, "b" * 64]
    out = announced(mine, verified)
    assert out[:2] == ("a" * 64, "b" * 64)  # the instances' own first
    assert "f" * 64 not in out
    assert len(out) == MAX_ANNOUNCED
    assert out[2] == f"{0:064x}"  # then the others, in the order given (most recent first)


async def test_peers_holding_reads_live_node_records() -> None:
    d1, d2 = "1" * 64, "2" * 64
    net = MemoryNetwork(RealClock())
    async with (
        open_memory_fabric("me", net) as me,
        open_memory_fabric("a", net, seeds=[me.addr]) as a,
        open_memory_fabric("b", net, seeds=[me.addr]) as b,
    ):
        me.publish(KEY_NODE, NodeRecord("me", api_url="http://me", spores=(d1,)).to_json())
        a.publish(KEY_NODE, NodeRecord("a", api_url="http://a", spores=(d1, d2)).to_json())
        b.publish(KEY_NODE, NodeRecord("b", api_url="http://b", spores=(d1,)).to_json())

        def holders(digest: str) -> set[Peer]:
            return set(peers_holding(me, digest, "me"))

        await async_wait_for(lambda: len(holders(d1)) == 2, what="both node records")
        assert holders(d1) == {Peer("a", "http://a"), Peer("b", "http://b")}  # not itself
        assert holders(d2) == {Peer("a", "http://a")}
        assert holders("3" * 64) == set()
        await a.leave()  # a peer that left is no source any more
        await async_wait_for(lambda: holders(d2) == set(), what="a's record withdrawn")
        assert holders(d1) == {Peer("b", "http://b")}
