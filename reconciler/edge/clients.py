"""The edge's production :class:`~.seam.Upstream`: one object, four ways to a backend.

:class:`EdgeUpstream` owns aiohttp's ``ClientSession`` and the lean client's pool and, per
request, hands the attempt to the implementation that fits it: the lean pooled client for
a ``GET`` without a body (when httptools is installed and ``EdgeConfig.fast_path``), the
raw tunnel or the WebSocket relay for an upgrade (by front end), aiohttp's client for the
rest. It adds no coroutine of its own on the way (``send`` returns the chosen one's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from multidict import CIMultiDict

from reconciler.edge.aioclient import AiohttpUpstream, WebSocketUpstream, make_session
from reconciler.edge.config import EdgeConfig
from reconciler.edge.headers import downstream_from_raw
from reconciler.edge.routing import BackendState
from reconciler.edge.seam import (
    Exchange,
    Upstream,
    UpstreamBrokenError,
    UpstreamRequest,
    UpstreamResponse,
)

try:  # the lean GET path needs httptools; without it everything goes through aiohttp
    import httptools  # type: ignore[import-not-found,unused-ignore]  # noqa: F401

    from reconciler.edge.tunnel import TunnelUpstream
    from reconciler.edge.upstream import (
        LeanResponse,
        LeanUpstream,
        UpstreamConnection,
        UpstreamPool,
    )

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
        self.lean: LeanUpstream | None = None
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

    def begin(
        self,
        backend: BackendState,
        request: UpstreamRequest,
        listener: Callable[[Exchange], None],
    ) -> Exchange | None:
        """The inline path: a ``GET`` without a body on a pooled connection, started now."""
        lean, pool = self.lean, self.pool
        if (
            lean is None
            or pool is None
            or request.method != "GET"
            or request.body is not None
            or request.carry != "http"
        ):
            return None
        conn = pool.take_idle(backend.host, backend.port)
        if conn is None:
            return None
        return LeanExchange(lean, conn, backend, request, listener)

    def sweep(self) -> None:
        """Close pooled lean connections idle for longer than the keep-alive time."""
        if self.pool is not None:
            self.pool.sweep()

    async def aclose(self) -> None:
        await self.session.close()
        if self.pool is not None:
            self.pool.close()


_NO_BODY_STATUS = frozenset({204, 304})


class LeanExchange:
    """:class:`~.seam.Exchange` of the lean client: a request head written on a pooled
    connection, the answer awaited by a callback (no task, future or coroutine)."""

    __slots__ = (
        "backend", "conn", "error", "head", "lean", "listener", "request", "status", "timer",
    )  # fmt: skip

    def __init__(
        self,
        lean: LeanUpstream,
        conn: UpstreamConnection,
        backend: BackendState,
        request: UpstreamRequest,
        listener: Callable[[Exchange], None],
    ) -> None:
        self.lean = lean
        self.conn = conn
        self.backend = backend
        self.request = request
        self.listener = listener
        self.status = 0
        self.error: BaseException | None = None
        self.head = lean.head(backend, request)
        self.timer: asyncio.TimerHandle = conn.start(
            self.head, lean.config.timeouts.read, self._event, lean.pool.batch
        )

    def _event(self) -> None:
        self.timer.cancel()
        conn = self.conn
        self.error = conn.error
        self.status = 0 if self.error is not None else conn.status
        self.listener(self)

    def small_answer(self) -> tuple[CIMultiDict[str], bytes] | None:
        conn = self.conn
        if self.error is not None or not conn.complete:
            return None
        headers = downstream_from_raw(conn.headers, rid=self.request.rid)
        if self.status not in _NO_BODY_STATUS:
            length = headers.get("Content-Length")
            if (
                length is None
                or not length.isdigit()
                or int(length) > self.lean.config.small_body_bytes
            ):
                return None
        body = conn.take_complete_body()
        return (headers, body) if body is not None else None

    async def response(self) -> LeanResponse:
        """As :meth:`LeanUpstream.send` ends: the answer, or its error (a pooled connection
        the backend had closed is replaced once)."""
        conn, lean, error = self.conn, self.lean, self.error
        if error is None:
            return LeanResponse(lean, conn, self.request.rid)
        conn.close()
        if not isinstance(error, UpstreamBrokenError) or not conn.reused or error.response_started:
            raise error
        backend = self.backend
        fresh = await lean.pool.connect(backend.host, backend.port)
        try:
            await fresh.send(self.head, lean.config.timeouts.read)
        except BaseException:
            fresh.close()
            raise
        return LeanResponse(lean, fresh, self.request.rid)

    def release(self) -> None:
        self.lean.pool.release(self.conn)
