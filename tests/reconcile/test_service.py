"""``myco reconcile`` as a service: one failed task stops it; its start-up line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest

from reconciler.aio import serve_until_signalled
from reconciler.clock import RealClock
from reconciler.errors import ServiceFailed
from reconciler.fabric import Fabric, MemoryNetwork, open_memory_fabric
from reconciler.reconcile.service import GardenSpec, MemberConfig, ReconcileConfig, main
from tests.helpers import async_wait_for


async def test_the_service_stops_with_service_failed_when_its_fabric_dies(tmp_path: Path) -> None:
    net = MemoryNetwork(RealClock())
    opened: list[Fabric] = []

    @contextlib.asynccontextmanager
    async def opener(name: str) -> AsyncIterator[Fabric]:
        async with open_memory_fabric(name, net) as fabric:
            opened.append(fabric)
            yield fabric

    garden = tmp_path / "garden"
    garden.mkdir()
    state = tmp_path / "state"
    config = ReconcileConfig(
        member=MemberConfig(state=state, name="rec-t"), garden=GardenSpec(watch=garden)
    )
    source = config.garden.open()
    service = partial(main, config=config, source=source, open_fabric=opener)
    run = asyncio.create_task(serve_until_signalled(service, name="reconcile"))
    info = state / "reconciler.json"
    try:
        await async_wait_for(info.exists, within=20, what="the reconciler serving")
        assert not run.done()
        await opened[0].close()  # the fabric dies under the running reconciler
        with pytest.raises(ServiceFailed, match="the fabric watch stopped unexpectedly"):
            await asyncio.wait_for(run, 20)
    finally:
        if not run.done():
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, ServiceFailed):
                await run
        source.close()
    assert not info.exists()  # cleaned up on the way out, as on a graceful stop


async def _stderr_line(proc: asyncio.subprocess.Process, marker: bytes) -> str:
    assert proc.stderr is not None
    seen = []
    while line := await proc.stderr.readline():
        seen.append(line)
        if marker in line:
            return line.decode()
    raise AssertionError(f"no {marker!r} line; stderr was: {b''.join(seen).decode()}")


async def test_myco_reconcile_prints_its_startup_line_without_v(tmp_path: Path) -> None:
    garden = tmp_path / "garden"
    garden.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler", "reconcile", "--watch", str(garden),
        "--state", str(tmp_path / "state"), "--name", "rec-line",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(_stderr_line(proc, b"reconciler rec-line:"), 60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, rest = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert f"watching {garden}" in line
    assert "repo and control API http://127.0.0.1:" in line
    assert "/ui/" in line
    assert "dashboard http://127.0.0.1:" in line
    assert "gossip 127.0.0.1:" in line
    assert proc.returncode == 0, rest.decode()
