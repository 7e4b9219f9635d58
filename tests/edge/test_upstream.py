"""The lean GET path against a raw backend that misbehaves on purpose (real sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import aiohttp
import pytest

from reconciler.edge.config import EdgeConfig, Timeouts
from reconciler.edge.server import RunningEdge, running_edge
from reconciler.records import Backend, RouteRecord

Answer = Callable[[int, bytes], Awaitable[bytes | None]]  # (nth request on conn, head) -> reply


class RawBackend:
    """A hand-written HTTP/1.1 server; ``answer`` decides the bytes sent for each request."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)  # type: ignore[arg-type]
        nth = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                nth += 1
                reply = await self.answer(nth, head)
                if reply is None:
                    break  # close without answering
                writer.write(reply)
                await writer.drain()
                if b"Connection: close" in reply:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def raw_backend() -> AsyncIterator[Callable[[Answer], Awaitable[RawBackend]]]:
    made: list[RawBackend] = []

    async def start(answer: Answer) -> RawBackend:
        b = RawBackend(answer)
        b.server = await asyncio.start_server(b.handle, "127.0.0.1", 0)
        made.append(b)
        return b

    yield start
    for b in made:
        assert b.server is not None
        b.server.close()
        for w in b.writers:
            w.close()  # handlers see the end of their stream and return
        await asyncio.gather(*b.tasks)
        await b.server.wait_closed()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_pooled_connection_closed_by_the_backend_is_replaced(
    edge: RunningEdge,
    raw_backend: Callable[[Answer], Awaitable[RawBackend]],
    client: aiohttp.ClientSession,
) -> None:
    async def answer(nth: int, head: bytes) -> bytes | None:
        return OK if nth == 1 else None  # the second request on a connection: hang up

    b = await raw_backend(answer)
    edge.set_routes([RouteRecord("app", "/app", backends=(Backend("raw", b.endpoint),))])
    for _ in range(3):
        async with client.get(f"{edge.url}/app/") as resp:
            assert resp.status == 200
            assert await resp.text() == "ok"
    assert b.connections >= 3


async def test_a_backend_hanging_up_on_a_new_connection_sees_the_request_once(
    edge: RunningEdge,
    raw_backend: Callable[[Answer], Awaitable[RawBackend]],
    client: aiohttp.ClientSession,
) -> None:
    """Only a *pooled* connection is replaced: a request that broke a new one is not sent
    to that backend again (aiohttp's hidden retry would have: the backend saw it twice)."""
    heads: list[bytes] = []

    async def answer(nth: int, head: bytes) -> bytes | None:
        heads.append(head)
        return None  # read it, hang up

    b = await raw_backend(answer)
    edge.set_routes([RouteRecord("app", "/app", backends=(Backend("raw", b.endpoint),))])
    async with client.get(f"{edge.url}/app/once") as resp:
        assert resp.status == 502
    assert len(heads) == 1
    assert b.connections == 1


CHUNKED = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
INTERIM = b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize(
    ("reply", "status", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED, 200, b"abcde"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-eof", 200, b"until-eof"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
        (INTERIM + b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx", 201, b"x"),
    ],
    ids=["chunked", "until-eof", "no-content", "interim-100"],
)
async def test_response_framings_pass_through(
    edge: RunningEdge,
    raw_backend: Callable[[Answer], Awaitable[RawBackend]],
    client: aiohttp.ClientSession,
    reply: bytes,
    status: int,
    body: bytes,
) -> None:
    async def answer(nth: int, head: bytes) -> bytes | None:
        return reply

    b = await raw_backend(answer)
    edge.set_routes([RouteRecord("app", "/app", backends=(Backend("raw", b.endpoint),))])
    for _ in range(2):
        async with client.get(f"{edge.url}/app/x") as resp:
            assert resp.status == status
            assert await resp.read() == body


async def test_garbage_from_the_backend_is_502(
    edge: RunningEdge,
    raw_backend: Callable[[Answer], Awaitable[RawBackend]],
    client: aiohttp.ClientSession,
) -> None:
    async def answer(nth: int, head: bytes) -> bytes | None:
        return b"SMTP ready\r\n\r\n"

    b = await raw_backend(answer)
    edge.set_routes([RouteRecord("app", "/app", backends=(Backend("raw", b.endpoint),))])
    async with client.get(f"{edge.url}/app/x") as resp:
        assert resp.status == 502


async def test_a_body_cut_short_by_the_backend_is_cut_short_for_the_client(
    edge: RunningEdge,
    raw_backend: Callable[[Answer], Awaitable[RawBackend]],
    client: aiohttp.ClientSession,
) -> None:
    """A truncated answer must never reach the client looking complete."""
    big = b"x" * 200_000
    reply = (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(big):x}\r\n".encode()
        + big[:100_000]
    )

    async def answer(nth: int, head: bytes) -> bytes | None:
        return reply  # then the connection closes, mid-chunk

    b = await raw_backend(answer)
    edge.set_routes([RouteRecord("app", "/app", backends=(Backend("raw", b.endpoint),))])
    async with client.get(f"{edge.url}/app/x") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_a_silent_backend_gives_504_after_the_read_timeout(
    edge_config: EdgeConfig,
    raw_backend: Callable[[Answer], Awaitable[RawBackend]],
    client: aiohttp.ClientSession,
) -> None:
    never = asyncio.Event()

    async def answer(nth: int, head: bytes) -> bytes | None:
        await never.wait()  # released at the end, so the handler ends
        return None

    b = await raw_backend(answer)
    config = replace(edge_config, timeouts=Timeouts(connect=1.0, read=0.3, total=0))
    try:
        async with running_edge(config) as edge:
            edge.set_routes([RouteRecord("app", "/app", backends=(Backend("raw", b.endpoint),))])
            async with client.get(f"{edge.url}/app/x") as resp:
                assert resp.status == 504
            async with client.post(f"{edge.url}/app/x", data=b"body") as resp:
                assert resp.status == 504
    finally:
        never.set()
