"""`myco up` supervises its children on a real local mesh: a reconciler or an edge killed
with -9 is restarted on the same addresses while the workloads keep serving; a second Ctrl-C
kills everything at once; the start-up output says where the dashboards and metrics are."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.request

import psutil
import pytest

from bench.loadgen import Load, Outcome
from bench.localmesh import LocalMesh, start_mesh, wait_serving
from tests.helpers import async_wait_for, wait_for
from tests.mesh.conftest import assert_nothing_left

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RPS = 80


def _live(pid: object) -> bool:
    try:
        return psutil.Process(int(str(pid))).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):
        return False


def _child_pid(mesh: LocalMesh, name: str) -> int:
    children = mesh.record()["children"]
    assert isinstance(children, dict)
    return int(children[name])


def _restarted(mesh: LocalMesh, name: str, old: int) -> bool:
    """mesh.json names a new, live process for ``name``."""
    try:
        pid = _child_pid(mesh, name)
    except (OSError, ValueError, KeyError):  # mesh.json being replaced
        return False
    return pid != old and _live(pid)


def _summary(outcomes: list[Outcome]) -> str:
    return "; ".join(f"{o.status} {o.error[:80]}" for o in outcomes[:5])


async def test_a_killed_reconciler_is_restarted_and_no_request_fails(local_mesh):
    """The reconciler dies: the edge keeps routing to the running instances meanwhile."""
    mesh = local_mesh
    await asyncio.to_thread(wait_serving, mesh, 2)
    old = _child_pid(mesh, "reconciler")
    async with Load(f"{mesh.url}/billing/hello", rps=RPS, timeout_s=5.0) as load:
        await asyncio.sleep(1.0)
        os.kill(old, signal.SIGKILL)
        await async_wait_for(lambda: _restarted(mesh, "reconciler", old), 30, 0.05,
                             "the reconciler restarted")  # fmt: skip
        new = _child_pid(mesh, "reconciler")
        # ... and it is the reconciler running again, on its state directory
        control = mesh.state / "reconciler" / "reconciler.json"
        await async_wait_for(
            lambda: control.exists() and json.loads(control.read_text()).get("pid") == new,
            30, 0.05, "the restarted reconciler's record",
        )  # fmt: skip
        await asyncio.sleep(2.0)  # it rejoined and reconciles again: still nothing fails
    result = load.result
    assert result.sent >= 3 * RPS
    log = mesh.log.read_text()
    assert "myco: reconciler exited (killed by SIGKILL); restarting in 0.5s" in log
    assert f"myco: reconciler restarted (pid {new})" in log
    assert not result.failed, _summary(result.failed)


async def test_a_killed_edge_is_restarted_on_its_port(local_mesh):
    """The edge dies: requests fail until it is back on the same port; none after that."""
    mesh = local_mesh
    await asyncio.to_thread(wait_serving, mesh, 2)
    old = _child_pid(mesh, "edge")
    async with Load(f"{mesh.url}/billing/hello", rps=RPS, timeout_s=5.0) as load:
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)

        def answered_again() -> float | None:
            done = [o.done for o in load.result.outcomes if o.at > killed_at and o.status == 200]
            return min(done) if done else None

        back_at = await async_wait_for(answered_again, 30, 0.05, "the edge answering again")
        await asyncio.sleep(3.0)
    result = load.result
    down = [o for o in result.between(killed_at, back_at) if o.status != 200]
    after = result.between(back_at)
    print(f"edge down {back_at - killed_at:.2f}s: {len(down)} request(s) failed meanwhile")
    assert back_at - killed_at < 15
    assert len(after) >= 2 * RPS
    assert all(o.status == 200 for o in after), _summary([o for o in after if o.status != 200])
    assert not [o for o in result.between(0, killed_at) if o.status != 200]
    assert _restarted(mesh, "edge", old)
    assert "myco: edge exited (killed by SIGKILL); restarting in 0.5s" in mesh.log.read_text()
    # (the fixture stops the mesh and checks that nothing is left)


def test_start_up_output_names_the_dashboards_and_edge_metrics(local_mesh):
    mesh = local_mesh
    log = mesh.log.read_text()
    edge_line = next(ln for ln in log.splitlines() if "mesh up:" in ln)
    assert f"edge on http://{mesh.edge}" in edge_line
    (dash,) = re.findall(r"^myco: dashboard: (.*)$", log, re.M)
    urls = re.findall(r"(http://\S+/ui/) \((\S+)\)", dash)
    assert [who for _, who in urls] == ["reconciler", "node-1"]
    assert urls[1][0] == f"{mesh.record()['agent_api']}/ui/"
    (metrics,) = re.findall(r"^myco: edge metrics: (\S+)$", log, re.M)
    assert metrics == mesh.record()["edge_metrics"]
    for url in [u for u, _ in urls]:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
            assert resp.status == 200
            assert b"<html" in resp.read().lower()
    with urllib.request.urlopen(metrics, timeout=5) as resp:  # noqa: S310 - loopback
        assert b"myco_edge_" in resp.read()


def test_second_ctrl_c_forces_the_stop(tmp_path):
    mesh = start_mesh(tmp_path)
    try:
        wait_serving(mesh, instances=2)
        # A hung node: its agent would make the graceful stop wait out its grace period.
        hung = _child_pid(mesh, "node-3")
        os.kill(hung, signal.SIGSTOP)
        mesh.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "stopping the mesh" in mesh.log.read_text(), 20, what="stopping")
        assert mesh.proc.poll() is None
        forced_at = time.monotonic()
        mesh.proc.send_signal(signal.SIGINT)
        try:
            code = mesh.proc.wait(timeout=2.5)  # aio forces an exit (130) after 3 s
        except subprocess.TimeoutExpired:
            pytest.fail("myco up did not exit promptly after the second Ctrl-C")
        print(f"exited {time.monotonic() - forced_at:.2f}s after the second Ctrl-C")
    finally:
        mesh.stop()
    assert code == 0, mesh.log.read_text()
    assert "myco: forced stop: killing every process of the mesh" in mesh.log.read_text()
    assert not (mesh.state / "mesh.json").exists()
    assert_nothing_left(mesh)
