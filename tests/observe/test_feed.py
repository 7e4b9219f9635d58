"""StatusFeed: first status at once, debounced changes, heartbeats, and a clean end."""

from __future__ import annotations

import asyncio

from aiohttp import web

from reconciler.httpclient import one_attempt_session
from reconciler.observe import ui as ui_module
from reconciler.observe.feed import StatusFeed
from reconciler.observe.ui import UiConfig, ui_app
from reconciler.records import instance_key
from tests.helpers import async_wait_for

from .conftest import Mesh, inst


async def test_feed_yields_changes_heartbeats_and_ends_on_aclose(mesh: Mesh) -> None:
    feed = StatusFeed(mesh.observer, debounce_s=0.05, refresh_s=0.2, heartbeat=True)
    async with asyncio.timeout(30):
        first = await anext(feed)
        assert len(first.instances) == 2
        same = await anext(feed)  # nothing changed: a heartbeat with the same status
        assert same.to_json() == first.to_json()
        for n in "cde":  # a burst of changes is absorbed into one or a few statuses
            mesh.writer.publish(instance_key(f"billing-{n}"), inst(f"billing-{n}", "billing", "n1"))
        while len((st := await anext(feed)).instances) != 5:
            pass
        assert st.app("billing") is not None
        await feed.aclose()
        assert [s async for s in feed] == []


async def test_a_client_that_went_away_is_noticed_at_the_next_heartbeat(mesh: Mesh) -> None:
    app = ui_app(mesh.observer, UiConfig(debounce_s=0.05, refresh_s=0.1))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with one_attempt_session() as session:
            async with session.get(f"http://127.0.0.1:{port}/ui/events") as resp:
                async with asyncio.timeout(30):
                    while (await resp.content.readline()) != b": keepalive\n":
                        pass
                assert len(app[ui_module._FEEDS]) == 1
        await async_wait_for(lambda: not app[ui_module._FEEDS], what="stream handler ends")
    finally:
        await runner.cleanup()
