"""The client side of one proxied exchange, as the proxy core sees it.

The core (:class:`reconciler.edge.proxy.EdgeProxy`) is written against
:class:`Downstream`; each server front end supplies one per request: the aiohttp
adapter (:class:`reconciler.edge.proxy.AiohttpDownstream`) and the httptools
protocol (:mod:`reconciler.edge.fastserver`). A front end must raise
``ConnectionResetError`` from :meth:`Downstream.write` when the client went away.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from multidict import CIMultiDict, CIMultiDictProxy

Headers = CIMultiDictProxy[str] | CIMultiDict[str]


class Downstream(Protocol):
    method: str
    raw_path: str  # percent-encoding as received, no query
    query: str  # raw query string, "" when none
    headers: Headers
    remote: str  # the client's address
    scheme: str
    has_body: bool

    def body(self) -> AsyncIterator[bytes]:
        """The request body, flow-controlled (sends ``100 Continue`` first when asked)."""
        ...

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        """A whole answer in one go (any ``Content-Length`` in ``headers`` is replaced)."""
        ...

    async def start(self, status: int, reason: str | None, headers: Headers) -> None:
        """Send the head of a streamed answer (kept framing: length, else chunked)."""
        ...

    async def write(self, chunk: bytes) -> None:
        """A piece of the streamed body; waits while the client is slow."""
        ...

    async def end(self) -> None:
        """The streamed body is complete."""
        ...


class TunnelEnd(Protocol):
    """The client's side of a connection switched to another protocol (after a 101)."""

    async def read(self) -> bytes: ...  # b"" at the end

    async def write(self, data: bytes) -> None: ...

    def write_eof(self) -> None: ...


@runtime_checkable
class Upgradable(Protocol):
    """A front end that can hand its raw connection over after a ``101`` (the fast one)."""

    async def switch(self, headers: Headers) -> TunnelEnd: ...


@dataclass(frozen=True)
class Answer:
    """A small answer the edge makes itself (errors)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    async def send(self, down: Downstream) -> int:
        await down.respond(self.status, None, self.headers, self.body)
        return self.status


def json_error(status: int, error: str, **extra: object) -> Answer:
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra.pop("retry_after"))
    body = json.dumps({"error": error, "status": status, **extra}, separators=(",", ":"))
    return Answer(status, headers, body.encode())
