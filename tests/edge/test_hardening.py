"""The edge against slow and greedy clients, on both front ends (and both loops).

Head and body timeouts, the connection cap with back-pressure, the idle tunnel timeout,
the lean GET path's total deadline, and a client that stops reading a large answer.
Timeouts are set small through ``EdgeConfig``; assertions on time are generous deadlines.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import psutil
import pytest

from bench.slowloris import served_p99_during, slow_heads
from reconciler.edge.config import ClientLimits, EdgeConfig, ServerKind, Timeouts
from reconciler.edge.server import RunningEdge, running_edge
from reconciler.records import Backend as BackendRecord
from reconciler.records import RouteRecord
from tests.edge.conftest import EdgeProcess, StartBackends, route
from tests.edge.test_server import closed_by_peer, connect, read_response
from tests.helpers import async_wait_for

SLACK_S = 10.0  # generous: other test runs share the CPUs


def hardened(server: ServerKind, **client: float) -> EdgeConfig:
    limits = {"header_s": 1.0, "body_s": 1.0, "keepalive_s": 30.0, "tunnel_idle_s": 0.5}
    limits.update(client)
    return EdgeConfig(
        port=0,
        server=server,
        client=ClientLimits(
            header_s=limits["header_s"],
            body_s=limits["body_s"],
            keepalive_s=limits["keepalive_s"],
            tunnel_idle_s=limits["tunnel_idle_s"],
            max_connections=int(limits.get("max_connections", 64)),
        ),
        timeouts=Timeouts(connect=2.0, read=5.0, total=1.0),
        stats_interval_s=3600,
        shutdown_grace_s=1.0,
    )


@pytest.fixture
def fd_room() -> Iterator[None]:
    """Room for ~2,000 sockets in this process (client and server ends), restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"needs {want} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_thousand_slow_heads_are_closed_while_a_client_is_served(
    server_kind: ServerKind, backends: StartBackends, fd_room: None
) -> None:
    (a,) = await backends("a")
    config = hardened(server_kind, header_s=1.0, max_connections=2000)
    async with running_edge(config) as edge:
        edge.set_routes([route("app", (a, 1))])
        slow, served = await served_p99_during(
            f"{edge.url}/app/x", slow_heads("127.0.0.1", edge.port, 1000, within=60.0)
        )
        assert edge.listener is not None
        await async_wait_for(
            lambda: edge.listener is not None and edge.listener.open <= 1,
            within=SLACK_S,
            what="the edge to drop the slow connections",
        )
    print(f"slow heads {slow}; normal client {served}")
    assert slow.opened == 1000
    assert not slow.timed_out
    assert slow.closed == 1000
    assert slow.answered_408 == 1000  # every one got its answer before the close
    # each was closed within the head timeout (+ slack) of its connect
    assert slow.closed_s < slow.opened_s + config.client.header_s + SLACK_S
    assert served.requests > 0
    assert served.failures == 0


async def test_a_fresh_silent_connection_is_closed_without_an_answer(
    server_kind: ServerKind,
) -> None:
    async with running_edge(hardened(server_kind, header_s=0.5)) as edge:
        r, w = await connect(edge)
        try:
            async with asyncio.timeout(SLACK_S):
                assert await r.read() == b""
        finally:
            w.close()


