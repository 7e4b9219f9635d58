"""Scenario tests of the plan: rollouts, scheduling, isolation, prune, lease takeover."""

from __future__ import annotations

import json
from dataclasses import replace

from reconciler.core.model import Actual, Desired, RolloutState, parse_route, route_json
from reconciler.core.plan import Planner, plan, topo_order
from reconciler.core.sim import make_app, make_desired, make_nodes
from reconciler.model import Rollout
from reconciler.records import Nutrients

from .conftest import Mesh


def test_fresh_apps_spread_across_nodes(mesh: Mesh) -> None:
    mesh.converge(make_desired(make_app("a", 3), make_app("b", 6)))
    assert sorted(mesh.placed("a").values()) == ["node-000", "node-001", "node-002"]
    b_nodes = list(mesh.placed("b").values())
    assert all(b_nodes.count(n) == 2 for n in set(b_nodes))
    assert mesh.status("a") == ("Synced", "Healthy")
    assert len(mesh.routed("b")) == 6


def test_blue_green_switches_after_warmup_then_drains_old(mesh: Mesh) -> None:
    mesh.converge(make_desired(make_app("a", 2)))
    old = set(mesh.placed("a"))
    v2 = make_desired(make_app("a", 2, version="2", rollout=Rollout(warmup_s=5)), revision="r2")
    mesh.step(v2)  # new set asked for
    assert len(mesh.placed("a")) == 4
    seen_switch = None
    for _ in range(20):
        mesh.step(v2)
        routed = set(mesh.routed("a"))
        if seen_switch is None and routed and not routed & old:
            seen_switch = mesh.now
            # The old set drains (route says so) before it withers.
            assert mesh.actual.routes["a"].draining
            assert old <= set(mesh.placed("a"))
        assert routed, "the app must never be left without a backend"
        assert routed <= old or not routed & old, "blue-green never mixes versions"
    assert seen_switch is not None
    assert not old & set(mesh.placed("a"))
    assert mesh.status("a") == ("Synced", "Healthy")
    assert mesh.statuses["a"].revision == "r2"


def test_warmup_is_waited_on(mesh: Mesh) -> None:
    mesh.converge(make_desired(make_app("a", 1)))
    old = set(mesh.placed("a"))
    v2 = make_desired(make_app("a", 1, version="2", rollout=Rollout(warmup_s=10)))
    for _ in range(8):  # ready after ~2 steps, then 10 s of warm-up: not switched yet
        mesh.step(v2)
    assert set(mesh.routed("a")) == old
    assert mesh.actual.rollouts["a"].phase == "warming"
    assert mesh.last.wakeup is not None


def test_newer_revision_supersedes_rollout_in_flight(mesh: Mesh) -> None:
    mesh.converge(make_desired(make_app("a", 2)))
    mesh.stall.add(make_app("a", version="2").digest)  # v2 never becomes ready
    mesh.step(make_desired(make_app("a", 2, version="2")))
    mesh.step(make_desired(make_app("a", 2, version="2")))
    assert len(mesh.digests("a")) == 4
    v3 = make_desired(make_app("a", 2, version="3"))
    mesh.step(v3)
    # v2 instances are gone at once; v1 serves, v3 starts.
    assert make_app("a", version="2").digest not in mesh.digests("a")
    mesh.converge(v3)
    assert set(mesh.digests("a")) == {make_app("a", version="3").digest}
    assert mesh.status("a") == ("Synced", "Healthy")


def test_rolling_respects_max_unavailable_and_surge(mesh: Mesh) -> None:
    ro = Rollout(strategy="rolling", max_surge=1, max_unavailable=0)
    mesh.converge(make_desired(make_app("a", 4, rollout=ro)))
    v2 = make_desired(make_app("a", 4, version="2", rollout=ro))
    for _ in range(40):
        mesh.step(v2)
        assert len(mesh.placed("a")) <= 4 + 1 + 4  # + draining ones
        route = mesh.actual.routes["a"]
        assert len(route.backends) >= 4
    assert set(mesh.digests("a")) == {make_app("a", version="2").digest}
    assert mesh.status("a") == ("Synced", "Healthy")


def test_canary_promotes_with_weights(mesh: Mesh) -> None:
    ro = Rollout(strategy="canary", canary_weight=25, warmup_s=3)
    mesh.converge(make_desired(make_app("a", 4, rollout=ro)))
    v2_digest = make_app("a", version="2").digest
    v2 = make_desired(make_app("a", 4, version="2", rollout=ro))
    shares = []
    for _ in range(30):
        mesh.step(v2)
        route = mesh.actual.routes["a"]
        total = sum(b.weight for b in route.backends)
        new = sum(b.weight for b in route.backends if v2_digest[:8] in b.instance_id)
        shares.append(round(100 * new / total))
    assert 25 in shares  # the canary got its share for a while
    assert shares[-1] == 100
    assert mesh.status("a") == ("Synced", "Healthy")


