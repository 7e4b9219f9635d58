"""The dashboard: one static page at ``/ui/`` and a server-sent event stream of statuses.

``GET /ui/events`` sends ``event: status`` with the :class:`MeshStatus` JSON at once and
then whenever the fabric view changes (debounced by :class:`StatusFeed`; rebuilt every
``refresh_s`` to catch member state changes, with a ``: keepalive`` comment line when
nothing changed, which is also how a closed client connection is noticed).
``GET /ui/status`` gives the current status once. Streams end when the fabric stops or
the application shuts down.

The charts (requests per second, p99 against the budget, instances, with the autoscale and
rollout events) come from a :class:`Timeline` this application samples every
``sample_s`` while it runs (a task started and stopped with the application), so a page
opened later still sees the last ``window_s``: ``GET /ui/events?charts=1`` adds to the
stream the whole timeline at once (``event: timeline``) and then each new sample
(``event: sample``). (The same route, so the same access rule: a viewer's.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from reconciler.aio import wait_event
from reconciler.clock import Clock, RealClock
from reconciler.fabric.api import FabricAPI

from .feed import StatusFeed, Timeline, sample_timeline
from .snapshot import snapshot_of
from .status import build_status

log = logging.getLogger("myco.observe")

STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}


@dataclass(frozen=True)
class UiConfig:
    debounce_s: float = 0.2
    refresh_s: float = 5.0
    sample_s: float = 1.0  # the charts: one sample a second (the edges publish as often)
    window_s: float = 900.0  # the charts: the last 15 minutes
    max_charts: int = 32  # apps charted at most (autoscaled first, then the busiest)


_FEEDS = web.AppKey("myco_ui_feeds", set[StatusFeed])


class _Samples:
    """The timeline, and the latest samples for the streams that follow it."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.recent: deque[dict[str, Any]] = deque(maxlen=64)
        self.closing = False
        self._new = asyncio.Event()

    def add(self, sample: dict[str, Any]) -> None:
        self.recent.append(sample)
        new, self._new = self._new, asyncio.Event()
        new.set()

    def close(self) -> None:
        self.closing = True
        self._new.set()

    def ticket(self) -> asyncio.Event:
        """Set when the next sample is added (take it before reading :meth:`since`)."""
        return self._new

    def since(self, seq: int) -> list[dict[str, Any]] | None:
        """The samples after ``seq``; None when some were dropped (send the timeline)."""
        if self.recent and self.recent[0]["seq"] > seq + 1:
            return None
        return [s for s in self.recent if s["seq"] > seq]


_SAMPLES = web.AppKey("myco_ui_samples", _Samples)


def setup_ui(
    app: web.Application,
    fabric: FabricAPI,
    config: UiConfig | None = None,
    *,
    clock: Clock | None = None,
) -> None:
    """Add ``/ui``, ``/ui/``, ``/ui/status``, ``/ui/events``, ``/ui/static/*`` to ``app``;
    sample the charts while it runs."""
    cfg = config or UiConfig()
    feeds: set[StatusFeed] = set()
    app[_FEEDS] = feeds
    samples = _Samples(Timeline(cfg.window_s, cfg.max_charts))
    app[_SAMPLES] = samples

    async def index(request: web.Request) -> web.StreamResponse:
        if request.path == "/ui":
            raise web.HTTPFound("/ui/")  # so that the page's relative URLs resolve under /ui/
        return _static("index.html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return _static(name)

    async def status(request: web.Request) -> web.Response:
        return web.json_response(build_status(snapshot_of(fabric)).to_json())

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        feed = StatusFeed(
            fabric, debounce_s=cfg.debounce_s, refresh_s=cfg.refresh_s, heartbeat=True
        )
        feeds.add(feed)
        lock = asyncio.Lock()  # two writers (statuses and chart samples), whole events

        async def send(chunk: bytes) -> None:
            async with lock:
                await resp.write(chunk)

        async def statuses() -> None:
            last = ""
            async for st in feed:
                data = json.dumps(st.to_json(), separators=(",", ":"), sort_keys=True)
                if data == last:  # a heartbeat: finds out whether the client is still there
                    await send(b": keepalive\n\n")
                    continue
                last = data
                await send(f"event: status\ndata: {data}\n\n".encode())

        try:
            if request.query.get("charts") == "1":
                async with asyncio.TaskGroup() as tg:
                    charts = tg.create_task(_follow(samples, send, cfg.refresh_s))
                    try:
                        await statuses()  # ends with the feed (fabric stopped, shutdown)
                    finally:
                        charts.cancel()
            else:
                await statuses()
        except* ConnectionError:
            log.debug("ui: event stream closed by the client")
        finally:
            feeds.discard(feed)
            await feed.aclose()
        return resp

    async def close_feeds(_app: web.Application) -> None:
        samples.close()
        for feed in list(feeds):
            await feed.aclose()

    async def sampling(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(
            sample_timeline(
                fabric,
                samples.timeline,
                sample_s=cfg.sample_s,
                clock=clock or RealClock(),
                on_sample=samples.add,
            ),
            name="ui-timeline",
        )
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.on_shutdown.append(close_feeds)
    app.cleanup_ctx.append(sampling)
    app.router.add_get("/ui", index)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/status", status)
    app.router.add_get("/ui/events", events)
    app.router.add_get("/ui/static/{name}", static)


def ui_app(
    fabric: FabricAPI, config: UiConfig | None = None, *, clock: Clock | None = None
) -> web.Application:
    """A whole application serving only the dashboard (tests, or a dedicated port)."""
    app = web.Application()
    setup_ui(app, fabric, config, clock=clock)
    return app


async def _follow(
    samples: _Samples, send: Callable[[bytes], Awaitable[None]], refresh_s: float
) -> None:
    """Send the timeline (``event: timeline``), then each new sample (``event: sample``);
    the whole timeline again if this stream fell more than the kept samples behind."""
    seq = -1
    while not samples.closing:
        ticket = samples.ticket()
        new = samples.since(seq) if seq >= 0 else None
        if new is None:
            doc = samples.timeline.to_json()
            seq = doc["seq"]
            await send(_event("timeline", doc))
        else:
            for sample in new:
                await send(_event("sample", sample))
            seq = new[-1]["seq"] if new else seq
        await wait_event(ticket, refresh_s)


def _event(name: str, doc: dict[str, Any]) -> bytes:
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {data}\n\n".encode()


def _static(name: str) -> web.Response:
    body = resources.files("reconciler.observe").joinpath("static", name).read_bytes()
    return web.Response(
        body=body,
        content_type=STATIC_FILES[name],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )
