"""The lease under partition and under clock skew, and what the chaos matrix counts.

The short CI version of ``python -m bench.chaos`` (docs/chaos.md): on six hosts (network
namespaces, root) the two lease scenarios of the matrix, run by the same code as the
benchmark -- the active reconciler cut off from every host but not from Git, and a
reconciler whose wall clock is 30 s ahead (``$MYCO_TEST_WALL_OFFSET_S``) taking over a
rollout. No figure of time is asserted here (the benchmark evaluates ``heal_s``); what
is asserted is what must never happen: a failed request, an instance above the rollout's
limit, a healthy instance restarted, two reconcilers active at once without a fault to
excuse it, an agent following an older epoch after the heal, an instance flapping, a final
state other than the garden.

Beside them, without root: the lease rule against skewed clocks and a too-early claim
(in-memory fabric, virtual wall clocks), and the counting the matrix's figures rest on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import (
    AgentSample,
    Chaos,
    LeaseSample,
    ProcSample,
    Seen,
    behind,
    both_active,
    clock_ahead_30s,
    epoch_regressions,
    failures_by_kind,
    healthy_restarts,
    holders,
    reconciler_isolated,
    started_after,
)
from bench.loadgen import UNFINISHED, Outcome
from bench.netmesh import NetMesh
from reconciler.clock import RealClock, VirtualClock
from reconciler.fabric import Fabric, MemoryNetwork, open_memory_fabric
from reconciler.reconcile.lease import Lease, LeaseConfig
from reconciler.records import KEY_LEASE, LeaseRecord, intents_key, routes_key
from tests.helpers import async_wait_for

CFG = LeaseConfig(ttl_s=3.0, renew_s=1.0, settle_s=0.5)

# --- the lease rule, in memory -------------------------------------------------------------


@pytest.fixture
async def fabrics() -> AsyncIterator[list[Fabric]]:
    net = MemoryNetwork(RealClock())
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(open_memory_fabric("r0", net))
        second = await stack.enter_async_context(open_memory_fabric("r1", net, [first.addr]))
        yield [first, second]


async def rounds(fabrics: list[Fabric], leases: list[Lease], clock: VirtualClock, n: int) -> None:
    """``n`` times: every lease steps, its record spreads, half a second passes."""
    for _ in range(n):
        for lease in leases:
            lease.step()

        def spread() -> bool:
            return all(
                f.get(lease.fabric.name, KEY_LEASE)
                == lease.fabric.get(lease.fabric.name, KEY_LEASE)
                for lease in leases
                for f in fabrics
            )

        await async_wait_for(spread, what="lease records spread")
        clock.advance(0.5)


@pytest.mark.parametrize("offset", [30.0, -30.0])
async def test_a_skewed_clock_neither_takes_nor_loses_the_lease(
    fabrics: list[Fabric], offset: float
) -> None:
    clock = VirtualClock(wall_start=1000.0)
    skewed_wall: Callable[[], float] = lambda: clock.wall() + offset  # noqa: E731
    right = Lease(fabrics[0], CFG, wall=clock.wall, monotonic=clock.now)
    skewed = Lease(fabrics[1], CFG, wall=skewed_wall, monotonic=clock.now)
    await rounds(fabrics, [right], clock, 3)
    assert right.active
    # A standby whose clock is off sees a holder that renews: it never claims.
    await rounds(fabrics, [right, skewed], clock, 20)
    assert (right.active, skewed.active, skewed.holder) == (True, False, "r0")
    assert skewed.epoch == 0
    # The holder hangs: the skewed one takes over once the record stops being renewed...
    await rounds(fabrics, [skewed], clock, 12)
    assert skewed.active
    assert skewed.epoch == 2
    # ... the old holder wakes, steps down, and never takes the lease back from it.
    right.step()
    assert not right.active
    await rounds(fabrics, [right, skewed], clock, 20)
    assert (right.active, skewed.active, right.holder) == (False, True, "r1")


async def test_a_claim_of_an_epoch_a_live_member_acts_with_is_withdrawn(
    fabrics: list[Fabric],
) -> None:
    clock = VirtualClock(wall_start=1000.0)
    lease = Lease(fabrics[1], CFG, wall=clock.wall, monotonic=clock.now)
    lease.step()  # a restarted reconciler, its fabric not synced yet: claims epoch 1
    assert (lease.epoch, lease.active) == (1, False)
    # A live member's intents, epoch 1, arrive while the claim settles.
    fabrics[0].publish(intents_key("n1"), {"epoch": 1, "revision": "r", "instances": []})
    await async_wait_for(lambda: fabrics[1].get("r0", intents_key("n1")), what="spread")
    clock.advance(1.0)
    lease.step()
    assert not lease.active, "confirmed an epoch a live member acts with"
    assert fabrics[1].get("r1", KEY_LEASE) is None, "the claim was not withdrawn"
    for _ in range(3):  # that member holds no lease: a claim above its epoch, confirmed
        lease.step()
        clock.advance(1.0)
    assert (lease.epoch, lease.active) == (2, True)
    # Active, it sees another member's records of a higher epoch: it claims above them.
    fabrics[0].publish(intents_key("n2"), {"epoch": 7, "revision": "r", "instances": []})
    await async_wait_for(lambda: fabrics[1].get("r0", intents_key("n2")), what="spread")
    lease.step()
    assert (lease.epoch, lease.active) == (8, False)


async def test_a_holder_keeps_its_lease_against_a_claim_of_its_epoch_made_unseen() -> None:
    net = MemoryNetwork(RealClock())
    clock = VirtualClock(wall_start=1000.0)
    async with contextlib.AsyncExitStack() as stack:
        r0 = await stack.enter_async_context(open_memory_fabric("r0", net))
        r1 = await stack.enter_async_context(open_memory_fabric("r1", net, [r0.addr]))

        def together() -> bool:
            return all(
                {(m.name, m.state) for m in f.members()} >= {("r0", "alive"), ("r1", "alive")}
                for f in (r0, r1)
            )

        await async_wait_for(together, what="the two members to meet")
        net.partition([r0.addr], [r1.addr])
        holder = Lease(r0, CFG, wall=clock.wall, monotonic=clock.now)
        holder.step()
        clock.advance(1.0)
        holder.step()
        assert (holder.active, holder.epoch) == (True, 1)
        r0.publish(intents_key("n1"), {"epoch": 1, "revision": "r", "instances": []})
        fresh = Lease(r1, CFG, wall=clock.wall, monotonic=clock.now)
        fresh.step()  # it sees nothing of r0's: claims epoch 1, named above r0
        assert (fresh.epoch, fresh.active) == (1, False)
        net.heal()
        await async_wait_for(
            lambda: (
                together()
                and r1.get("r0", intents_key("n1")) is not None
                and r1.get("r0", KEY_LEASE) is not None
                and r0.get("r1", KEY_LEASE) is not None
            ),
            what="the records to spread after the heal",
        )
        for _ in range(6):
            holder.step()
            fresh.step()
            assert holder.active, "the holder gave its lease to a claim of its own epoch"
            assert not fresh.active
            clock.advance(0.5)
        assert (holder.epoch, fresh.holder) == (1, "r0")


async def test_a_holder_cut_off_keeps_its_epoch_beside_a_gone_rivals_records_of_it() -> None:
    net = MemoryNetwork(RealClock())
    clock = VirtualClock(wall_start=1000.0)
    async with contextlib.AsyncExitStack() as stack:
        r0 = await stack.enter_async_context(open_memory_fabric("r0", net))
        async with open_memory_fabric("r1", net, [r0.addr]) as r1:
            holder = Lease(r0, CFG, wall=clock.wall, monotonic=clock.now)
            holder.step()
            clock.advance(1.0)
            holder.step()
            assert (holder.active, holder.epoch) == (True, 1)
            # a rival that had claimed epoch 1 unseen and acted with it, as two reconcilers
            # started apart do, then leaves (or is cut off: gone all the same)
            r1.publish(intents_key("n1"), {"epoch": 1, "revision": "r", "instances": []})
            await async_wait_for(lambda: r0.get("r1", intents_key("n1")), what="spread")
        await async_wait_for(
            lambda: (
                r0.get("r1", intents_key("n1")) is None
                and r0.view("intents/", include_gone=True).get(("r1", intents_key("n1")))
            ),
            what="the rival gone, its records kept as gone",
        )
        for _ in range(4):
            holder.step()
            clock.advance(1.0)
            assert (holder.active, holder.epoch) == (True, 1), "the holder changed its epoch"


async def test_a_restarted_reconciler_watches_first_and_claims_above_the_epoch_it_kept(
    fabrics: list[Fabric], tmp_path: Path
) -> None:
    clock = VirtualClock(wall_start=1000.0)
    kept = tmp_path / "lease-epoch.json"
    kept.write_text('{"epoch": 41}\n')  # what its earlier life saw; the fabric forgot it
    lease = Lease(fabrics[0], replace(CFG, startup_s=3.0), wall=clock.wall, monotonic=clock.now)
    lease.remember(kept)
    for _ in range(3):  # the first startup_s: it only watches
        lease.step()
        assert fabrics[0].get("r0", KEY_LEASE) is None, "claimed before its fabric synced"
        clock.advance(0.9)
    clock.advance(0.5)
    lease.step()
    clock.advance(1.0)
    lease.step()
    assert (lease.active, lease.epoch) == (True, 42)
    assert json.loads(kept.read_text()) == {"epoch": 42}


async def test_a_deposed_reconciler_withdraws_its_plans_once_the_holder_has_published(
    fabrics: list[Fabric],
) -> None:
    clock = VirtualClock(wall_start=1000.0)
    # r1 planned while it held epoch 1; r0 now holds epoch 2 and has not published yet
    fabrics[1].publish(routes_key("billing"), {"epoch": 1, "app": "billing", "backends": []})
    fabrics[0].publish(KEY_LEASE, LeaseRecord("r0", 2, clock.wall() + 60).to_json())
    await async_wait_for(lambda: fabrics[1].get("r0", KEY_LEASE), what="spread")
    deposed = Lease(fabrics[1], CFG, wall=clock.wall, monotonic=clock.now)
    deposed.step()
    assert deposed.holder == "r0"
    assert fabrics[1].get("r1", routes_key("billing")) is not None, "withdrawn too early"
    fabrics[0].publish(routes_key("billing"), {"epoch": 2, "app": "billing", "backends": []})
    await async_wait_for(lambda: fabrics[1].get("r0", routes_key("billing")), what="spread")
    deposed.step()
    assert fabrics[1].get("r1", routes_key("billing")) is None


# --- what the matrix counts ------------------------------------------------------------------


def ready(pid: int, restarts: int = 0) -> Seen:
    return Seen("ready", True, restarts, pid)


@pytest.mark.parametrize(
    ("agents", "procs", "exempt", "expected"),
    [
        # healthy with pid 10, later running as pid 11: restarted once
        ([(0, {"a": ready(10)})], [(1, {"h1/a": {11}})], (), {"h1/a": 1}),
        # the same, killed on purpose
        ([(0, {"a": ready(10)})], [(1, {"h1/a": {11}})], ("a",), {}),
        # a new pid before it was ever healthy: not a healthy restart
        ([(0, {"a": Seen("starting", False, 0, 10)})], [(1, {"h1/a": {11}})], (), {}),
        # gone for good (withered): not a restart
        ([(0, {"a": ready(10)})], [(1, {})], (), {}),
        # an instance of the same id on another host (two halves of a split): not a restart
        ([(0, {"a": ready(10)})], [(1, {"h1/a": {10}, "h2/a": {11}})], (), {}),
        # the agent's count grows by two
        ([(0, {"a": ready(10)}), (2, {"a": ready(10, 2)})], [], (), {"h1/a": 2}),
        # one restart seen both ways counts once
        ([(0, {"a": ready(10)}), (2, {"a": ready(11, 1)})], [(1, {"h1/a": {11}})], (), {"h1/a": 1}),
        # the same process throughout
        ([(0, {"a": ready(10)}), (2, {"a": ready(10)})], [(1, {"h1/a": {10}})], (), {}),
    ],
)
def test_healthy_restarts_are_counted_from_agents_and_proc(
    agents: list[tuple[float, dict[str, Seen]]],
    procs: list[tuple[float, dict[str, set[int]]]],
    exempt: tuple[str, ...],
    expected: dict[str, int],
) -> None:
    a = [AgentSample(t, "h1", inst, 1) for t, inst in agents]
    p = [ProcSample(t, {k: frozenset(v) for k, v in run.items()}) for t, run in procs]
    assert healthy_restarts(a, p, exempt) == expected


def test_lease_holders_and_two_active_are_read_from_each_reconcilers_latest_answer() -> None:
    samples = [
        LeaseSample(0.0, "h5", True, 1),
        LeaseSample(0.1, "h6", False, 0),
        LeaseSample(0.2, "h5", True, 1),
        LeaseSample(0.3, "h6", True, 2),  # h5 last said active 0.1 s ago: two active
        LeaseSample(0.4, "h5", False, 1),
        LeaseSample(0.5, "h6", True, 2),
        LeaseSample(2.0, "h6", True, 2),  # h5 silent for 1.6 s: its old answer is stale
        LeaseSample(2.1, "h5", None),
    ]
    assert holders(samples) == ["h5", "h6"]
    assert holders(samples, end=0.25) == ["h5"]
    assert both_active(samples) == 1
    assert both_active(samples, start=0.35) == 0


def test_agent_epochs_never_go_back_and_none_is_left_behind() -> None:
    agents = [
        AgentSample(0.0, "h1", {}, 3),
        AgentSample(0.1, "h2", {}, 4),
        AgentSample(0.2, "h1", {}, 4),
        AgentSample(0.3, "h1", {}, None),  # no answer: nothing said
        AgentSample(0.4, "h1", {}, 3),  # back to an older epoch
    ]
    assert epoch_regressions(agents) == 1
    assert behind(agents, 4, start=0.1) == 1
    assert behind(agents, 4, start=0.0) == 2


def test_instances_started_after_a_moment_and_failures_by_kind() -> None:
    procs = [
        ProcSample(0.0, {"a": frozenset({1})}),
        ProcSample(1.0, {"a": frozenset({1}), "b": frozenset({2})}),
        ProcSample(2.0, {"c": frozenset({3})}),
    ]
    assert started_after(procs, 1.0) == {"b", "c"}
    outcomes = [
        Outcome(0, 200),
        Outcome(0, 503, error="no backend"),
        Outcome(0, 0, error="no answer within 5s"),
        Outcome(0, 0, error=UNFINISHED),
        Outcome(0, 0, error="ConnectionRefusedError: [Errno 111]"),
        Outcome(0, 503),
    ]
    assert failures_by_kind(outcomes) == {
        "ConnectionRefusedError": 1, "http_503": 2, "timeout": 1, "unfinished": 1,
    }  # fmt: skip


# --- six hosts ----------------------------------------------------------------------------------

NEVER = (
    "failed_requests",
    "over_limit_instances",
    "healthy_restarts",
    "agent_epoch_regressions",
)


def never_happened(fig: dict[str, Any], *more: str) -> None:
    """Every figure in ``NEVER`` and ``more`` is 0, and the final state is the garden."""
    bad = {k: fig[k] for k in (*NEVER, *more) if fig[k] != 0}
    assert not bad, f"{bad}; {fig}"
    assert fig["final_state_equals_garden"], fig["final_state"]


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_the_lease_moves_from_a_cut_off_reconciler_and_its_old_epoch_is_ignored(
    mesh: NetMesh,
) -> None:
    chaos = Chaos(mesh)
    await asyncio.to_thread(chaos.reset)
    fig = await reconciler_isolated(chaos)
    never_happened(fig, "agents_behind_new_epoch_after_heal", "flapped_instances")
    assert fig["new_epoch"] > fig["old_epoch"], fig
    assert fig["lease"]["moves"] >= 1, fig["lease"]
    # the new holder ran the rollout while the old one was cut off: every agent follows it
    assert all(t["met"] for k, t in fig["targets"].items() if k != "heal_s"), fig["targets"]


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_reconciler_30s_ahead_takes_no_lease_and_takes_over_a_rollout(
    mesh: NetMesh,
) -> None:
    chaos = Chaos(mesh)
    await asyncio.to_thread(chaos.reset)  # (a reset also puts a skewed clock right)
    fig = await clock_ahead_30s(chaos)
    never_happened(fig, "lease_moves_before_the_kill", "both_active_samples_before_the_kill")
