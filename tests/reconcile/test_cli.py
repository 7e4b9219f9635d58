"""The reconciler's CLI verbs against a loopback mesh (and their usage errors)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.httpclient import one_attempt_session
from tests.helpers import async_wait_for

from .conftest import LoopbackMesh, manifest


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile"]) == 2
    assert main(["apply", str(tmp_path / "nope")]) == 2
    assert main(["diff", str(tmp_path / "nope")]) == 2
    assert main(["diff", str(tmp_path), "--state", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no mesh found" in err
    assert "Traceback" not in err


async def cli(*argv: str) -> int:
    """Run the CLI in a thread (it runs its own event loop); keep our logging as it was."""
    root = logging.getLogger("myco")
    saved = (root.handlers[:], root.level, root.propagate)
    try:
        return await asyncio.wait_for(asyncio.to_thread(main, list(argv)), 60)
    finally:
        root.handlers[:], root.level, root.propagate = saved


@pytest.mark.slow
async def test_verbs_through_the_active_reconciler(
    loopback: LoopbackMesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh = loopback
    for node in ("n1", "n2"):
        await mesh.add_agent(node)
    mesh.write("web", manifest("web", instances=2))
    rec = await mesh.add_reconciler("rec-a")
    await async_wait_for(lambda: len(mesh.ready("web")) == 2, within=30, what="web ready")
    await async_wait_for(rec.converged.is_set, within=20, what="converged")
    agent_url = mesh.agents["n1"][0].api_url
    mesh_args = ("--agent", agent_url, "--state", str(tmp_path / "state"))
    n1_fabric = mesh.agents["n1"][2]

    def n1_sees_everything() -> bool:
        route = n1_fabric.get("rec-a", "routes/web")
        return (
            n1_fabric.get("rec-a", "garden") is not None
            and isinstance(route, dict)
            and len(route.get("backends") or ()) == 2
        )

    await async_wait_for(n1_sees_everything, within=10, what="n1 sees the reconciler's records")

    # diff: the watched garden makes no difference, an edited copy does.
    code = await cli("diff", str(mesh.garden), "--repo", str(mesh.repo.root), *mesh_args)
    assert code == 0, capsys.readouterr()
    other = tmp_path / "other"
    shutil.copytree(mesh.garden, other)
    (other / "web.yaml").write_text(manifest("web", version="2", instances=3))
    capsys.readouterr()
    assert await cli("diff", str(other), "--repo", str(mesh.repo.root), *mesh_args) == 1
    out = capsys.readouterr().out
    assert "~ web: 1 -> 2 (spore" in out
    assert "instances 2 -> 3" in out

    # apply goes through the reconciler that watches the directory.
    assert await cli("apply", str(mesh.garden), "--wait", "--timeout", "30", *mesh_args) == 0
    # ... and refuses another directory.
    assert await cli("apply", str(other), "--timeout", "5", *mesh_args) == 1
    assert "is active on" in capsys.readouterr().err

    # suspend freezes, resume follows the garden again.
    assert await cli("suspend", "web", *mesh_args) == 0
    await async_wait_for(lambda: rec.statuses["web"].health == "Suspended", what="suspended")
    mesh.write("web", manifest("web", version="2", instances=2))
    await asyncio.sleep(1.0)  # the garden changed; a suspended app must not follow it
    assert not mesh.ready("web", "2")
    assert await cli("resume", "web", *mesh_args) == 0
    await async_wait_for(
        lambda: len(mesh.ready("web", "2")) == 2 and not mesh.ready("web", "1"),
        within=30,
        what="v2 after resume",
    )

    # history shows both spores; rollback returns to v1 until resume.
    capsys.readouterr()
    assert await cli("history", "web", *mesh_args) == 0
    history = capsys.readouterr().out
    assert history.count("\n") >= 3, history
    assert await cli("rollback", "web", *mesh_args) == 0
    await async_wait_for(
        lambda: len(mesh.ready("web", "1")) == 2 and not mesh.ready("web", "2"),
        within=30,
        what="rolled back to v1",
    )
    assert await cli("resume", "web", *mesh_args) == 0
    await async_wait_for(
        lambda: len(mesh.ready("web", "2")) == 2 and len(mesh.running("web")) == 2,
        within=30,
        what="v2 again, v1 withered",
    )

    # drain empties a node; --undo lets it take instances again.
    assert await cli("drain", "n1", *mesh_args) == 0
    await async_wait_for(
        lambda: not mesh.agents["n1"][0].records and len(mesh.ready("web")) == 2,
        within=30,
        what="n1 empty, web still 2",
    )
    assert await cli("drain", "n1", "--undo", *mesh_args) == 0
    assert await cli("suspend", "nope", *mesh_args) == 1


@pytest.mark.slow
async def test_apply_one_shot_without_a_reconciler(loopback: LoopbackMesh, tmp_path: Path) -> None:
    import sys

    mesh = loopback
    await mesh.add_agent("n1")
    mesh.write("web", manifest("web", instances=1))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler", "apply", str(mesh.garden), "--wait",
        "--timeout", "40", "--join", mesh.seed.addr, "--key", str(mesh.key),
        "--repo", str(tmp_path / "repo"), "--state", str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"Healthy" in out
    assert len(mesh.ready("web")) == 1


@pytest.mark.slow
async def test_reconcile_process_serves_and_stops_cleanly(
    loopback: LoopbackMesh, tmp_path: Path
) -> None:
    import json
    import signal
    import sys

    mesh = loopback
    await mesh.add_agent("n1")
    mesh.write("web", manifest("web", instances=1))
    state = tmp_path / "rstate"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler", "reconcile", "--watch", str(mesh.garden),
        "--state", str(state), "--join", mesh.seed.addr, "--key", str(mesh.key),
        "--name", "rec-proc", "--lease-ttl", "1.5",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        info_path = state / "reconciler.json"
        await async_wait_for(info_path.exists, within=30, what="reconciler.json")
        url = json.loads(info_path.read_text())["control_url"]
        await async_wait_for(lambda: len(mesh.ready("web")) == 1, within=30, what="web ready")
        async with one_attempt_session() as session, session.get(f"{url}/v1/status") as resp:
            status = await resp.json()
        assert status["active"] is True
        assert status["name"] == "rec-proc"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    assert not (state / "reconciler.json").exists()
