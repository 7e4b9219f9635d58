"""``myco status`` and ``myco logs`` as a user runs them, against a loopback agent API.

The API is served by aiohttp on 127.0.0.1 with the agreed handlers: ``/v1/fabric`` is
:func:`fabric_view_handler` over a real in-memory fabric; ``/v1/logs/{id}`` stands in for
the agent's log endpoint with the agreed contract (text lines, streamed while follow=1).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from reconciler.fabric import Fabric
from reconciler.home import MeshRecord
from reconciler.observe.http import fabric_view_handler
from reconciler.records import instance_key
from tests.helpers import async_wait_for

from .conftest import Mesh, inst, node

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Api:
    url: str
    logs: dict[str, list[str]]
    follow: dict[str, asyncio.Queue[str | None]] = field(default_factory=dict)
    queries: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def api(mesh: Mesh) -> AsyncIterator[Api]:
    logs = {"billing-a": ["a one", "a two"], "billing-b": ["b one"]}
    state = Api("", logs)

    async def log_handler(request: web.Request) -> web.StreamResponse:
        iid = request.match_info["instance"]
        if iid not in state.logs:
            raise web.HTTPNotFound()
        state.queries.append(dict(request.query))
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await resp.prepare(request)
        await resp.write("".join(line + "\n" for line in state.logs[iid]).encode())
        if request.query.get("follow") == "1":
            q = state.follow.setdefault(iid, asyncio.Queue())
            while (line := await q.get()) is not None:
                await resp.write(line.encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/fabric", fabric_view_handler(mesh.observer))
    app.router.add_get("/v1/logs/{instance}", log_handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    # The writer is the node that runs the instances: its record points at this API.
    mesh.writer.publish("node", node(mesh.writer.name, state.url))
    await async_wait_for(
        lambda: (mesh.observer.get("n1", "node") or {}).get("api_url") == state.url,  # type: ignore[union-attr]
        what="node record",
    )
    try:
        yield state
    finally:
        for q in state.follow.values():
            q.put_nowait(None)
        await runner.cleanup()


async def myco(*args: str, home: Path | None = None) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if home is not None:
        env["MYCO_HOME"] = str(home)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler", *args, env=env, cwd=str(home or ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def run(*args: str, home: Path | None = None) -> tuple[int, str, str]:
    proc = await myco(*args, home=home)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_tables_from_the_api_in_mesh_json(api: Api, tmp_path: Path) -> None:
    MeshRecord(pid=os.getpid(), garden="", edge="", agent_api=api.url).save(tmp_path)
    code, out, err = await run("status", home=tmp_path)
    assert (code, err) == (0, "")
    assert "GARDEN  revision 0123456789ab" in out
    apps = [line.split() for line in out.splitlines()]
    assert ["billing", "Synced", "Healthy", "2/2"] in [row[:4] for row in apps]
    assert any(row[:2] == ["n1", "alive"] for row in apps)
    assert any(row[:1] == ["billing-a"] and "ready" in row for row in apps)


async def test_status_json(api: Api) -> None:
    code, out, _ = await run("status", "--api", api.url.removeprefix("http://"), "-o", "json")
    doc = json.loads(out)
    assert code == 0
    assert [a["name"] for a in doc["apps"]] == ["billing", "shop"]
    assert {i["instance_id"] for i in doc["instances"]} == {"billing-a", "billing-b"}
    assert {m["name"]: m["state"] for m in doc["nodes"]} == {"n1": "alive", "observer": "alive"}


async def test_status_watch_prints_again_when_the_mesh_changes(api: Api, mesh: Mesh) -> None:
    proc = await myco("status", "--api", api.url, "-w", "-o", "json", "--interval", "0.1")
    try:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first["summary"]["instances"] == 2
        mesh.writer.publish(instance_key("billing-c"), inst("billing-c", "billing", "n1"))
        second = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert second["summary"]["instances"] == 3
    finally:
        proc.terminate()
        await proc.wait()


async def test_status_errors_are_one_line(tmp_path: Path) -> None:
    code, out, err = await run("status", home=tmp_path)
    assert code == 1
    assert out == ""
    assert err.startswith("myco: error: no running mesh recorded in")
    assert err.count("\n") == 1
    code, _, err = await run("status", "--api", "http://127.0.0.1:1")
    assert code == 1
    assert err.startswith("myco: error: cannot reach the agent API at")
    assert "Traceback" not in err


async def test_logs_merges_instances_with_a_prefix(api: Api) -> None:
    code, out, err = await run("logs", "billing", "--api", api.url, "--since", "5m")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "[billing-a] a one", "[billing-a] a two", "[billing-b] b one",
    ]  # fmt: skip
    assert all(q == {"follow": "0", "since": "300"} for q in api.queries)


async def test_logs_of_one_instance_and_unknown_names(api: Api) -> None:
    code, out, _ = await run(
        "logs", "billing", "--instance", "billing-b", "--tail", "5", "--api", api.url
    )
    assert (code, out) == (0, "[billing-b] b one\n")
    assert api.queries[-1] == {"follow": "0", "tail": "5"}
    code, _, err = await run("logs", "billing", "--instance", "nope", "--api", api.url)
    assert code == 2
    assert "has no instance 'nope'" in err
    code, _, err = await run("logs", "nope", "--api", api.url)
    assert code == 1
    assert err == "myco: error: no app named 'nope'\n"
    code, _, err = await run("logs", "billing", "--since", "5 parsecs", "--api", api.url)
    assert code == 2
    assert "bad duration" in err


async def test_logs_follow_streams_new_lines(api: Api) -> None:
    proc = await myco("logs", "billing", "-f", "--api", api.url)
    try:
        assert proc.stdout is not None
        seen: set[str] = set()
        for _ in range(3):
            seen.add((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
        assert seen == {"[billing-a] a one\n", "[billing-a] a two\n", "[billing-b] b one\n"}
        await async_wait_for(lambda: len(api.follow) == 2, what="both streams following")
        api.follow["billing-b"].put_nowait("b two\n")
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line == b"[billing-b] b two\n"
        for q in api.follow.values():
            q.put_nowait(None)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


def test_parse_duration() -> None:
    from reconciler.errors import UsageError
    from reconciler.observe.logs import parse_duration

    assert parse_duration("90") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800
    assert parse_duration("250ms") == 0.25
    for bad in ("", "-1", "1x", "m5", "5m 3s"):
        with pytest.raises(UsageError):
            parse_duration(bad)


_ = Fabric  # the fixture's type, for readers
