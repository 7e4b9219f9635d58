"""The one seam between the proxy's retry loop and whatever talks to a backend.

The model is httpx's ``BaseTransport.handle_async_request``: an :class:`Upstream` has one
method, :meth:`Upstream.send`, that performs one attempt of a request against one backend
and returns an :class:`UpstreamResponse` whose head has arrived (its body not yet read),
or raises one of three errors that tell the retry loop what happened:

* :class:`UpstreamConnectError`: nothing was sent (any method may go to another backend);
* :class:`UpstreamBrokenError`: connected, then the exchange broke before an answer head;
* :class:`UpstreamTimeoutError`: the backend did not answer within the read timeout.

The proxy (:class:`reconciler.edge.proxy.EdgeProxy`) owns the only loop that picks a
backend, calls the upstream, records the outcome (ejection, stats) and decides whether to
try another backend (:func:`reconciler.edge.routing.should_retry`). The implementations
are the lean pooled GET client (:mod:`.upstream`), aiohttp's client and its WebSocket
relay (:mod:`.aioclient`) and the raw byte tunnel after a ``101`` (:mod:`.tunnel`);
:class:`reconciler.edge.fake.MockUpstream` is the in-memory one tests use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from multidict import CIMultiDict

from reconciler.errors import EdgeError

if TYPE_CHECKING:
    from reconciler.edge.downstream import Downstream
    from reconciler.edge.routing import BackendState

#: How a request is carried: plain HTTP, or an upgrade relayed as raw bytes after the
#: ``101`` (the fast front end) or as WebSocket messages (aiohttp's front end).
Carry = Literal["http", "tunnel", "websocket"]


class UpstreamError(EdgeError):
    """One attempt at a backend failed; the subclass says how (and so whether to retry)."""


class UpstreamConnectError(UpstreamError):
    """The backend could not be connected to (nothing was sent)."""


class UpstreamBrokenError(UpstreamError):
    """The exchange broke after the request was sent (``response_started``: bytes came)."""

    def __init__(self, message: str, response_started: bool = False) -> None:
        super().__init__(message)
        self.response_started = response_started


class UpstreamTimeoutError(UpstreamError):
    """The backend did not answer (or stopped sending) within the read timeout."""


class RequestBody:
    """The client's request body as a one-shot async iterator that notes when a byte left.

    Once :attr:`sent` is true the request can no longer be replayed to another backend.
    """

    __slots__ = ("_source", "sent")

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self.sent = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._source:
            self.sent = True
            yield chunk


@dataclass(slots=True, eq=False)
class UpstreamRequest:
    """What goes to a backend: the same for every attempt of one client request."""

    method: str
    target: str  # the path with the route prefix stripped, and "?query" (raw)
    headers: CIMultiDict[str]  # forwarding headers added, hop-by-hop ones removed
    rid: str  # the request id, echoed on the answer
    app: str  # the route's app (for the edge's own error answers)
    body: RequestBody | None = None  # None: the client sent no body
    carry: Carry = "http"
    protocols: tuple[str, ...] = ()  # WebSocket subprotocols the client offered

    @property
    def has_body(self) -> bool:
        return self.body is not None

    @property
    def body_sent(self) -> bool:
        return self.body is not None and self.body.sent


class UpstreamResponse(Protocol):
    """A backend's answer whose head has arrived; the retry loop reads only ``status``."""

    status: int

    async def relay(self, down: Downstream) -> None:
        """Pass the answer (head, then body streamed, or the switched protocol) to the client."""
        ...

    def close(self) -> None:
        """Release the exchange: after :meth:`relay`, or instead of it when retrying."""
        ...


class Upstream(Protocol):
    """One attempt of ``request`` at ``backend`` (see the module docstring for the errors)."""

    def send(self, backend: BackendState, request: UpstreamRequest) -> Awaitable[UpstreamResponse]:
        """Send the request head (and body); return once the answer's head has arrived."""
        ...


class Exchange(Protocol):
    """One attempt started without a coroutine: the inline path (:meth:`InlineUpstream.begin`).

    Its listener is called once, from the event loop, when the answer's head arrived
    (``status``) or the attempt failed (``error``, one of the three errors above).
    """

    status: int  # 0 when it failed
    error: BaseException | None

    def small_answer(self) -> tuple[CIMultiDict[str], bytes] | None:
        """The client's headers and the whole body of a small answer that has fully arrived
        (what :meth:`UpstreamResponse.relay` would send in one write); else None."""
        ...

    def response(self) -> Awaitable[UpstreamResponse]:
        """The attempt as :meth:`Upstream.send` would have ended it (the coroutine path)."""
        ...

    def release(self) -> None:
        """Give the connection back (after :meth:`small_answer`), or close it."""
        ...


class InlineUpstream(Upstream, Protocol):
    """An :class:`Upstream` that can start some attempts without a coroutine."""

    def begin(
        self,
        backend: BackendState,
        request: UpstreamRequest,
        listener: Callable[[Exchange], None],
    ) -> Exchange | None:
        """Start the attempt now if it can go inline (else None: nothing was done)."""
        ...
