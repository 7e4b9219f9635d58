"""Fetching spores: fail-over between URLs, retries, one fetch per digest, trust, cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from reconciler.agent.fetch import FetchSettings, SporeCache
from reconciler.errors import FetchError, TrustError
from reconciler.repo.http import spore_routes
from reconciler.repo.store import SporeRepo
from reconciler.spore.keys import generate_keypair
from reconciler.spore.trust import TrustPolicy
from tests.agent.mesh import make_spore
from tests.helpers import free_port

FAST = FetchSettings(attempts=30, wait_initial_s=0.02, wait_max_s=0.05, timeout_s=10)


@asynccontextmanager
async def counting_repo(root: Path) -> AsyncIterator[tuple[SporeRepo, str, list[str]]]:
    repo = SporeRepo(root)
    seen: list[str] = []

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[count])
    app.add_routes(spore_routes(repo))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield repo, f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_failover_dedupe_and_cache(tmp_path: Path) -> None:
    spore, digest, pub = make_spore(tmp_path)
    dead = f"http://127.0.0.1:{free_port()}"
    async with counting_repo(tmp_path / "repo") as (repo, url, seen), aiohttp.ClientSession() as s:
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
    async with counting_repo(tmp_path / "repo") as (repo, url, seen), aiohttp.ClientSession() as s:
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
    async with aiohttp.ClientSession() as s:
        cache = SporeCache(tmp_path / "state", TrustPolicy.load([pub]), s, few)
        with pytest.raises(FetchError, match="unavailable"):
            await cache.prepare(digest, (f"http://127.0.0.1:{free_port()}",))
        with pytest.raises(FetchError, match="malformed digest"):
            await cache.prepare("../../etc/passwd", ("http://127.0.0.1:1",))


async def test_untrusted_signer_is_refused(tmp_path: Path) -> None:
    spore, digest, _ = make_spore(tmp_path)
    _, stranger = generate_keypair(tmp_path / "k2", "stranger")
    async with counting_repo(tmp_path / "repo") as (repo, url, _), aiohttp.ClientSession() as s:
        await asyncio.to_thread(repo.put, spore)
        cache = SporeCache(tmp_path / "state", TrustPolicy.load([stranger]), s, FAST)
        with pytest.raises(TrustError):
            await cache.prepare(digest, (url,))
        assert not (tmp_path / "state" / "payloads" / digest).exists()
