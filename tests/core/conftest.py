"""Helpers for the plan tests: drive the pure core against the simulated agents."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from reconciler.core.model import Actions, Actual, Desired, Status
from reconciler.core.plan import Planner, plan
from reconciler.core.sim import agents_step, make_nodes


@dataclass
class Mesh:
    """A planner, the state it sees, and a clock that tests advance by hand."""

    actual: Actual
    planner: Planner = field(default_factory=Planner)
    now: float = 0.0
    fail: set[str] = field(default_factory=set)
    stall: set[str] = field(default_factory=set)
    statuses: dict[str, Status] = field(default_factory=dict)
    last: Actions = field(default_factory=Actions)
    cross_check: bool = True

    def plan(self, desired: Desired) -> Actions:
        actions, self.statuses = self.planner.plan(desired, self.actual, self.now)
        if self.cross_check:  # the incremental plan equals a plan from scratch
            full, statuses = plan(desired, self.actual, self.now, self.planner.config)
            assert (full.intents, full.routes, full.rollouts) == (
                actions.intents,
                actions.routes,
                actions.rollouts,
            )
            assert statuses == self.statuses
        self.actual = self.actual.apply(actions)
        self.last = actions
        return actions

    def step(self, desired: Desired, dt: float = 1.0) -> Actions:
        """Plan, publish, let the agents work, advance the clock."""
        actions = self.plan(desired)
        self.actual = agents_step(self.actual, self.now, fail=self.fail, stall=self.stall)
        self.now += dt
        return actions

    def converge(self, desired: Desired, limit: int = 60) -> int:
        """Step until two plans in a row change nothing and wait for nothing."""
        quiet = 0
        for i in range(limit):
            actions = self.step(desired)
            if actions.empty and actions.wakeup is None:
                quiet += 1
                if quiet >= 2:
                    return i
            else:
                quiet = 0
        raise AssertionError(f"no convergence in {limit} steps: {self.statuses}")

    def placed(self, app: str | None = None) -> dict[str, str]:
        """instance id -> node, from the published intents."""
        return {
            i.instance_id: node
            for node, rec in self.actual.intents.items()
            for i in rec.instances
            if app is None or i.app == app
        }

    def digests(self, app: str) -> list[str]:
        return sorted(
            i.digest for rec in self.actual.intents.values() for i in rec.instances if i.app == app
        )

    def routed(self, app: str) -> list[str]:
        route = self.actual.routes.get(app)
        return [b.instance_id for b in route.backends] if route else []

    def status(self, app: str) -> tuple[str, str]:
        s = self.statuses[app]
        return s.sync, s.health


@pytest.fixture
def mesh() -> Mesh:
    return Mesh(actual=Actual(nodes=make_nodes(3), epoch=1))