def test_canary_reverts_on_failure_and_keeps_old_serving(mesh: Mesh) -> None:
    ro = Rollout(strategy="canary", canary_weight=50, warmup_s=3)
    mesh.converge(make_desired(make_app("a", 2, rollout=ro)))
    old = set(mesh.placed("a"))
    bad = make_app("a", 2, version="2", rollout=ro)
    mesh.fail.add(bad.digest)
    mesh.converge(make_desired(bad))
    assert set(mesh.placed("a")) == old
    assert set(mesh.routed("a")) == old
    sync, health = mesh.status("a")
    assert (sync, health) == ("OutOfSync", "Degraded")
    assert "reverted" in mesh.statuses["a"].reason
    assert mesh.actual.rollouts["a"].failed == bad.digest
    # A newer commit tries again.
    mesh.converge(make_desired(make_app("a", 2, version="3", rollout=ro)))
    assert mesh.status("a") == ("Synced", "Healthy")


def test_canary_reverts_at_progress_deadline(mesh: Mesh) -> None:
    ro = Rollout(strategy="canary", progress_deadline_s=10)
    mesh.converge(make_desired(make_app("a", 2, rollout=ro)))
    slow = make_app("a", 2, version="2", rollout=ro)
    mesh.stall.add(slow.digest)
    for _ in range(15):
        mesh.step(make_desired(slow))
    assert "deadline" in mesh.statuses["a"].reason
    assert slow.digest not in mesh.digests("a")


def test_pending_when_nothing_fits_then_placed_when_room(mesh: Mesh) -> None:
    big = make_app("big", 2, nutrients=Nutrients(3000, 64))
    filler = make_app("filler", 3, nutrients=Nutrients(2000, 64))
    mesh.converge(make_desired(filler))
    mesh.converge(make_desired(filler, big))
    assert mesh.statuses["big"].health == "Degraded"
    assert "Pending: 2 instance(s) fit on no node" in mesh.statuses["big"].reason
    mesh.converge(make_desired(big))  # filler pruned: room appears
    assert mesh.status("big") == ("Synced", "Healthy")


def test_drain_moves_instances_first(mesh: Mesh) -> None:
    d = make_desired(make_app("a", 3))
    mesh.converge(d)
    on_0 = {i for i, n in mesh.placed("a").items() if n == "node-000"}
    assert on_0
    drain = replace(d, drain=frozenset({"node-000"}))
    mesh.step(drain)
    assert on_0 <= set(mesh.placed("a")), "stays until replacements are ready"
    mesh.converge(drain)
    assert "node-000" not in mesh.placed("a").values()
    assert len(mesh.routed("a")) == 3


def test_lost_node_is_replaced_without_garden_change(mesh: Mesh) -> None:
    d = make_desired(make_app("a", 3))
    mesh.converge(d)
    nodes = dict(mesh.actual.nodes)
    del nodes["node-001"]
    mesh.actual = replace(mesh.actual, nodes=nodes)
    actions = mesh.step(d)
    assert actions.intents["node-001"].instances == ()  # its intents are withdrawn
    mesh.converge(d)
    assert len(mesh.placed("a")) == 3
    assert mesh.status("a") == ("Synced", "Healthy")


def test_invalid_app_keeps_running_while_others_change(mesh: Mesh) -> None:
    mesh.converge(make_desired(make_app("a", 2), make_app("b", 1), revision="r1"))
    a_before = mesh.placed("a")
    broken = Desired(
        apps={"b": make_app("b", 2, version="2")},
        invalid={"a": "a.yaml:3:5: unknown field replicas (did you mean instances?)"},
        revision="r2",
    )
    mesh.converge(broken)
    assert mesh.placed("a") == a_before
    assert mesh.statuses["a"].sync == "InvalidSpec"
    assert mesh.statuses["a"].revision == "r1"
    assert "replicas" in mesh.statuses["a"].reason
    assert mesh.status("b") == ("Synced", "Healthy")
    # Its manifest removed while invalid: now it is pruned.
    mesh.converge(make_desired(make_app("b", 2, version="2"), revision="r3"))
    assert mesh.placed("a") == {}


