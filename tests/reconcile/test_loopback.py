"""The reconciler with real agents, processes, fabric and repo on loopback."""

from __future__ import annotations

import time

import pytest

from reconciler.reconcile.builder import Overrides
from tests.helpers import async_wait_for

from .conftest import LoopbackMesh, manifest

pytestmark = pytest.mark.slow


async def test_apply_scale_bump_isolate_prune(loopback: LoopbackMesh) -> None:
    mesh = loopback
    for node in ("n1", "n2", "n3"):
        await mesh.add_agent(node)
    mesh.write("web", manifest("web", instances=2))
    mesh.write("api", manifest("api", instances=1))
    await mesh.add_reconciler("rec-a")
    await async_wait_for(lambda: len(mesh.ready("web")) == 2, within=30, what="web x2 ready")
    await async_wait_for(lambda: len(mesh.ready("api")) == 1, within=30, what="api ready")
    rec = mesh.active()
    assert rec is not None
    nodes = {
        r.node for a, _, _ in mesh.agents.values() for r in a.records.values() if r.app == "web"
    }
    assert len(nodes) == 2, "spread across nodes"

    # Scale up, then a version bump: the time from the edit to the first new one ready.
    mesh.write("web", manifest("web", instances=3))
    await async_wait_for(lambda: len(mesh.ready("web")) == 3, within=30, what="scaled up")
    t0 = time.monotonic()
    mesh.write("web", manifest("web", version="2", instances=3))
    await async_wait_for(lambda: mesh.ready("web", "2"), within=30, what="first v2 ready")
    edit_to_ready = time.monotonic() - t0
    print(f"garden edit -> first new instance ready: {edit_to_ready:.2f}s")
    await async_wait_for(
        lambda: len(mesh.ready("web", "2")) == 3 and not mesh.ready("web", "1"),
        within=30,
        what="v2 rolled out, v1 withered",
    )

    # A bad manifest in one app while another changes: api keeps running.
    api_before = mesh.ready("api")
    mesh.write("api", manifest("api").replace("instances:", "replicas:"))
    mesh.write("web", manifest("web", version="2", instances=1))
    await async_wait_for(lambda: len(mesh.running("web")) == 1, within=30, what="web scaled down")
    await async_wait_for(
        lambda: rec.statuses.get("api") and rec.statuses["api"].sync == "InvalidSpec",
        within=10,
        what="api InvalidSpec",
    )
    assert mesh.ready("api") == api_before
    assert "replicas" in rec.statuses["api"].reason

    # Removing a manifest withers its app.
    (mesh.garden / "api.yaml").unlink()
    await async_wait_for(lambda: not mesh.running("api"), within=30, what="api pruned")
    assert len(mesh.ready("web")) == 1


async def test_drain_and_takeover(loopback: LoopbackMesh) -> None:
    mesh = loopback
    for node in ("n1", "n2"):
        await mesh.add_agent(node)
    mesh.write("web", manifest("web", instances=2))
    await mesh.add_reconciler("rec-a")
    await mesh.add_reconciler("rec-b")
    await async_wait_for(lambda: len(mesh.ready("web")) == 2, within=30, what="web ready")
    active = mesh.active()
    assert active is not None
    assert sum(1 for r, _, _ in mesh.reconcilers.values() if r.lease.active) == 1

    # Drain n1: its instance moves to n2 first.
    await active.set_overrides(Overrides(drain=frozenset({"n1"})))
    agent1 = mesh.agents["n1"][0]
    await async_wait_for(lambda: not agent1.records, within=30, what="n1 drained")
    assert len(mesh.ready("web")) == 2

    # Kill the active reconciler: the standby takes over, nothing is restarted.
    before = mesh.ready("web")
    name = next(n for n, (r, _, _) in mesh.reconcilers.items() if r is active)
    t0 = time.monotonic()
    await mesh.stop_reconciler(name, kill=True)
    await async_wait_for(lambda: mesh.active() is not None, within=20, what="takeover")
    print(f"handover after kill: {time.monotonic() - t0:.2f}s")
    successor = mesh.active()
    assert successor is not None
    assert successor.lease.epoch > active.lease.epoch
    await async_wait_for(lambda: successor.converged.is_set(), within=20, what="converged")
    assert mesh.ready("web") == before
    # The drain survives the handover (adopted from the garden record).
    assert "n1" in successor.overrides.drain
    mesh.write("web", manifest("web", version="2", instances=2))
    await async_wait_for(
        lambda: len(mesh.ready("web", "2")) == 2 and not mesh.ready("web", "1"),
        within=30,
        what="new leader rolls out",
    )
    assert not agent1.records
