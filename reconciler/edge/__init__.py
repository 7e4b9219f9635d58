"""The edge router (docs/edge.md): ``/{app}/rest`` to the live backends of the app's route.

A pure routing core (:mod:`.routing`, :mod:`.headers`, :mod:`.stats`), one upstream seam
(:mod:`.seam`, with the in-memory :mod:`.fake`) and thin drivers (:mod:`.proxy`,
:mod:`.upstream`, :mod:`.aioclient`, :mod:`.tunnel`, :mod:`.server`, :mod:`.process`);
see ``docs/edge.md``.

Public API::

    running_edge(config, source) -> RunningEdge      # one worker, as an async context
    EdgeProxy(config, table, stats, upstream).serve(down)
    Upstream.send(backend, request) -> UpstreamResponse   # the seam; MockUpstream(handler)
    RouteTable, should_retry, EdgeConfig and its policies   # pure
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.lazy import lazy_exports

if TYPE_CHECKING:
    from reconciler.edge.config import (
        EdgeConfig,
        EjectionPolicy,
        PoolLimits,
        RetryPolicy,
        Timeouts,
    )
    from reconciler.edge.fake import MockResponse, MockUpstream
    from reconciler.edge.proxy import EdgeProxy
    from reconciler.edge.routing import RouteTable, should_retry
    from reconciler.edge.seam import Upstream, UpstreamRequest, UpstreamResponse
    from reconciler.edge.server import RunningEdge, running_edge
    from reconciler.edge.source import FabricRouteSource, RouteSource, StaticRouteSource

# Loaded on first use: the pure core (routing, headers, stats) must not pull aiohttp or
# httptools, which only the drivers need.
_LAZY = {
    "EdgeConfig": "reconciler.edge.config",
    "EjectionPolicy": "reconciler.edge.config",
    "PoolLimits": "reconciler.edge.config",
    "RetryPolicy": "reconciler.edge.config",
    "Timeouts": "reconciler.edge.config",
    "MockResponse": "reconciler.edge.fake",
    "MockUpstream": "reconciler.edge.fake",
    "EdgeProxy": "reconciler.edge.proxy",
    "RouteTable": "reconciler.edge.routing",
    "should_retry": "reconciler.edge.routing",
    "Upstream": "reconciler.edge.seam",
    "UpstreamRequest": "reconciler.edge.seam",
    "UpstreamResponse": "reconciler.edge.seam",
    "RunningEdge": "reconciler.edge.server",
    "running_edge": "reconciler.edge.server",
    "FabricRouteSource": "reconciler.edge.source",
    "RouteSource": "reconciler.edge.source",
    "StaticRouteSource": "reconciler.edge.source",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "EdgeConfig",
    "EdgeProxy",
    "EjectionPolicy",
    "FabricRouteSource",
    "MockResponse",
    "MockUpstream",
    "PoolLimits",
    "RetryPolicy",
    "RouteSource",
    "RouteTable",
    "RunningEdge",
    "StaticRouteSource",
    "Timeouts",
    "Upstream",
    "UpstreamRequest",
    "UpstreamResponse",
    "running_edge",
    "should_retry",
]
