"""Serving spores by digest over HTTP and fetching them (real sockets on 127.0.0.1)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from reconciler.errors import FetchError, IntegrityError, NotFoundError
from reconciler.httpclient import one_attempt_session
from reconciler.repo.http import fetch_spore, repo_app
from reconciler.repo.store import SporeRepo


@pytest.fixture
async def served(built, tmp_path):
    repo = SporeRepo(tmp_path / "repo")
    digest = repo.put(built.path)
    server = TestServer(repo_app(repo), host="127.0.0.1")
    await server.start_server()
    try:
        yield server, repo, digest
    finally:
        await server.close()


async def test_get_by_digest(served, built):
    server, _, digest = served
    async with one_attempt_session() as s:
        async with s.get(server.make_url(f"/spores/{digest}")) as r:
            assert r.status == 200
            assert await r.read() == built.path.read_bytes()
            assert r.headers["X-Myco-Digest"] == digest
        async with s.head(server.make_url(f"/spores/{digest}")) as r:
            assert r.status == 200
        async with s.get(server.make_url(f"/spores/{'c' * 64}")) as r:
            assert r.status == 404
        async with s.get(server.make_url("/spores/not-a-digest")) as r:
            assert r.status == 400
        async with s.get(server.make_url(f"/spores/{digest.upper()}")) as r:
            assert r.status == 400


async def test_corrupt_object_is_not_served(served, tmp_path):
    server, _, digest = served
    _corrupt(tmp_path / "repo" / "spores" / f"{digest}.spore")
    async with one_attempt_session() as s, s.get(server.make_url(f"/spores/{digest}")) as r:
        assert r.status == 500


async def test_fetch_spore(served, built, tmp_path):
    server, _, digest = served
    base = str(server.make_url(""))
    async with one_attempt_session() as s:
        got = await fetch_spore(s, base, digest, tmp_path / "cache")
        assert got.read_bytes() == built.path.read_bytes()
        with pytest.raises(NotFoundError):
            await fetch_spore(s, base, "d" * 64, tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{digest}.spore"]


async def test_fetch_refuses_bytes_that_do_not_match(built, tmp_path):
    async def lying(request: web.Request) -> web.Response:
        return web.Response(body=b"something else")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/lie/spores/{digest}", lying)
    app.router.add_get("/down/spores/{digest}", broken)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with one_attempt_session() as s:
            with pytest.raises(IntegrityError):
                await fetch_spore(s, str(server.make_url("/lie")), built.digest, tmp_path / "c")
            with pytest.raises(FetchError):
                await fetch_spore(s, str(server.make_url("/down")), built.digest, tmp_path / "c")
    finally:
        await server.close()
    assert list((tmp_path / "c").iterdir()) == []


def _corrupt(obj):
    obj.chmod(0o644)
    with open(obj, "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
