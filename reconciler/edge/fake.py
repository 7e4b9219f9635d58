"""In-memory fakes of the edge's two seams, for tests: no sockets, no timers.

:class:`MockUpstream` is httpx's ``MockTransport`` for the edge: every attempt the proxy
makes calls ``handler(endpoint, request)``, which returns a :class:`MockResponse` (or
raises one of :mod:`.seam`'s errors: ``UpstreamConnectError`` for "nothing was sent",
``UpstreamBrokenError``, ``UpstreamTimeoutError``); the handler may be async, e.g. to read
the request body. :class:`FakeDownstream` is a client request whose answer is recorded.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from multidict import CIMultiDict

from reconciler.edge.downstream import Downstream, Headers
from reconciler.edge.routing import BackendState
from reconciler.edge.seam import UpstreamRequest

Handler = Callable[[str, UpstreamRequest], "MockResponse | Awaitable[MockResponse]"]


@dataclass
class MockResponse:
    """A whole answer; ``closed`` tells whether the proxy released it."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    closed: bool = False

    async def relay(self, down: Downstream) -> None:
        await down.respond(self.status, None, CIMultiDict(self.headers), self.body)

    def close(self) -> None:
        self.closed = True


class MockUpstream:
    """An :class:`~.seam.Upstream` answering from ``handler``; ``sent``: endpoints tried."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent: list[str] = []

    async def send(self, backend: BackendState, request: UpstreamRequest) -> MockResponse:
        self.sent.append(backend.endpoint)
        answer = self.handler(backend.endpoint, request)
        return await answer if inspect.isawaitable(answer) else answer


class FakeDownstream:
    """A :class:`~.downstream.Downstream` with a fixed request; the answer is recorded."""

    def __init__(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        body: Sequence[bytes] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        self.method = method
        self.raw_path, _, self.query = path.partition("?")
        self.headers: Headers = CIMultiDict(headers or {})
        self.remote = "127.0.0.1"
        self.scheme = "http"
        self.has_body = bool(body)
        self.chunks = list(body)
        self.status = 0
        self.answer_headers: Headers = CIMultiDict()
        self.answer = b""
        self.ended = False

    async def body(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        self.status, self.answer_headers, self.answer, self.ended = status, headers, body, True

    async def start(self, status: int, reason: str | None, headers: Headers) -> None:
        self.status, self.answer_headers = status, headers

    async def write(self, chunk: bytes) -> None:
        self.answer += chunk

    async def end(self) -> None:
        self.ended = True
