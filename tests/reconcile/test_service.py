"""``myco reconcile`` as a service: one failed task stops it; its start-up line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
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
from tests.helpers import NETNS_SETUP, async_wait_for, netns_skip_reason


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


async def test_a_wildcard_repo_listen_publishes_the_advertised_host(tmp_path: Path) -> None:
    """``--repo-listen 0.0.0.0:0`` without ``--repo-url``: agents are told
    ``http://<advertised host>:<port>``, not loopback. In a network namespace of its own
    (loopback and a veth end holding 10.77.0.3/24), so the wildcard reaches nothing else."""
    reason = netns_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    garden = tmp_path / "garden"
    garden.mkdir()
    argv = [
        sys.executable, "-m", "reconciler", "reconcile", "--watch", str(garden),
        "--state", str(tmp_path / "state"), "--name", "rec-wild",
        "--repo-listen", "0.0.0.0:0", "--gossip-bind", "0.0.0.0:0",
        "--join", "10.77.0.1:7946", "--insecure",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        "unshare", "-n", "sh", "-c", NETNS_SETUP + ' && exec "$@"', "sh", *argv,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(_stderr_line(proc, b"reconciler rec-wild:"), 60)
        info = json.loads((tmp_path / "state" / "reconciler.json").read_text())
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, rest = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert "repo and control API http://10.77.0.3:" in line
    assert info["control_url"].startswith("http://10.77.0.3:")
    assert "gossip advertising 10.77.0.3:" in line
    assert "(the address that routes to seed 10.77.0.1:7946)" in line
    assert "INSECURE" in line
    assert proc.returncode == 0, rest.decode()


def test_a_keyless_wildcard_repo_listen_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "reconciler", "reconcile", "--watch", str(tmp_path),
            "--state", str(tmp_path / "state"), "--repo-listen", "0.0.0.0:0",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        "myco: error: reconcile: refusing to serve the repo and control API in plaintext on "
        "0.0.0.0:0 without an identity: give --identity DIR (mutual TLS), or --insecure"
    )
