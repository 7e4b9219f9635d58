"""Placement by platform: a spore built for P runs only on nodes whose record lists P."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.ledger import Ledger
from reconciler.core.model import Actual, Desired, RolloutState
from reconciler.core.sim import make_app, make_desired, make_nodes
from reconciler.model import Rollout
from reconciler.records import NodeRecord, Nutrients

from .conftest import Mesh

CP311 = "cp311-manylinux_x86_64"
CP312 = "cp312-manylinux_aarch64"
NODE20 = "node20-linux_x64"


def nodes(*tags: tuple[str, ...]) -> dict[str, NodeRecord]:
    """node-000, node-001, ... running these tags (each node also runs "any")."""
    base = make_nodes(len(tags))
    return {
        n: replace(rec, platforms=(*t, "any"))
        for (n, rec), t in zip(base.items(), tags, strict=True)
    }


def mesh_of(*tags: tuple[str, ...]) -> Mesh:
    return Mesh(actual=Actual(nodes=nodes(*tags), epoch=1))


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        (CP311, {"node-000", "node-002"}),  # the two that run CPython 3.11 on x86_64
        (NODE20, {"node-001", "node-002"}),
        ("any", {"node-000", "node-001", "node-002", "node-003"}),
        ("", {"node-000", "node-001", "node-002", "node-003"}),  # no build: anywhere
    ],
)
def test_instances_go_only_to_nodes_that_run_the_platform(
    platform: str, expected: set[str]
) -> None:
    mesh = mesh_of((CP311,), (NODE20,), (CP311, NODE20), ())
    desired = make_desired(make_app("a", 4, platform=platform))
    mesh.converge(desired)
    assert set(mesh.placed("a").values()) == expected
    assert len(mesh.placed("a")) == 4
    assert mesh.status("a") == ("Synced", "Healthy")


def test_no_node_runs_the_platform_leaves_the_app_pending_with_the_reason() -> None:
    mesh = mesh_of((CP311,), (NODE20,))
    desired = make_desired(make_app("a", 2, platform=CP312), make_app("b", 1))
    for _ in range(5):
        mesh.step(desired)
    assert mesh.placed("a") == {}
    assert mesh.statuses["a"].reason == f"Pending: no node matches platform {CP312}"
    assert mesh.statuses["a"].health == "Degraded"
    assert mesh.status("b") == ("Synced", "Healthy")  # the others go on


def test_a_full_matching_node_says_it_is_full_not_that_nothing_matches() -> None:
    mesh = mesh_of((CP311,), ())
    desired = make_desired(make_app("a", 1, platform=CP311, nutrients=Nutrients(9000, 64)))
    mesh.step(desired)
    assert mesh.statuses["a"].reason.startswith("Pending: 1 instance(s) fit on no node")


def test_a_node_that_starts_running_the_platform_gets_the_pending_instances() -> None:
    mesh = mesh_of((NODE20,), ())
    desired = make_desired(make_app("a", 2, platform=CP311))
    mesh.step(desired)
    assert mesh.placed("a") == {}
    joined = replace(mesh.actual.nodes["node-001"], platforms=(CP311, "any"))
    mesh.actual = replace(mesh.actual, nodes={**mesh.actual.nodes, "node-001": joined})
    mesh.converge(desired)
    assert set(mesh.placed("a").values()) == {"node-001"}
    assert mesh.status("a") == ("Synced", "Healthy")


def test_instances_move_off_a_node_that_no_longer_runs_the_platform() -> None:
    mesh = mesh_of((CP311,), (CP311,))
    desired = make_desired(make_app("a", 2, platform=CP311))
    mesh.converge(desired)
    assert set(mesh.placed("a").values()) == {"node-000", "node-001"}
    # node-000's python3 became 3.12: what runs there keeps serving until replaced
    upgraded = replace(mesh.actual.nodes["node-000"], platforms=("cp312-manylinux_x86_64", "any"))
    mesh.actual = replace(mesh.actual, nodes={**mesh.actual.nodes, "node-000": upgraded})
    mesh.converge(desired)
    assert set(mesh.placed("a").values()) == {"node-001"}
    assert len(mesh.placed("a")) == 2
    assert mesh.status("a") == ("Synced", "Healthy")


@pytest.mark.parametrize("strategy", ["blue-green", "rolling", "canary"])
def test_a_rollout_to_another_platform_places_each_set_on_its_own_nodes(strategy: str) -> None:
    mesh = mesh_of((CP311,), (CP311,), (CP312,), (CP312,))
    ro = Rollout(strategy=strategy, warmup_s=1)  # type: ignore[arg-type]
    v1 = make_desired(make_app("a", 2, rollout=ro, platform=CP311))
    mesh.converge(v1)
    assert mesh.actual.rollouts["a"].platform == CP311
    v2 = make_desired(make_app("a", 2, version="2", rollout=ro, platform=CP312))
    for _ in range(40):
        mesh.step(v2)
        for node, rec in mesh.actual.intents.items():
            for inst in rec.instances:
                want = CP312 if inst.digest == v2.apps["a"].digest else CP311
                assert want in mesh.actual.nodes[node].platforms, (inst.instance_id, node)
    mesh.converge(v2)
    assert set(mesh.placed("a").values()) == {"node-002", "node-003"}
    assert mesh.actual.rollouts["a"].platform == CP312


def test_the_stable_set_is_replaced_on_its_own_platform_during_a_rollout() -> None:
    mesh = mesh_of((CP311,), (CP311,), (CP311,), (CP312,), (CP312,))
    ro = Rollout(strategy="blue-green", warmup_s=100)
    v1 = make_desired(make_app("a", 2, rollout=ro, platform=CP311))
    mesh.converge(v1)
    old = v1.apps["a"].digest
    v2 = make_desired(make_app("a", 2, version="2", rollout=ro, platform=CP312))
    mesh.step(v2)
    # a node of the stable set dies mid-rollout: its replacement needs CPython 3.11 too
    dead = sorted(mesh.placed("a").values())[0]
    mesh.actual = replace(
        mesh.actual, nodes={n: r for n, r in mesh.actual.nodes.items() if n != dead}
    )
    for _ in range(3):
        mesh.step(v2)
    assert mesh.actual.rollouts["a"].stable == old  # still rolling out, old set serving
    stable_nodes = [
        node
        for node, rec in mesh.actual.intents.items()
        for inst in rec.instances
        if inst.digest == old
    ]
    assert len(stable_nodes) == 2
    assert all(CP311 in mesh.actual.nodes[n].platforms for n in stable_nodes)


def test_rollout_state_keeps_the_platform_and_omits_it_when_unset() -> None:
    state = RolloutState(stable="d" * 16, platform=CP311)
    assert RolloutState.from_json(state.to_json()) == state
    assert "platform" not in RolloutState(stable="d" * 16).to_json()
    assert RolloutState.from_json(RolloutState().to_json()).platform == ""


def test_ledger_eligible_for_a_platform() -> None:
    ledger = Ledger(
        {"a": Nutrients(1000, 100), "b": Nutrients(1000, 100), "c": Nutrients(1000, 100)},
        eligible=("a", "b"),  # c is draining
        platforms={"a": (CP311, "any"), "b": ("any",), "c": (CP311, "any")},
    )
    assert ledger.eligible_for(CP311) == {"a"}
    assert ledger.eligible_for("any") == ledger.eligible_for("") == {"a", "b"}
    assert ledger.place(Nutrients(100, 10), 3, {}, platform=CP311) == ["a", "a", "a"]
    assert ledger.place(Nutrients(100, 10), 1, {}, platform=NODE20) == []


TAGS = (CP311, CP312, NODE20)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    node_tags=st.lists(st.sets(st.sampled_from(TAGS)), min_size=1, max_size=4),
    apps=st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from(("", "any", *TAGS))), min_size=1, max_size=4
    ),
    moves=st.lists(st.tuples(st.integers(0, 3), st.sets(st.sampled_from(TAGS))), max_size=2),
)
def test_never_placed_on_a_node_lacking_the_platform(
    node_tags: list[set[str]],
    apps: list[tuple[int, str]],
    moves: list[tuple[int, set[str]]],
) -> None:
    mesh = mesh_of(*(tuple(sorted(t)) for t in node_tags))
    desired: Desired = make_desired(
        *(make_app(f"app{i}", n, platform=p) for i, (n, p) in enumerate(apps))
    )
    platform_of = {name: app.platform for name, app in desired.apps.items()}

    def runs(app: str, node: str) -> bool:
        p = platform_of[app]
        return p in ("", "any") or p in mesh.actual.nodes[node].platforms

    seen: set[str] = set()

    def check_new_placements() -> None:
        for node, rec in mesh.actual.intents.items():
            for inst in rec.instances:
                if inst.instance_id not in seen:
                    assert runs(inst.app, node), (inst.instance_id, node)
                    seen.add(inst.instance_id)

    for _ in range(8):
        mesh.step(desired)
        check_new_placements()
    for index, tags in moves:  # a node's python3 or node changes under running instances
        name = f"node-{index % len(node_tags):03d}"
        rec = replace(mesh.actual.nodes[name], platforms=(*sorted(tags), "any"))
        mesh.actual = replace(mesh.actual, nodes={**mesh.actual.nodes, name: rec})
    for _ in range(12):
        mesh.step(desired)
        check_new_placements()
    mesh.converge(desired)
    check_new_placements()
    # Converged: an instance stays where its platform is gone only while no node runs it
    # (it keeps serving; the app says why it cannot be replaced).
    served = {t for rec in mesh.actual.nodes.values() for t in rec.platforms}
    for node, intent in mesh.actual.intents.items():
        for inst in intent.instances:
            assert runs(inst.app, node) or platform_of[inst.app] not in served
    for name, app in desired.apps.items():
        wanted = app.spec.deployment.instances
        if wanted and app.platform not in ("", "any") and app.platform not in served:
            assert mesh.statuses[name].reason == f"Pending: no node matches platform {app.platform}"
