"""aiohttp's low-level server as a front end: :class:`AiohttpDownstream` and the handler.

``--server aiohttp`` serves with ``aiohttp.web.Server``; each request reaches the proxy
core (:meth:`reconciler.edge.proxy.EdgeProxy.serve`) as an :class:`AiohttpDownstream`.

:class:`GuardedServer` adds what aiohttp's server lacks against slow clients
(:class:`~.config.ClientLimits`): its connections are accepted through a
:class:`~.listener.Listener` (the connection cap), and one sweep per server answers
``408`` and closes a connection whose request head is not complete within ``header_s``
(a fresh one that sent nothing is just closed); a body read waits at most ``body_s``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from reconciler.edge.config import ClientLimits
from reconciler.edge.downstream import Headers
from reconciler.edge.listener import Listener, Slot

if TYPE_CHECKING:
    from reconciler.edge.proxy import EdgeProxy

log = logging.getLogger("myco.edge")

_CHUNK = 64 * 1024
_LINGER_S = 2.0
_TIMEOUT_BODY = b"request timeout: the request head took too long"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class AiohttpDownstream:
    """:class:`~.downstream.Downstream` over aiohttp's low-level server request."""

    __slots__ = (
        "has_body",
        "headers",
        "method",
        "query",
        "raw_path",
        "remote",
        "request",
        "response",
        "scheme",
        "body_timeout",
    )

    def __init__(self, request: web.BaseRequest, body_timeout: float = 60.0) -> None:
        self.request = request
        self.body_timeout = body_timeout
        self.response: web.StreamResponse | None = None
        self.method = request.method
        url = request.rel_url
        self.raw_path = url.raw_path
        self.query = url.raw_query_string
        self.headers: Headers = request.headers
        self.remote = request.remote or ""
        self.scheme = request.scheme
        self.has_body = request.body_exists

    async def body(self) -> AsyncIterator[bytes]:
        if self.headers.get("Expect", "").lower() == "100-continue":
            await self.request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        content = self.request.content
        while True:
            try:
                async with asyncio.timeout(self.body_timeout):
                    chunk = await content.read(_CHUNK)
            except TimeoutError:
                log.debug("edge: no request body byte in %.0fs: closing", self.body_timeout)
                transport = self.request.transport
                if transport is not None:
                    transport.abort()  # mid-body: nothing sensible to answer
                raise ConnectionResetError("the client stopped sending its body") from None
            if not chunk:
                return
            yield chunk

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        h = CIMultiDict(headers)
        h.popall("Content-Length", None)
        self.response = web.Response(status=status, reason=reason, headers=h, body=body)

    async def start(self, status: int, reason: str | None, headers: Headers) -> None:
        resp = web.StreamResponse(status=status, reason=reason, headers=headers)
        await resp.prepare(self.request)
        self.response = resp

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def end(self) -> None:
        assert self.response is not None
        await self.response.write_eof()


def aiohttp_handler(proxy: EdgeProxy, limits: ClientLimits | None = None) -> Handler:
    """The handler for ``aiohttp.web.Server``: one request through ``proxy``."""
    body_timeout = (limits or ClientLimits()).body_s

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        proto = request.protocol
        guarded = proto if isinstance(proto, GuardedHandler) else None
        if guarded is not None:
            guarded.in_request = True
            guarded.head_since = None
        try:
            down = AiohttpDownstream(request, body_timeout)
            await proxy.serve(down)
            assert down.response is not None
            return down.response
        finally:
            if guarded is not None:
                guarded.in_request = False

    return handle


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection protocol, holding a listener slot and watched for slow heads.

    A head's time runs from the connect for the first request, then from the first byte
    received after an answer. (Bytes of a next request that arrive while one is being
    answered are not timed until that answer ends: aiohttp's keep-alive time bounds them.)
    """

    def __init__(self, manager: GuardedServer, slot: Slot | None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.slot = slot
        self.guard_loop: asyncio.AbstractEventLoop = kwargs["loop"]
        self.in_request = False
        self.head_since: float | None = None
        self.got_bytes = False  # any byte since the connect (a fresh one is just closed)
        self.timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.head_since = self.guard_loop.time()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.timed_out:
            return  # answered 408: drop what still comes until the client closes
        self.got_bytes = True
        if self.head_since is None and not self.in_request:
            self.head_since = self.guard_loop.time()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.slot is not None:
            self.slot.release()

    def check(self, now: float, limits: ClientLimits) -> None:
        """The sweep's visit: answer 408 and close a head past ``header_s``."""
        since = self.head_since
        transport = self.transport
        if since is None or self.in_request or self.timed_out or transport is None:
            return
        if now - since < limits.header_s or transport.is_closing():
            return
        self.timed_out = True
        if not self.got_bytes:
            transport.close()
            return
        log.debug("edge: request head not complete in %.0fs: 408", limits.header_s)
        # answer, FIN, and read (dropping it) what the client still sends for a while, so
        # that its unread bytes do not make the kernel reset before it read the answer
        transport.write(_REQUEST_TIMEOUT)
        if transport.can_write_eof():
            transport.write_eof()
            self.guard_loop.call_later(_LINGER_S, transport.close)
        else:
            transport.close()


class GuardedServer(web.Server):
    """``web.Server`` whose connections are :class:`GuardedHandler`s behind a listener."""

    def __init__(self, handler: Handler, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.handler_kwargs = kwargs
        self.listener: Listener | None = None
        self.sweep_s = max(0.05, min(0.25, limits.header_s / 4))
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> GuardedHandler:  # a connection that did not come from start()
        return self.guarded(None)

    def guarded(self, slot: Slot | None) -> GuardedHandler:
        return GuardedHandler(self, slot, loop=asyncio.get_running_loop(), **self.handler_kwargs)

    def start(self, sock: socket.socket) -> None:
        """Accept on ``sock`` (closed by :meth:`stop_accepting`)."""
        self.listener = Listener(sock, self.guarded, self.limits.max_connections)
        self.listener.start()
        self._sweeper = asyncio.get_running_loop().call_later(self.sweep_s, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in self.connections:
            if isinstance(conn, GuardedHandler):
                conn.check(now, self.limits)
        self._sweeper = loop.call_later(self.sweep_s, self._sweep)

    async def stop_accepting(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.listener is not None:
            await self.listener.stop()
