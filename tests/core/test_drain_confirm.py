"""A draining instance withers only once every live edge serves a route without it.

The drain time alone is a guess about how fast a route change reaches the edges; under
loss, a partition healing or a starved CPU the guess is wrong, and an edge that still has
the old table sends requests to an instance that is gone (502). The edges report the route
generation they serve (``edge/routes``); the planner waits for it, within a bound.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.core.model import Actual, PlanConfig
from reconciler.core.plan import Planner
from reconciler.core.sim import make_app, make_desired, make_nodes
from reconciler.model import Rollout

from .conftest import Mesh

V1 = make_desired(make_app("a", 2))
V2 = make_desired(make_app("a", 2, version="2", rollout=Rollout(warmup_s=0)), revision="r2")


def _mesh(drain_s: float = 2.0, confirm_s: float = 30.0) -> Mesh:
    cfg = PlanConfig(drain_s=drain_s, drain_confirm_s=confirm_s)
    return Mesh(actual=Actual(nodes=make_nodes(3), epoch=1), planner=Planner(cfg))


def _switch(mesh: Mesh, edges: dict[str, int] | None) -> set[str]:
    """Converge on v1, then step v2 until the route no longer lists the old set; the edges
    (name -> generation they serve) are frozen at v1's route when given. Returns the old set."""
    mesh.converge(V1)
    old = set(mesh.placed("a"))
    generation = mesh.actual.routes["a"].generation
    if edges is not None:
        mesh.actual = replace(mesh.actual, edge_routes={e: {"a": generation} for e in edges})
    for _ in range(30):
        mesh.step(V2, dt=0.5)
        if not set(mesh.routed("a")) & old:
            return old
    raise AssertionError("the route never switched to the new set")


def _serve_current(mesh: Mesh, *edges: str) -> None:
    gen = mesh.actual.routes["a"].generation
    table = {e: dict(apps) for e, apps in mesh.actual.edge_routes.items()}
    for e in edges:
        table[e] = {"a": gen}
    mesh.actual = replace(mesh.actual, edge_routes=table)


def test_with_no_edge_reporting_the_drain_time_alone_decides() -> None:
    mesh = _mesh()
    old = _switch(mesh, edges=None)
    for _ in range(6):  # 3 s > drain_s
        mesh.step(V2, dt=0.5)
    assert not old & set(mesh.placed("a"))


def test_an_edge_still_serving_the_old_route_keeps_the_old_set_alive() -> None:
    mesh = _mesh(drain_s=2.0, confirm_s=30.0)
    old = _switch(mesh, edges={"edge-1": 0})
    for _ in range(20):  # 10 s: well past drain_s, well before drain_confirm_s
        mesh.step(V2, dt=0.5)
        assert old <= set(mesh.placed("a")), "withered while an edge may still send to it"
        assert mesh.last.wakeup is not None, "the planner must look again"
    _serve_current(mesh, "edge-1")
    mesh.step(V2, dt=0.5)
    assert not old & set(mesh.placed("a"))


def test_every_edge_must_confirm_not_just_one() -> None:
    mesh = _mesh()
    old = _switch(mesh, edges={"edge-1": 0, "edge-2": 0})
    for _ in range(8):
        mesh.step(V2, dt=0.5)
    _serve_current(mesh, "edge-1")
    for _ in range(4):
        mesh.step(V2, dt=0.5)
    assert old <= set(mesh.placed("a"))
    _serve_current(mesh, "edge-2")
    mesh.step(V2, dt=0.5)
    assert not old & set(mesh.placed("a"))


def test_an_edge_that_never_confirms_delays_the_wither_by_at_most_the_bound() -> None:
    mesh = _mesh(drain_s=2.0, confirm_s=6.0)
    old = _switch(mesh, edges={"edge-1": 0})
    switched_at = mesh.now
    while old & set(mesh.placed("a")):
        mesh.step(V2, dt=0.5)
        assert mesh.now - switched_at <= 6.0 + 1.5, "the bound was not kept"
    assert mesh.now - switched_at >= 6.0 - 1.0, "withered before the bound with no confirmation"


@pytest.mark.parametrize("steps", [1, 5])
def test_the_generation_grows_only_when_the_route_changes(steps: int) -> None:
    mesh = _mesh()
    mesh.converge(V1)
    before = mesh.actual.routes["a"]
    for _ in range(steps):
        mesh.step(V1)
    assert mesh.actual.routes["a"] == before  # same content, same generation
    _switch(mesh, edges=None)
    assert mesh.actual.routes["a"].generation > before.generation


def test_the_generation_survives_the_fabric_round_trip() -> None:
    from reconciler.core.model import parse_route, route_json

    mesh = _mesh()
    mesh.converge(V1)
    route = mesh.actual.routes["a"]
    assert route.generation >= 1
    back, _ = parse_route(route_json(route, mesh.actual.rollouts.get("a")))
    assert back.generation == route.generation
