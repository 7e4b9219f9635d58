"""The dashboard: one static page at ``/ui/`` and a server-sent event stream of statuses.

``GET /ui/events`` sends ``event: status`` with the :class:`MeshStatus` JSON at once and
then whenever the fabric view changes (debounced by :class:`StatusFeed`; rebuilt every
``refresh_s`` to catch member state changes, with a ``: keepalive`` comment line when
nothing changed, which is also how a closed client connection is noticed).
``GET /ui/status`` gives the current status once. Streams end when the fabric stops or
the application shuts down.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from reconciler.fabric.api import FabricAPI

from .feed import StatusFeed
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


_FEEDS = web.AppKey("myco_ui_feeds", set[StatusFeed])


def setup_ui(app: web.Application, fabric: FabricAPI, config: UiConfig | None = None) -> None:
    """Add ``/ui``, ``/ui/``, ``/ui/status``, ``/ui/events``, ``/ui/static/*`` to ``app``."""
    cfg = config or UiConfig()
    feeds: set[StatusFeed] = set()
    app[_FEEDS] = feeds

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
        last = ""
        try:
            async for st in feed:
                data = json.dumps(st.to_json(), separators=(",", ":"), sort_keys=True)
                if data == last:  # a heartbeat: finds out whether the client is still there
                    await resp.write(b": keepalive\n\n")
                    continue
                last = data
                await resp.write(f"event: status\ndata: {data}\n\n".encode())
        except ConnectionError:
            log.debug("ui: event stream closed by the client")
        finally:
            feeds.discard(feed)
            await feed.aclose()
        return resp

    async def close_feeds(_app: web.Application) -> None:
        for feed in list(feeds):
            await feed.aclose()

    app.on_shutdown.append(close_feeds)
    app.router.add_get("/ui", index)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/status", status)
    app.router.add_get("/ui/events", events)
    app.router.add_get("/ui/static/{name}", static)


def ui_app(fabric: FabricAPI, config: UiConfig | None = None) -> web.Application:
    """A whole application serving only the dashboard (tests, or a dedicated port)."""
    app = web.Application()
    setup_ui(app, fabric, config)
    return app


def _static(name: str) -> web.Response:
    body = resources.files("reconciler.observe").joinpath("static", name).read_bytes()
    return web.Response(
        body=body,
        content_type=STATIC_FILES[name],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )
