"""The edge's production :class:`~.seam.Upstream`: one object, four ways to a backend.

:class:`EdgeUpstream` owns aiohttp's ``ClientSession`` and the lean client's pool and, per
request, hands the attempt to the implementation that fits it: the lean pooled client for
a ``GET`` without a body (when httptools is installed and ``EdgeConfig.fast_path``), the
raw tunnel or the WebSocket relay for an upgrade (by front end), aiohttp's client for the
rest. It adds no coroutine of its own on the way (``send`` returns the chosen one's).
"""

from __future__ import annotations

from collections.abc import Awaitable

from reconciler.edge.aioclient import AiohttpUpstream, WebSocketUpstream, make_session
from reconciler.edge.config import EdgeConfig
from reconciler.edge.routing import BackendState
from reconciler.edge.seam import Upstream, UpstreamRequest, UpstreamResponse

try:  # the lean GET path needs httptools; without it everything goes through aiohttp
    import httptools  # type: ignore[import-not-found,unused-ignore]  # noqa: F401

    from reconciler.edge.tunnel import TunnelUpstream
    from reconciler.edge.upstream import LeanUpstream, UpstreamPool

    HAVE_FAST_PATH = True
except ImportError:  # pragma: no cover - depends on the installation
    HAVE_FAST_PATH = False


class EdgeUpstream:
    """Routes each attempt to the lean client, aiohttp's, the tunnel or the WebSocket relay."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.session = make_session(config)  # needs a running loop
        self.general: Upstream = AiohttpUpstream(config, self.session)
        self.websocket: Upstream = WebSocketUpstream(config, self.session)
        self.pool: UpstreamPool | None = None
        self.lean: Upstream | None = None
        self.tunnel: Upstream = self.websocket
        if HAVE_FAST_PATH:
            self.tunnel = TunnelUpstream(config)
            if config.fast_path:
                self.pool = UpstreamPool(config.pool, config.timeouts)
                self.lean = LeanUpstream(config, self.pool)

    def send(self, backend: BackendState, request: UpstreamRequest) -> Awaitable[UpstreamResponse]:
        carry = request.carry
        if carry == "http":
            lean = self.lean
            if lean is not None and request.body is None and request.method == "GET":
                return lean.send(backend, request)
            return self.general.send(backend, request)
        if carry == "tunnel":
            return self.tunnel.send(backend, request)
        return self.websocket.send(backend, request)

    def sweep(self) -> None:
        """Close pooled lean connections idle for longer than the keep-alive time."""
        if self.pool is not None:
            self.pool.sweep()

    async def aclose(self) -> None:
        await self.session.close()
        if self.pool is not None:
            self.pool.close()
