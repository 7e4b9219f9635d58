"""End to end on a real local mesh (`myco up`): build → sign → publish → schedule →
sprout → route → observe, with real processes on loopback and load through the edge."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import urllib.request

import psutil
import pytest

from bench.loadgen import Load
from bench.localmesh import ROOT, LocalMesh, billing_manifest, get_json, start_mesh, wait_serving
from tests.helpers import wait_for
from tests.mesh.conftest import assert_nothing_left

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def instance_procs(mesh: LocalMesh, version: str | None = None) -> list[psutil.Process]:
    out = []
    for p in mesh.processes():
        try:
            env = p.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if env.get("MYCO_APP") == "billing" and (
            version is None or env.get("MYCO_VERSION") == version
        ):
            out.append(p)
    return out


def test_round_robin_then_ctrl_c_leaves_nothing(tmp_path):
    mesh = start_mesh(tmp_path)
    try:
        seen = wait_serving(mesh, instances=2)
        assert len(seen) == 2
        # Round-robin: consecutive answers alternate over both instances.
        answers = [get_json(f"{mesh.url}/billing/hello")[1].get("instance") for _ in range(10)]
        assert set(answers) == seen
        assert len(instance_procs(mesh)) == 2
        # observe: the edge counted them, per app and code, on its metrics address
        import urllib.request

        with urllib.request.urlopen(str(mesh.record()["edge_metrics"]), timeout=5) as resp:
            text = resp.read().decode()
        line = next(ln for ln in text.splitlines() if ln.startswith("myco_edge_requests_total{"))
        assert 'app="billing"' in line
        assert float(line.rsplit(" ", 1)[1]) >= 10
    finally:
        mesh.stop()
    assert mesh.proc.returncode == 0, mesh.log.read_text()
    assert_nothing_left(mesh)


async def test_version_bump_under_load_drops_nothing(local_mesh):
    mesh = local_mesh
    await asyncio.to_thread(wait_serving, mesh, 2)
    async with Load(f"{mesh.url}/billing/hello", rps=120) as load:
        await asyncio.sleep(1.0)
        bumped_at = time.monotonic()
        mesh.write_app(billing_manifest(version="2.0.0"))
        await asyncio.to_thread(wait_serving, mesh, 2, "2.0.0", 60)
        # Every answer is from the new version from some point on, and stays so.
        await asyncio.sleep(1.5)
    result = load.result
    assert result.sent >= 200
    assert not result.failed, result.failed[:5]
    tail = [o.version for o in result.outcomes if o.at > time.monotonic() - 1.0]
    assert tail
    assert set(tail) == {"2.0.0"}
    assert {"1.0.0", "2.0.0"} <= result.versions_after(bumped_at - 1.0)
    # The old instances are withered after the warmup and drain.
    await asyncio.to_thread(
        wait_for, lambda: not instance_procs(mesh, "1.0.0"), 30, 0.1, "old instances gone"
    )
    assert len(instance_procs(mesh, "2.0.0")) == 2


async def test_kill_9_of_an_instance_fails_no_get(local_mesh):
    mesh = local_mesh
    await asyncio.to_thread(wait_serving, mesh, 2)
    victim = instance_procs(mesh)[0]
    async with Load(f"{mesh.url}/billing/hello", rps=100) as load:
        await asyncio.sleep(0.5)
        os.kill(victim.pid, signal.SIGKILL)
        # The agent restarts it; the edge retries the failed connects on the other one.
        await asyncio.to_thread(
            wait_for,
            lambda: len([p for p in instance_procs(mesh) if p.pid != victim.pid]) == 2,
            30, 0.1, "the killed instance restarted",
        )  # fmt: skip
        await asyncio.to_thread(wait_serving, mesh, 2)
        await asyncio.sleep(0.5)
    assert load.result.sent >= 100
    assert not load.result.failed, load.result.failed[:5]


async def test_node_death_replaces_its_instances(local_mesh):
    mesh = local_mesh
    await asyncio.to_thread(wait_serving, mesh, 2)
    record = mesh.record()
    by_node: dict[str, list[psutil.Process]] = {}
    for p in instance_procs(mesh):
        by_node.setdefault(p.environ()["MYCO_NODE"], []).append(p)
    node, victims = next(iter(by_node.items()))
    agent = psutil.Process(int(record["children"][node]))  # type: ignore[index]
    async with Load(f"{mesh.url}/billing/hello", rps=100) as load:
        await asyncio.sleep(0.5)
        # The node dies: its agent and every instance on it, at once. The agent is frozen
        # rather than killed: `myco up` would restart a killed one at once (the node would
        # come back); a frozen one is a node that stopped answering, which the mesh heals.
        agent.suspend()
        for p in victims:
            p.kill()

        def replaced() -> bool:
            return len([p for p in instance_procs(mesh) if p.environ()["MYCO_NODE"] != node]) >= 2

        try:
            await asyncio.to_thread(wait_for, replaced, 60, 0.1, "replacements on other nodes")
            await asyncio.to_thread(wait_serving, mesh, 2)
            await asyncio.sleep(0.5)
        finally:
            agent.resume()
    assert not load.result.failed, load.result.failed[:5]


@pytest.mark.skipif(
    not shutil.which("node"), reason="Node.js is not installed (apt-get install nodejs)"
)
def test_a_workload_that_is_not_python(tmp_path):
    """The spore's command is a Node.js script run through its shebang: any executable works."""
    greeter = (ROOT / "examples" / "polyglot" / "greeter.yaml").read_text()
    greeter = greeter.replace("../../workloads/greeter", "../workloads/greeter")
    mesh = start_mesh(tmp_path, garden={"greeter.yaml": greeter}, workloads=("greeter",))
    try:
        seen = wait_serving(mesh, instances=2, app="greeter")
        assert len(seen) == 2
        status, body = get_json(f"{mesh.url}/greeter/hello")
        assert status == 200
        assert str(body["runtime"]).startswith("node v")
    finally:
        mesh.stop()
    assert_nothing_left(mesh)