async def test_a_stalled_body_closes_the_connection(
    server_kind: ServerKind, backends: StartBackends
) -> None:
    (a,) = await backends("a")
    async with running_edge(hardened(server_kind, body_s=0.5)) as edge:
        edge.set_routes([route("app", (a, 1))])
        r, w = await connect(edge)
        try:
            w.write(b"POST /app/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
            async with asyncio.timeout(SLACK_S):
                data = b""
                try:
                    while chunk := await r.read(4096):
                        data += chunk
                except ConnectionResetError:
                    pass
            assert b" 200 " not in data  # never answered as if the body were whole
        finally:
            w.close()
        # the edge still serves
        r, w = await connect(edge)
        try:
            w.write(b"GET /app/ok HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(r))[0] == 200
        finally:
            w.close()


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0

    def sample(self) -> int:
        rss = int(self.proc.memory_info().rss)
        self.peak = max(self.peak, rss)
        return rss


async def test_a_client_that_stops_reading_a_large_answer_does_not_grow_the_edge(
    server_kind: ServerKind,
    backends: StartBackends,
    client: aiohttp.ClientSession,
    edge_process: Callable[..., EdgeProcess],
) -> None:
    (big,) = await backends("big")
    loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    edge = edge_process("--route", f"big={big.endpoint}", "--loop", loop, "--server", server_kind)
    await edge.ready(client)
    assert edge.proc is not None
    rss = PeakRss(edge.proc.pid)
    baseline = rss.sample()
    size = 50 * 1024 * 1024
    r, w = await asyncio.open_connection("127.0.0.1", edge.port)
    try:
        w.write(f"GET /big/download/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await r.readuntil(b"\r\n\r\n")  # then read nothing
        last, still = -1, 0

        def stalled() -> bool:  # the backend was held back: no progress for a second
            nonlocal last, still
            rss.sample()
            still = still + 1 if big.sent == last else 0
            last = big.sent
            return still >= 10

        await async_wait_for(stalled, within=30, interval=0.1, what="the backend to be held")
        assert big.sent < size // 2
        received = 0
        while received < size:
            chunk = await r.read(1 << 20)
            assert chunk
            received += len(chunk)
        assert received == size
    finally:
        w.close()
    code, err = edge.stop()
    assert code == 0, err
    print(f"edge RSS baseline {baseline >> 20} MiB, peak {rss.peak >> 20} MiB")
    assert rss.peak - baseline < 20 * 1024 * 1024, (baseline, rss.peak)


async def test_the_connection_cap_holds_and_accepting_resumes_below_it(
    server_kind: ServerKind, backends: StartBackends
) -> None:
    (a,) = await backends("a")
    cap = 4
    async with running_edge(hardened(server_kind, max_connections=cap)) as edge:
        edge.set_routes([route("app", (a, 1))])
        listener = edge.listener
        assert listener is not None
        conns = [await connect(edge) for _ in range(cap + 2)]  # the kernel completes all
        answers: list[asyncio.Task[int]] = []

        async def ask(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
            w.write(b"GET /app/x HTTP/1.1\r\nHost: x\r\n\r\n")
            return (await read_response(r))[0]

        try:
            answers = [asyncio.create_task(ask(r, w)) for r, w in conns]
            await async_wait_for(
                lambda: sum(t.done() for t in answers) >= cap, within=SLACK_S, what="cap answers"
            )
            assert listener.open == cap
            assert not listener.accepting
            served = [i for i, t in enumerate(answers) if t.done()]
            waiting = [i for i, t in enumerate(answers) if not t.done()]
            assert len(served) == cap  # the others wait in the backlog, unanswered
            assert all(answers[i].result() == 200 for i in served)
            for i in served[:2]:  # two served clients go: two waiting ones get in
                conns[i][1].close()
            async with asyncio.timeout(SLACK_S):
                assert [await answers[i] for i in waiting] == [200, 200]
            assert listener.open <= cap
            assert listener.paused_times >= 1
        finally:
            for t in answers:
                t.cancel()
            for _, w in conns:
                w.close()


async def test_an_idle_tunnel_is_closed_but_a_busy_one_is_not(
    server_kind: ServerKind,
    backends: StartBackends,
    client: aiohttp.ClientSession,
) -> None:
    (a,) = await backends("a")
    async with running_edge(hardened(server_kind, tunnel_idle_s=0.5)) as edge:
        edge.set_routes([route("chat", (a, 1))])
        async with client.ws_connect(f"{edge.url}/chat/ws") as ws:
            loop = asyncio.get_running_loop()
            busy_until = loop.time() + 1.0  # two idle timeouts, with traffic every 0.2 s
            i = 0
            last_echo = loop.time()
            while loop.time() < busy_until:
                await ws.send_str(f"m{i}")
                msg = await ws.receive(timeout=SLACK_S)
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                assert msg.data == f"a:m{i}"
                last_echo = loop.time()
                i += 1
                await asyncio.sleep(0.2)
            # now say nothing
            msg = await ws.receive(timeout=SLACK_S)
            assert msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            ), msg
            assert loop.time() - last_echo >= 0.4  # not before the idle time (timer slop)


@pytest.fixture
async def trickler() -> AsyncIterator[Callable[[int], asyncio.Future[int]]]:
    """A backend that answers a ``length``-byte body 100 bytes every 50 ms, forever."""
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[None]] = set()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, length: int) -> None:
        try:
            await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
            for _ in range(length // 100):
                w.write(b"t" * 100)
                await w.drain()
                await asyncio.sleep(0.05)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def start(length: int) -> int:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await handle(r, w, length)
            finally:
                tasks.discard(task)

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def make(length: int) -> asyncio.Future[int]:
        return asyncio.ensure_future(start(length))

    yield make
    for s in servers:
        s.close()
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for s in servers:
        await s.wait_closed()


async def test_the_lean_get_path_has_a_total_deadline(
    server_kind: ServerKind, trickler: Callable[[int], asyncio.Future[int]]
) -> None:
    big_port = await trickler(1_000_000)  # streamed: the answer is cut short
    small_port = await trickler(5_000)  # read whole before answering: a 504
    config = hardened(server_kind)
    assert config.fast_path
    assert config.timeouts.total == 1.0
    async with running_edge(config) as edge:
        edge.set_routes(
            [
                route_to("big", f"127.0.0.1:{big_port}"),
                route_to("small", f"127.0.0.1:{small_port}"),
            ]
        )
        loop = asyncio.get_running_loop()
        r, w = await connect(edge)
        try:
            w.write(b"GET /big/x HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            t0 = loop.time()
            received = 0
            async with asyncio.timeout(SLACK_S):
                try:
                    while chunk := await r.read(65536):
                        received += len(chunk)
                except ConnectionResetError:
                    pass
            assert received < 1_000_000  # cut, not ended as if complete
            assert loop.time() - t0 < SLACK_S
        finally:
            w.close()
        r, w = await connect(edge)
        try:
            w.write(b"GET /small/x HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(SLACK_S):
                status, _, body = await read_response(r)
            assert status == 504, body
        finally:
            w.close()
        assert await _still_serves(edge)


async def test_a_trickled_small_answer_on_the_aiohttp_upstream_is_a_504(
    server_kind: ServerKind, trickler: Callable[[int], asyncio.Future[int]]
) -> None:
    """A request with a body goes through aiohttp's client: its total deadline answers 504
    (not a 500 with a traceback) when the backend trickles a small answer."""
    small_port = await trickler(5_000)
    async with running_edge(hardened(server_kind)) as edge:
        edge.set_routes([route_to("small", f"127.0.0.1:{small_port}")])
        r, w = await connect(edge)
        try:
            w.write(b"POST /small/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            async with asyncio.timeout(SLACK_S):
                status, _, body = await read_response(r)
            assert status == 504, body
            assert b"timed out" in body
        finally:
            w.close()
        assert await _still_serves(edge)


def route_to(app: str, endpoint: str) -> RouteRecord:
    return RouteRecord(app=app, prefix="/" + app, backends=(BackendRecord(app, endpoint, 1),))


async def _still_serves(edge: RunningEdge) -> bool:
    r, w = await connect(edge)
    try:
        w.write(b"GET /nope/x HTTP/1.1\r\nHost: x\r\n\r\n")
        return (await read_response(r))[0] == 404
    finally:
        w.close()


async def test_a_slow_head_gets_408_and_is_closed(server_kind: ServerKind) -> None:
    async with running_edge(hardened(server_kind, header_s=0.5)) as edge:
        r, w = await connect(edge)
        try:
            w.write(b"GET /app/x HTTP/1.1\r\nHost: x\r\n")
            async with asyncio.timeout(SLACK_S):
                status, _, _ = await read_response(r)
            assert status == 408
            assert await closed_by_peer(r)
        finally:
            w.close()
