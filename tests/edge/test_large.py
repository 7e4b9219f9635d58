"""100 MB up and down through a real ``myco edge`` process, with its memory bounded."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import psutil

from reconciler.edge.config import ServerKind
from tests.edge.conftest import EdgeProcess, StartBackends

SIZE = 100 * 1024 * 1024
MAX_GROWTH = 40 * 1024 * 1024  # the edge may hold buffers, never the body


async def _blocks(n: int) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * 256  # 64 KiB
    left = n
    while left:
        piece = block[: min(left, len(block))]
        left -= len(piece)
        yield piece


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            await asyncio.sleep(0.01)


async def test_100mb_upload_and_download_with_bounded_edge_memory(
    backends: StartBackends,
    client: aiohttp.ClientSession,
    edge_process: Callable[..., EdgeProcess],
    server_kind: ServerKind,
) -> None:
    (big,) = await backends("big")
    # the edge process runs on the same kind of loop as this test (asyncio or uvloop)
    loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    edge = edge_process("--route", f"big={big.endpoint}", "--loop", loop, "--server", server_kind)
    await edge.ready(client)
    assert edge.proc is not None
    async with client.get(f"{edge.url}/big/download/1000") as resp:  # warm up
        assert len(await resp.read()) == 1000
    rss = PeakRss(edge.proc.pid)
    baseline = rss.proc.memory_info().rss
    stop = asyncio.Event()
    watcher = asyncio.create_task(rss.watch(stop))
    try:
        expected = hashlib.sha256()
        async for b in _blocks(SIZE):
            expected.update(b)
        async with client.post(
            f"{edge.url}/big/upload", data=_blocks(SIZE), headers={"Content-Length": str(SIZE)}
        ) as resp:
            assert resp.status == 200
            got = await resp.json()
        assert got == {"bytes": SIZE, "sha256": expected.hexdigest()}
        received = 0
        async with client.get(f"{edge.url}/big/download/{SIZE}") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(SIZE)
            async for chunk in resp.content.iter_chunked(1 << 20):
                received += len(chunk)
        assert received == SIZE
        # chunked both ways too (no Content-Length anywhere)
        async with client.post(f"{edge.url}/big/upload", data=_blocks(SIZE // 4)) as resp:
            assert (await resp.json())["bytes"] == SIZE // 4
    finally:
        stop.set()
        await watcher
    code, err = edge.stop()
    assert code == 0, err
    print(f"edge RSS baseline {baseline >> 20} MiB, peak {rss.peak >> 20} MiB")
    assert rss.peak - baseline < MAX_GROWTH, (baseline, rss.peak)