def test_prune_and_empty_garden(mesh: Mesh) -> None:
    mesh.converge(make_desired(make_app("a", 2), make_app("b", 1)))
    mesh.converge(Desired(revision="r-empty"))
    assert len(mesh.placed()) == 3, "an empty garden prunes nothing"
    assert "allow-empty" in mesh.statuses["a"].reason
    mesh.converge(Desired(revision="r-empty", invalid={"x.yaml": "bad yaml"}))
    assert len(mesh.placed()) == 3, "an unparsable file blocks prune"
    mesh.converge(make_desired(make_app("b", 1)))
    assert set(mesh.placed()) == set(mesh.placed("b"))
    assert "a" not in mesh.actual.routes
    assert "a" not in mesh.statuses
    mesh.converge(Desired(revision="r-empty", allow_empty=True))
    assert mesh.placed() == {}
    assert mesh.actual.routes == {}


def test_suspend_freezes(mesh: Mesh) -> None:
    mesh.converge(make_desired(make_app("a", 2)))
    before = mesh.placed("a")
    mesh.converge(make_desired(make_app("a", 5, version="2", suspend=True)))
    assert mesh.placed("a") == before
    assert mesh.statuses["a"].health == "Suspended"
    d = make_desired(make_app("a", 5, version="2"))
    mesh.converge(replace(d, suspended=frozenset({"a"})))
    assert mesh.placed("a") == before
    mesh.converge(d)
    assert len(mesh.placed("a")) == 5


def test_depends_on_waits_for_healthy(mesh: Mesh) -> None:
    d = make_desired(make_app("web", 1, depends_on=("db",)), make_app("db", 1))
    mesh.stall.add(make_app("db").digest)
    for _ in range(5):
        mesh.step(d)
    assert mesh.placed("web") == {}
    assert "waiting for dependencies: db" in mesh.statuses["web"].reason
    mesh.stall.clear()
    mesh.converge(d)
    assert mesh.status("web") == ("Synced", "Healthy")
    assert topo_order({"web": ["db"], "db": [], "x": ["y"], "y": ["x"]}) == ["db", "web", "x", "y"]


def test_takeover_by_a_new_epoch_republishes_and_moves_nothing(mesh: Mesh) -> None:
    d = make_desired(make_app("a", 3), make_app("b", 2))
    mesh.converge(d)
    before = mesh.placed()
    mesh.actual = replace(mesh.actual, epoch=2)
    mesh.planner = Planner()  # a different reconciler process
    actions = mesh.plan(d)
    assert all(rec.epoch == 2 for rec in actions.intents.values())
    assert all(r is not None and r.epoch == 2 for r in actions.routes.values())
    assert mesh.placed() == before
    assert mesh.plan(d).empty


def test_restart_mid_rollout_finishes_from_the_fabric(mesh: Mesh) -> None:
    mesh.converge(make_desired(make_app("a", 2)))
    v2 = make_desired(make_app("a", 2, version="2", rollout=Rollout(warmup_s=4)))
    for _ in range(3):
        mesh.step(v2)
    # The route record on the fabric carries the rollout state: round-trip it as JSON.
    wire = json.loads(json.dumps(route_json(mesh.actual.routes["a"], mesh.actual.rollouts["a"])))
    route, state = parse_route(wire)
    assert state == mesh.actual.rollouts["a"]
    assert state.target
    assert route == mesh.actual.routes["a"]
    mesh.planner = Planner()
    mesh.converge(v2)
    assert set(mesh.digests("a")) == {make_app("a", version="2").digest}


def test_converged_plans_nothing_and_plan_function_matches() -> None:
    d = make_desired(make_app("a", 2))
    actions, statuses = plan(d, Actual(nodes=make_nodes(2), epoch=3), 0.0)
    assert len(actions.intents) == 2
    assert statuses["a"].sync == "Synced"
    assert RolloutState.from_json(actions.rollouts["a"].to_json()) == actions.rollouts["a"]  # type: ignore[union-attr]


def test_canary_passes_through_its_steps(mesh: Mesh) -> None:
    ro = Rollout(strategy="canary", canary_steps=(10, 50), warmup_s=2)
    mesh.converge(make_desired(make_app("a", 4, rollout=ro)))
    v2 = make_app("a", 4, version="2", rollout=ro)
    shares = []
    for _ in range(30):
        mesh.step(make_desired(v2))
        route = mesh.actual.routes["a"]
        total = sum(b.weight for b in route.backends)
        new = sum(b.weight for b in route.backends if v2.digest[:8] in b.instance_id)
        shares.append(round(100 * new / total))
    steps = [s for i, s in enumerate(shares) if i == 0 or s != shares[i - 1]]
    assert steps == [0, 10, 50, 100]
    assert mesh.status("a") == ("Synced", "Healthy")
