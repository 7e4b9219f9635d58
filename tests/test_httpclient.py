"""No hidden retries: ``httpclient.one_attempt_session`` and ``bench.loadgen.Load``.

A real loopback server (asyncio streams) answers the first request on a connection with
keep-alive, reads the second one and closes without answering it. aiohttp's plain
``ClientSession`` re-sends that second request on a new connection without saying so (the
server sees it twice: the proof these tests can fail); ``one_attempt_session`` surfaces the
error and the server sees it once. ``bench.loadgen.Load`` counts a request never answered
as failed (by kind), and ``bench.converge`` reports no bump time when it saw no switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from bench.converge import bump_seconds, evaluate
from bench.loadgen import FAILURE_KINDS, UNFINISHED, Load, LoadResult, Outcome
from reconciler.httpclient import one_attempt_session
from tests.helpers import async_wait_for

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


@dataclass
class Seen:
    requests: list[str] = field(default_factory=list)  # request lines, in arrival order
    connections: int = 0


@contextlib.asynccontextmanager
async def serving(handle: Handler) -> AsyncIterator[str]:
    """A loopback stream server running ``handle`` per connection; yields its base URL."""
    writers: set[asyncio.StreamWriter] = set()

    async def tracked(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.add(w)
        try:
            await handle(r, w)
        finally:
            writers.discard(w)
            w.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for w in list(writers):
            w.close()
        await server.wait_closed()


async def read_head(r: asyncio.StreamReader) -> str | None:
    """A request head's first line, or None at end of stream (bodiless requests only)."""
    try:
        head = await r.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def second_request_dropped(seen: Seen) -> Handler:
    """Answer the first request of a connection (keep-alive), drop the connection on the
    second one after reading it."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.connections += 1
        n = 0
        while (line := await read_head(r)) is not None:
            seen.requests.append(line)
            n += 1
            if n == 2:
                return  # the caller closes the connection: no answer
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()

    return handle


async def two_gets(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/one") as first:
        assert first.status == 200
        await first.read()
    async with session.get(f"{url}/two") as second:
        await second.read()
        return second.status


async def test_plain_session_retries_silently() -> None:
    """The control: what one_attempt_session exists to prevent does happen."""
    seen = Seen()
    async with serving(second_request_dropped(seen)) as url, aiohttp.ClientSession() as s:
        assert await two_gets(s, url) == 200
    assert seen.requests.count("GET /two HTTP/1.1") == 2, seen
    assert seen.connections == 2


async def test_one_attempt_session_surfaces_the_drop() -> None:
    seen = Seen()
    async with serving(second_request_dropped(seen)) as url, one_attempt_session() as s:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await two_gets(s, url)
    assert seen.requests == ["GET /one HTTP/1.1", "GET /two HTTP/1.1"]
    assert seen.connections == 1


async def test_one_attempt_session_keeps_its_arguments() -> None:
    jar = aiohttp.DummyCookieJar()
    timeout = aiohttp.ClientTimeout(total=3)
    async with one_attempt_session(cookie_jar=jar, timeout=timeout) as s:
        assert s.cookie_jar is jar
        assert s.timeout == timeout


# --- the load generator -----------------------------------------------------------------


async def test_load_counts_a_request_never_answered() -> None:
    """A server that accepts and reads but never answers: every request it saw is counted
    once, failed, as a timeout; none is dropped."""
    seen = Seen()
    release = asyncio.Event()

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.connections += 1
        line = await read_head(r)
        if line is not None:
            seen.requests.append(line)
        await release.wait()

    async with serving(silent) as url:
        load = Load(f"{url}/x", rps=20, timeout_s=0.3)
        async with load:
            await async_wait_for(lambda: len(seen.requests) >= 3, within=10, what="3 requests")
        release.set()
    result = load.result
    assert result.sent == seen.connections >= 3
    assert len(result.failed) == result.sent
    assert {o.kind for o in result.outcomes} == {"timeout"}
    assert result.failures_by_kind() == {**dict.fromkeys(FAILURE_KINDS, 0), "timeout": result.sent}


async def test_load_counts_refused_connections() -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        async with Load(f"http://127.0.0.1:{port}/x", rps=50, timeout_s=1.0) as load:
            await async_wait_for(lambda: load.result.sent >= 3, within=10, what="3 outcomes")
    assert load.result.sent >= 3
    assert load.result.failures_by_kind()["connect"] == load.result.sent


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (200, "", ""),
        (503, "no backend", "status_5xx"),
        (500, "", "status_5xx"),
        (404, "not found", "status_other"),
        (301, "", "status_other"),
        (0, "connect: ConnectionRefusedError: [Errno 111] refused", "connect"),
        (0, "timeout: no answer within 10s", "timeout"),
        (0, "read: IncompleteReadError: 0 bytes read", "read"),
        (0, UNFINISHED, "unfinished"),
        (0, "something nobody wrote", "other"),
    ],
)
def test_outcome_kind(status: int, error: str, kind: str) -> None:
    assert Outcome(at=0.0, status=status, error=error).kind == kind


def _answers(*spec: tuple[float, int, str]) -> LoadResult:
    return LoadResult([Outcome(at=at, status=st, version=v) for at, st, v in spec])


@pytest.mark.parametrize(
    ("outcomes", "bump"),
    [
        # the switch: last old answer sent at 1.2, first new one after it at 1.3
        (_answers((0.5, 200, "1"), (1.2, 200, "1"), (1.3, 200, "2"), (1.4, 200, "2")), 0.3),
        # failures between the two versions count until a new answer arrives
        (_answers((0.9, 200, "1"), (1.0, 0, ""), (1.5, 0, ""), (2.0, 200, "2")), 1.0),
        # every request failed: no switch seen, never 0
        (_answers((0.5, 0, ""), (1.5, 0, ""), (2.5, 503, "")), None),
        # old answers, then only failures: no switch seen
        (_answers((0.5, 200, "1"), (1.5, 0, "")), None),
    ],
)
def test_converge_bump_seconds(outcomes: LoadResult, bump: float | None) -> None:
    value, reason = bump_seconds(outcomes, t0=0.5, new="2")  # WARMUP_S is 0.5
    assert value == bump
    assert bool(reason) == (bump is None)
    if bump is None:
        assert not evaluate({"bump_s": value})["bump_s"]["met"]
