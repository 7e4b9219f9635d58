"""Six hosts (network namespaces) running the commands of docs/deploy.md: three agents, an
edge, two reconcilers following a Git remote. The scenarios share one mesh and run in file
order; the destructive ones (a reconciler host, then an agent host, dies) come last."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bench.loadgen import Load, LoadResult
from bench.netmesh import Host, NetMesh

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(180)]

APP = "billing"


def billing(mesh: NetMesh, host: Host | None = None) -> list[Any]:
    status = mesh.status(host)
    return [] if status is None else [i for i in status.instances if i.app == APP]


def settled(mesh: NetMesh, version: str, nodes_out: frozenset[str] = frozenset()) -> bool:
    """The app runs exactly its instances, all ``version``, ready, on live nodes only (as the
    fabric says and as the processes on the hosts say), and no rollout is under way."""
    status = mesh.status()
    if status is None:
        return False
    app = next((a for a in status.apps if a.name == APP), None)
    insts = [i for i in status.instances if i.app == APP]
    pids = mesh.instance_pids(APP)
    return (
        app is not None
        and app.sync == "Synced"
        and app.health == "Healthy"
        and len(insts) == mesh.instances
        and all(i.version == version and i.phase == "ready" for i in insts)
        and not any(i.node in nodes_out for i in insts)
        and sum(len(p) for p in pids.values()) == mesh.instances
    )


def edge_only(mesh: NetMesh, version: str, tries: int = 10) -> bool:
    """``tries`` answers in a row through the edge, every one from ``version``."""
    for _ in range(tries):
        status, body = mesh.edge_get()
        if status != 200 or not isinstance(body, dict) or body.get("version") != version:
            return False
    return True


def load(mesh: NetMesh, rps: float = 40) -> Load:
    return Load(f"{mesh.edge_url}/{APP}/hello", rps=rps, timeout_s=5.0,
                connect=mesh.socket_factory())  # fmt: skip


def describe(result: LoadResult) -> str:
    return f"{len(result.failed)} of {result.sent} failed: " + "; ".join(
        f"{o.status} {o.error[:80]}" for o in result.failed[:5]
    )


# --- a. the cluster forms ----------------------------------------------------------------


def test_a_cluster_forms_with_wildcard_binds(mesh: NetMesh) -> None:
    mesh.wait(mesh.formed, 30, "every member to see every other alive")
    # Bound to 0.0.0.0, each advertises its own host's address (detected: no --advertise).
    view = mesh.fabric_view(mesh.role("agent")[0])
    assert view is not None
    addrs = {str(m["addr"]).rsplit(":", 1)[0] for m in view["members"]}
    assert addrs == {h.addr for h in mesh.hosts}, view["members"]
    # The guide's check command works on an agent host.
    out = mesh.run_status(mesh.role("agent")[2])
    assert out.returncode == 0, out.stderr
    for agent in mesh.role("agent"):
        assert agent.name in out.stdout, out.stdout


# --- b. requests reach instances on other hosts ------------------------------------------


def test_b_edge_reaches_instances_on_other_hosts(mesh: NetMesh) -> None:
    nodes: set[str] = set()
    instances: set[str] = set()

    def answers() -> bool:
        status, body = mesh.edge_get()
        if status == 200 and isinstance(body, dict):
            nodes.add(str(body.get("node")))
            instances.add(str(body.get("instance")))
        return len(instances) >= mesh.instances

    mesh.wait(answers, 60, f"the edge to answer from {mesh.instances} instances")
    assert len(nodes) > 1, f"every answer came from {nodes}"
    assert nodes <= {h.name for h in mesh.role("agent")}
    assert mesh.edge.name not in nodes


# --- c. a Git push under load ------------------------------------------------------------


async def test_c_version_bump_pushed_to_git_fails_no_request(mesh: NetMesh) -> None:
    await asyncio.to_thread(mesh.wait, lambda: settled(mesh, "1.0.0"), 60, "1.0.0 settled")
    bound = mesh.poll_interval + mesh.warmup_s + 6.0
    async with load(mesh) as gen:
        await asyncio.sleep(1.0)
        pushed = await asyncio.to_thread(mesh.bump, "2.0.0")
        await asyncio.to_thread(mesh.wait, lambda: settled(mesh, "2.0.0"), 60, "2.0.0 settled")
        await asyncio.to_thread(mesh.wait, lambda: edge_only(mesh, "2.0.0"), 20, "edge on 2.0.0")
        await asyncio.sleep(1.0)
    result = gen.result
    assert result.sent >= 80
    assert not result.failed, describe(result)
    after = result.first_time_all("2.0.0", since=pushed)
    assert after is not None, "no answer from 2.0.0"
    assert after - pushed <= bound, (
        f"2.0.0 answered everything {after - pushed:.1f}s after the push"
    )
    assert {o.version for o in result.between(after)} == {"2.0.0"}


# --- f. a host cut off longer than the dead timeout, then healed --------------------------


def test_f_partitioned_host_heals_without_surplus_or_restarts(mesh: NetMesh) -> None:
    mesh.wait(lambda: settled(mesh, "2.0.0"), 60, "2.0.0 settled")
    insts = billing(mesh)
    victim = mesh.host_of_node(insts[0].node)
    others = [h for h in mesh.role("agent") if h is not victim]
    before = {i.instance_id: i.restarts for i in insts if i.node != victim.name}
    pids_before = {h: p for h, p in mesh.instance_pids(APP).items() if h != victim.short}

    mesh.partition(victim)
    try:
        observer = others[0]

        def dead_elsewhere() -> bool:
            states = mesh.member_states(observer)
            return bool(states) and states.get(victim.name) in ("dead", None)  # type: ignore[union-attr]

        mesh.wait(dead_elsewhere, 30, f"{victim.short} to be declared dead")
        # Its instance is replaced on the others, while it still runs its own (cut off).
        mesh.wait(
            lambda: len([i for i in billing(mesh, observer) if i.node != victim.name
                         and i.phase == "ready"]) == mesh.instances,
            30, "the cut-off host's instance to be replaced",
        )  # fmt: skip
        assert mesh.instance_pids(APP).get(victim.short), "the cut-off host stopped its instance"
    finally:
        mesh.heal(victim)

    # Membership and state heal.
    mesh.wait(mesh.formed, 30, "full membership after the heal")

    def same_state() -> bool:
        views = [mesh.fabric_view(h) for h in mesh.role("agent")]
        keys = [
            {(e["owner"], e["key"], e["version"]) for e in v["entries"]} if v else None
            for v in views
        ]
        return keys[0] is not None and all(k == keys[0] for k in keys)

    mesh.wait(same_state, 30, "every agent to hold the same fabric state")
    # No more instances than the rollout allows (blue-green: both sets at most), at every
    # sample until it settles on exactly its instances, all ready.
    most = 0
    deadline = time.monotonic() + 30
    while not settled(mesh, "2.0.0"):
        most = max(most, sum(len(p) for p in mesh.instance_pids(APP).values()))
        assert time.monotonic() < deadline, f"not settled after the heal\n{mesh.logs()}"
        time.sleep(0.1)
    assert most <= 2 * mesh.instances, f"{most} instances ran at once after the heal"
    # Nothing that was healthy restarted: the same processes, the same restart counts.
    after = {h: p for h, p in mesh.instance_pids(APP).items() if h != victim.short}
    for host, pids in pids_before.items():
        assert set(pids) <= set(after.get(host, [])), f"instances on {host} were restarted"
    now = {i.instance_id: i.restarts for i in billing(mesh)}
    for iid, restarts in before.items():
        assert now.get(iid) == restarts, f"{iid}: {restarts} -> {now.get(iid)} restarts"


# --- d. the active reconciler's host dies mid-rollout ------------------------------------


async def test_d_standby_reconciler_completes_a_rollout_when_the_active_host_dies(
    mesh: NetMesh,
) -> None:
    await asyncio.to_thread(mesh.wait, lambda: settled(mesh, "2.0.0"), 60, "2.0.0 settled")
    active = await asyncio.to_thread(
        mesh.wait_value, mesh.active_reconciler, 20, "an active reconciler"
    )
    async with load(mesh) as gen:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(mesh.bump, "3.0.0")
        # Mid-rollout: new instances exist beside the old ones.
        await asyncio.to_thread(
            mesh.wait,
            lambda: {i.version for i in billing(mesh)} >= {"2.0.0", "3.0.0"},
            30, "the blue-green rollout to start",
        )  # fmt: skip
        killed_at = time.monotonic()
        await asyncio.to_thread(mesh.kill_host, active)
        await asyncio.to_thread(mesh.wait, lambda: settled(mesh, "3.0.0"), 60, "3.0.0 settled")
        took = time.monotonic() - killed_at
        await asyncio.to_thread(mesh.wait, lambda: edge_only(mesh, "3.0.0"), 20, "edge on 3.0.0")
        await asyncio.sleep(0.5)
    placed = {i.instance_id: i.node for i in billing(mesh)}
    standby = mesh.active_reconciler()
    assert standby is not None
    assert standby is not active
    assert took <= 30, f"the standby took {took:.1f}s to complete the rollout"
    assert not gen.result.failed, describe(gen.result)
    assert len(set(placed.values())) > 1, f"the new set landed on one host: {placed}"


# --- e. an agent host dies ---------------------------------------------------------------


async def test_e_agent_host_death_replaces_its_instances(mesh: NetMesh) -> None:
    await asyncio.to_thread(mesh.wait, lambda: settled(mesh, "3.0.0"), 60, "3.0.0 settled")
    insts = billing(mesh)
    placement = {i.instance_id: i.node for i in insts}
    victim = mesh.host_of_node(insts[-1].node)
    async with load(mesh) as gen:
        await asyncio.sleep(0.5)
        killed = await asyncio.to_thread(mesh.kill_host, victim)
        assert killed >= 2  # the agent and at least one instance
        await asyncio.to_thread(
            mesh.wait, lambda: settled(mesh, "3.0.0", frozenset({victim.name})), 30,
            "its instances to be replaced on the other hosts",
        )  # fmt: skip
        await asyncio.sleep(0.5)
    nodes = {i.node for i in billing(mesh)}
    assert victim.name not in nodes
    # Zero failures needs a survivor: the app must not have had every instance on one host.
    assert len(set(placement.values())) > 1, f"every instance on one host before: {placement}"
    assert not gen.result.failed, f"{describe(gen.result)}; placement before: {placement}"
