"""The agreed ``GET /v1/fabric?prefix=`` handler, for the agent's API to mount as it is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from reconciler.fabric.api import FabricAPI

from .snapshot import snapshot_of


def fabric_view_handler(fabric: FabricAPI) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``{"members": [...], "entries": [...]}`` of the merged view (see :mod:`.snapshot`)."""

    async def handler(request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        return web.json_response(snapshot_of(fabric, prefix).to_json())

    return handler
