"""``myco reconcile --git URL`` follows a branch of a real bare repository, as a real process.

A working clone pushes a garden; the reconciler (its own process, polling the remote) deploys
it to a real agent; a pushed commit changes what runs; a pushed commit with an invalid
manifest is reported with its file, line and column while the app keeps running at the last
good commit (format v1: an invalid app is frozen, never withered). The revision is observed
through the reconciler's control API (``GET /v1/status``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.httpclient import one_attempt_session
from tests.helpers import async_wait_for
from tests.reconcile.conftest import WORKLOAD, LoopbackMesh, manifest


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()  # fmt: skip


def push(work: Path, text: str, message: str) -> str:
    """Commit ``text`` as garden/web.yaml and push it; the new commit's SHA."""
    (work / "garden" / "web.yaml").write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)
    git(work, "push", "-q", "origin", "main")
    return git(work, "rev-parse", "HEAD")


@pytest.mark.slow
async def test_the_reconciler_follows_the_branch_and_keeps_the_last_good_commit(
    loopback: LoopbackMesh, tmp_path: Path
) -> None:
    mesh = loopback
    await mesh.add_agent("n1")
    remote, work = tmp_path / "garden.git", tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    (work / "garden" / "src").mkdir(parents=True)
    shutil.copy(WORKLOAD, work / "garden" / "src" / "app.py")
    git(work, "init", "-q", "-b", "main")
    git(work, "remote", "add", "origin", str(remote))
    first = push(work, manifest("web", version="1"), "web 1")

    state = tmp_path / "rstate"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler", "reconcile", "--git", str(remote),
        "--branch", "main", "--subdir", "garden", "--interval", "0.2",
        "--state", str(state), "--join", mesh.seed.addr, "--key", str(mesh.key),
        "--name", "rec-git", "--lease-ttl", "1.5",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        info = state / "reconciler.json"
        await async_wait_for(info.exists, within=30, what="reconciler.json")
        url = json.loads(info.read_text())["control_url"]
        async with one_attempt_session() as session:

            async def status() -> dict[str, Any]:
                async with session.get(f"{url}/v1/status") as resp:
                    assert resp.status == 200
                    body: dict[str, Any] = await resp.json()
                    return body

            async def at(revision: str, sync: str, version: str) -> dict[str, Any] | None:
                st = await status()
                web = st["apps"].get("web", {})
                ok = (
                    st["revision"] == revision
                    and web.get("sync") == sync
                    and mesh.ready("web", version) != []
                )
                return st if ok else None

            st = await async_wait_for(
                lambda: at(first, "Synced", "1"), within=40, what="web 1 from the first commit"
            )
            assert st["source"] == f"{remote}#main"
            assert st["apps"]["web"]["revision"] == first
            assert st["problems"] == []

            # A new commit on the branch changes what runs (a new version, rolled out).
            second = push(work, manifest("web", version="2"), "web 2")
            st = await async_wait_for(
                lambda: at(second, "Synced", "2"), within=40, what="web 2 from the second commit"
            )
            await async_wait_for(
                lambda: mesh.running("web") == mesh.ready("web", "2"),
                within=20,
                what="the version-1 instance withered",
            )
            running = mesh.ready("web", "2")
            assert len(running) == 1

            # A bad commit: reported with file, line and column; the last good one runs on.
            bad = manifest("web", version="3").replace("  instances: 1\n", "  replicas: 1\n")
            line = bad.splitlines().index("  replicas: 1") + 1
            third = push(work, bad, "web 3, with a typo")
            st = await async_wait_for(
                lambda: at(third, "InvalidSpec", "2"), within=40, what="the bad commit reported"
            )
            where = f"garden/web.yaml:{line}:3: unknown field 'replicas'"
            assert any(where in p and "did you mean 'instances'" in p for p in st["problems"]), st[
                "problems"
            ]
            web = st["apps"]["web"]
            assert web["revision"] == second, web  # the spec it runs is the last good one
            assert where in web["reason"], web
            assert mesh.running("web") == running == mesh.ready("web", "2")  # untouched
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
