"""aiohttp's low-level server as a front end: :class:`AiohttpDownstream` and the handler.

``--server aiohttp`` serves with ``aiohttp.web.Server``; each request reaches the proxy
core (:meth:`reconciler.edge.proxy.EdgeProxy.serve`) as an :class:`AiohttpDownstream`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from reconciler.edge.downstream import Headers

if TYPE_CHECKING:
    from reconciler.edge.proxy import EdgeProxy

_CHUNK = 64 * 1024

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
    )

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
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
        async for chunk in self.request.content.iter_chunked(_CHUNK):
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


def aiohttp_handler(proxy: EdgeProxy) -> Handler:
    """The handler for ``aiohttp.web.Server``: one request through ``proxy``."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        down = AiohttpDownstream(request)
        await proxy.serve(down)
        assert down.response is not None
        return down.response

    return handle
