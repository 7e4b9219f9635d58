"""The client-facing HTTP/1.1 server, byte by byte: pipelining, 100-continue, limits,
malformed requests, HTTP/1.0 and a slow client (for both server kinds where they agree)."""

from __future__ import annotations

import asyncio
import json

import pytest

from reconciler.edge.config import EdgeConfig
from reconciler.edge.server import RunningEdge, running_edge
from tests.edge.conftest import StartBackends, route
from tests.edge.test_streams import _open_when_refused
from tests.helpers import async_wait_for

Response = tuple[int, dict[str, str], bytes]


async def read_response(r: asyncio.StreamReader) -> Response:
    """One response off a raw connection (length, chunked or until the end)."""
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await r.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await r.readuntil(b"\r\n")).strip(), 16):
            parts.append(await r.readexactly(size))
            await r.readexactly(2)
        await r.readexactly(2)
        body = b"".join(parts)
    else:
        body = await r.read()
    return status, headers, body


async def connect(edge: RunningEdge) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", edge.port)


async def closed_by_peer(r: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(10):
        try:
            return await r.read() == b""
        except ConnectionResetError:
            return True


async def test_pipelined_requests_are_answered_in_order(
    edge: RunningEdge, backends: StartBackends
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("app", (a, 1))])
    r, w = await connect(edge)
    try:
        w.write(
            b"GET /app/p0 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /app/p1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /app/p2?q=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /app/p3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nde\r\n0\r\n\r\n"
            b"GET /nope/p4 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        got = [await read_response(r) for _ in range(5)]
    finally:
        w.close()
    assert [s for s, _, _ in got] == [200, 200, 200, 200, 404]
    bodies = [json.loads(b) for _, _, b in got[:4]]
    assert [b["path"] for b in bodies] == ["/p0", "/p1", "/p2", "/p3"]
    assert [b["body_bytes"] for b in bodies] == [0, 3, 0, 2]
    assert bodies[2]["query"] == "q=1"


async def test_expect_100_continue_is_answered_before_the_body(
    edge: RunningEdge, backends: StartBackends
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("app", (a, 1))])
    r, w = await connect(edge)
    try:
        w.write(
            b"POST /app/up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await r.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100")
        w.write(b"hello")
        status, _, body = await read_response(r)
        assert status == 200
        assert json.loads(body)["body_bytes"] == 5
        assert "Expect" not in json.loads(body)["headers"]
        # to an unknown app: the answer comes at once, without a 100 first
        w.write(
            b"POST /nope/up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        status, _, _ = await read_response(r)
        assert status == 404
    finally:
        w.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET /app/x HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n",
        b"GET /app/x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /app/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["header-line", "tls", "two-lengths", "bad-chunk"],
)
async def test_a_malformed_request_gets_400_and_the_connection_closes(
    edge: RunningEdge, backends: StartBackends, garbage: bytes
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("app", (a, 1))])
    r, w = await connect(edge)
    try:
        w.write(garbage)
        status, _, _ = await read_response(r)
        assert status == 400
        assert await closed_by_peer(r)
    finally:
        w.close()
    assert a.hits == [] or garbage.endswith(b"zz\r\n")  # a bad chunk shows up mid-body


async def test_oversized_headers_get_431(edge: RunningEdge, backends: StartBackends) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("app", (a, 1))])
    big = b"GET /app/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    many = b"GET /app/x HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(300)) + b"\r\n"
    for request in (big, many):
        r, w = await connect(edge)
        try:
            w.write(request)
            status, _, _ = await read_response(r)
            if edge.config.server == "fast":
                assert status == 431
                assert await closed_by_peer(r)
            else:  # aiohttp: a line over 8190 bytes is a 400; it allows 32768 fields
                assert status in (400, 200)
        finally:
            w.close()
    assert len(a.hits) <= 1


async def test_http10_client_gets_its_answer_and_a_close(
    edge: RunningEdge, backends: StartBackends
) -> None:
    (a,) = await backends("a")
    edge.set_routes([route("app", (a, 1))])
    r, w = await connect(edge)
    try:
        w.write(b"GET /app/download/300000 HTTP/1.0\r\n\r\n")
        status, headers, body = await read_response(r)
        assert status == 200
        assert len(body) == 300000
        assert await closed_by_peer(r)
    finally:
        w.close()


async def test_a_slow_client_holds_the_backend_back(
    edge: RunningEdge, backends: StartBackends
) -> None:
    """Back-pressure: a client that stops reading stops the edge reading the backend."""
    if edge.fast is None:
        pytest.skip("looks inside the fast server")
    fast = edge.fast
    (a,) = await backends("a")
    edge.set_routes([route("app", (a, 1))])
    size = 64 * 1024 * 1024
    r, w = await connect(edge)
    try:
        w.write(f"GET /app/download/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await r.readuntil(b"\r\n\r\n")  # then read nothing: the buffers fill up
        (conn,) = fast.connections
        await async_wait_for(lambda: conn.write_paused, within=30, what="the edge to wait")
        assert conn.transport is not None
        assert conn.transport.get_write_buffer_size() <= 1024 * 1024
        assert a.sent < size // 2  # kernel buffers hold a few MiB, not the whole body
        received = 0
        while received < size:
            chunk = await r.read(1 << 20)
            assert chunk
            received += len(chunk)
        assert received == size
    finally:
        w.close()


async def test_shutdown_closes_idle_connections_and_ends_the_busy_one_cleanly(
    edge_config: EdgeConfig, backends: StartBackends
) -> None:
    (a,) = await backends("a")
    writers: list[asyncio.StreamWriter] = []
    try:
        async with running_edge(edge_config) as edge:
            edge.set_routes([route("app", (a, 1))])
            idle_r, idle_w = await connect(edge)
            busy_r, busy_w = await connect(edge)
            writers += [idle_w, busy_w]
            idle_w.write(b"GET /app/x HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(idle_r))[0] == 200  # now idle, kept alive
            busy_w.write(b"GET /app/gate HTTP/1.1\r\nHost: x\r\n\r\n")
            await async_wait_for(lambda: a.waiting == 1, what="the request to reach the backend")
            opener = asyncio.create_task(_open_when_refused(edge.port, a.gate))
            # leaving the block stops the edge: it waits for the request in flight
        await opener
        status, headers, body = await read_response(busy_r)
        assert (status, body) == (200, b"a passed the gate")
        if edge_config.server == "fast":
            assert headers.get("connection") == "close"
        assert await closed_by_peer(busy_r)
        assert await closed_by_peer(idle_r)
    finally:
        for w in writers:
            w.close()
