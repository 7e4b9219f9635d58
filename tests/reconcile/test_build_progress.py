"""Dependency builds seen from outside: progress while they run, the installer's last lines
when they fail (issue 19, item 4). Real agents, fabric, repo and build commands."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from reconciler.mesh.up import status_changes
from reconciler.observe.render import render_text
from reconciler.observe.snapshot import snapshot_of
from reconciler.observe.status import build_status
from reconciler.reconcile.http import status_json
from reconciler.records import KEY_BUILD
from reconciler.spore.deps import BuildStep
from tests.helpers import async_wait_for

from .conftest import LoopbackMesh, manifest

pytestmark = pytest.mark.slow

# A build command: says what it does, waits for a flag file ("wait"), fails with 30 lines
# of output ("fail") or produces its output.
MAKE = textwrap.dedent(
    """\
    import os, sys, time
    mode, flag = sys.argv[1], sys.argv[2]
    print("collecting widgets", flush=True)
    while mode == "wait" and not os.path.exists(flag):
        time.sleep(0.02)
    if mode == "fail":
        for i in range(30):
            print(f"error line {i}")
        sys.exit(2)
    os.makedirs("dist")
    open("dist/built.txt", "w").write("ok")
    """
)


def built(name: str, mode: str, flag: Path, version: str = "1") -> str:
    build = f"""\
    build:
      command:
        run: ["{sys.executable}", make.py, {mode}, "{flag}"]
        outputs: [dist]
    """
    return manifest(name, version=version, extra=build)


async def test_build_steps_are_published_and_a_failed_build_keeps_the_last_good(
    loopback: LoopbackMesh, tmp_path: Path
) -> None:
    mesh = loopback
    (mesh.garden / "src" / "make.py").write_text(MAKE)
    flag = tmp_path / "go"
    for node in ("n1", "n2"):
        await mesh.add_agent(node)
    mesh.write("web", manifest("web"))
    mesh.write("api", built("api", "wait", flag))
    rec = await mesh.add_reconciler("rec-a")
    steps: list[BuildStep] = []
    rec.step_listeners.append(steps.append)

    # While the build command runs: its step is in the loop, in the `build` record (seen
    # by another member) and in what `myco status` and `myco up` print.
    def building() -> bool:
        app = build_status(snapshot_of(mesh.seed)).app("api")
        return app is not None and bool(app.building)

    await async_wait_for(building, within=30, what="api's build step in the fabric")
    status = build_status(snapshot_of(mesh.seed))
    app = status.app("api")
    assert app is not None
    assert app.building["step"] == f"running {sys.executable} make.py wait {flag}"
    assert (app.sync, app.health) == ("OutOfSync", "Missing")  # listed before it ever ran
    assert rec.building["api"]["step"] == app.building["step"]
    assert status_json(rec)["building"] == rec.building
    text = render_text(status)
    assert f"BUILDS\n  api: building: running {sys.executable} make.py wait" in text
    shown: dict[str, str] = {}
    lines = status_changes(status, shown)
    assert any(line.startswith("api: building: running ") for line in lines), lines
    assert status_changes(status, shown) == []  # printed once, not at every poll

    flag.touch()
    await async_wait_for(lambda: mesh.ready("api") and mesh.ready("web"), within=30, what="up")
    await async_wait_for(lambda: not mesh.seed.view(KEY_BUILD), within=10, what="record gone")
    assert not rec.building
    assert [s.app for s in steps] == ["api", "api", "api"]
    assert steps[1].text.startswith("build command finished (")
    assert steps[-1].final
    assert steps[-1].text.startswith("command build done: ")
    api_before = mesh.ready("api")

    # The build now fails, a new app's build fails from the start, and web changes: web
    # rolls on, api keeps its last good spore, both failures show the installer's lines.
    mesh.write("api", built("api", "fail", flag, version="2"))
    mesh.write("fresh", built("fresh", "fail", flag))
    mesh.write("web", manifest("web", version="2"))
    await async_wait_for(lambda: mesh.ready("web", "2"), within=30, what="web v2 ready")

    def failed(name: str) -> bool:
        st = rec.statuses.get(name)
        return st is not None and st.sync == "InvalidSpec" and bool(st.build_log)

    await async_wait_for(lambda: failed("api") and failed("fresh"), within=30, what="failed")
    expected = "\n".join(f"error line {i}" for i in range(10, 30))  # the last 20 lines
    api, fresh = rec.statuses["api"], rec.statuses["fresh"]
    assert api.build_log == expected
    assert api.reason.startswith("invalid manifest, running the last good spec: spore build")
    assert "build command failed (exit 2): error line 24 | " in api.reason
    assert "\n" not in api.reason
    assert (fresh.health, fresh.build_log) == ("Missing", expected)
    assert fresh.reason.startswith("spore build failed: fresh: build command failed (exit 2)")
    assert mesh.ready("api") == api_before
    assert not mesh.running("fresh")

    # Through the fabric, as `myco status` and `myco up` show it.
    def shown_in_fabric() -> bool:
        app = build_status(snapshot_of(mesh.seed)).app("fresh")
        return app is not None and app.build_log == expected

    await async_wait_for(shown_in_fabric, within=10, what="the build log in the fabric")
    status = build_status(snapshot_of(mesh.seed))
    text = render_text(status)
    assert "api: build failed; its last output lines:\n    | error line 10\n" in text
    assert "    | error line 29\n  fresh: build failed;" in text
    lines = status_changes(status, shown)
    assert "fresh: build failed; last lines:" in lines
    assert lines.count("  | error line 29") == 2  # api's and fresh's
    assert status_changes(status, shown) == []


async def test_apply_one_shot_prints_build_steps_and_the_failed_build(
    loopback: LoopbackMesh, tmp_path: Path
) -> None:
    mesh = loopback
    (mesh.garden / "src" / "make.py").write_text(MAKE)
    flag = tmp_path / "unused"
    await mesh.add_agent("n1")
    mesh.write("web", built("web", "ok", flag))
    mesh.write("bad", built("bad", "fail", flag))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler", "apply", str(mesh.garden), "--wait",
        "--timeout", "40", "--join", mesh.seed.addr, "--key", str(mesh.key),
        "--repo", str(tmp_path / "repo"), "--state", str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 1, err  # one app failed; --wait did not wait for it in vain
    assert f"myco: web: building: running {sys.executable} make.py ok" in err
    assert "myco: web: building: build command finished (" in err
    assert "myco: web: built: command build done: 0 package(s), 1 files" in err
    assert f"myco: bad: building: running {sys.executable} make.py fail" in err
    assert "myco: bad: the build's last output lines:\n  | error line 10\n" in err
    assert "  | error line 29\n" in err
    assert err.count("  | error line 29") == 1  # once, though the status is seen often
    bad = next(line for line in out.splitlines() if line.split()[:1] == ["bad"])
    assert "InvalidSpec" in bad
    assert "spore build failed" in bad
    assert len(mesh.ready("web")) == 1