def test_stop_leaves_nothing_even_after_an_agent_was_killed(tmp_path):
    """An agent killed with -9 cannot wither its instances; `myco up` stopping still does.

    (A killed agent is restarted and re-adopts its instances; so it is killed while the mesh
    stops, frozen first so that it cannot have withered anything before it dies.)
    """
    mesh = start_mesh(tmp_path)
    try:
        wait_serving(mesh, instances=2)
        node = instance_procs(mesh)[0].environ()["MYCO_NODE"]
        agent = psutil.Process(int(mesh.record()["children"][node]))  # type: ignore[index]
        agent.suspend()
        mesh.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "stopping the mesh" in mesh.log.read_text(), 20, what="stopping")
        agent.kill()
        agent.wait(10)
        assert any(p.environ()["MYCO_NODE"] == node for p in instance_procs(mesh))
        # The graceful stop goes on by itself (a second signal would force it instead).
        mesh.proc.wait(timeout=60)
    finally:
        mesh.stop()
    assert "left behind by a lost agent" in mesh.log.read_text()
    assert "restarted" not in mesh.log.read_text()
    assert_nothing_left(mesh)


def test_a_killed_agent_is_restarted_and_adopts_its_instances(local_mesh):
    mesh = local_mesh
    wait_serving(mesh, instances=2)
    victim = instance_procs(mesh)[0]
    node = victim.environ()["MYCO_NODE"]
    agent = psutil.Process(int(mesh.record()["children"][node]))  # type: ignore[index]
    agent.kill()
    agent.wait(10)

    def restarted() -> bool:
        pid = int(mesh.record()["children"][node])  # type: ignore[index]
        return pid != agent.pid and psutil.pid_exists(pid)

    wait_for(restarted, 30, 0.05, f"{node}'s agent restarted")
    assert f"myco: {node} exited (killed by SIGKILL); restarting in 0.5s" in mesh.log.read_text()
    # its instance kept running through it, and is the restarted agent's again
    assert victim.is_running()
    instance = victim.environ()["MYCO_INSTANCE"]
    api = mesh.record()["agent_apis"][int(node.split("-")[1]) - 1]  # type: ignore[index]

    def adopted() -> bool:
        req = urllib.request.Request(f"{api}/v1/instances")  # loopback: no credentials
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback
                return instance in resp.read().decode()
        except OSError:
            return False

    wait_for(adopted, 30, 0.1, f"{node}'s new agent reporting {instance}")
    assert victim.is_running()  # adopted, not restarted
    wait_serving(mesh, instances=2)
