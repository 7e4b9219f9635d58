"""Table tests: every combination of what the garden asks and what the instance reports."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.core.model import Desired
from reconciler.core.sim import make_app, make_desired
from reconciler.records import PHASES

from .conftest import Mesh

# What the garden asks after the app ran converged at version 1 with 2 instances.
DESIRED = {
    "same": lambda: make_desired(make_app("a", 2)),
    "scale-up": lambda: make_desired(make_app("a", 3)),
    "scale-down": lambda: make_desired(make_app("a", 1)),
    "new-version": lambda: make_desired(make_app("a", 2, version="2")),
    "removed": lambda: make_desired(make_app("other", 1)),
    "invalid": lambda: Desired(apps={}, invalid={"a": "spec.instances: -1 < 0"}, revision="r2"),
    "suspended": lambda: make_desired(make_app("a", 3, version="2", suspend=True)),
    "not-built": lambda: make_desired(make_app("a", 2, version="2", digest="")),
}

# (desired, reported phase of both instances) -> (sync, health, intents change?, route change?)
# "none" as a phase: the agent has not reported the instance at all.
PHASE_HEALTH = {
    "ready": "Healthy",
    "none": "Progressing",
    "fetching": "Progressing",
    "starting": "Progressing",
    "draining": "Progressing",
    "exited": "Progressing",
    "failed": "Degraded",
}


def expected(kind: str, phase: str) -> tuple[str, str, bool]:
    """(sync, health, do the intents change?)"""
    ready = phase == "ready"
    if kind == "same":
        return "Synced", PHASE_HEALTH[phase], False
    if kind == "scale-up":
        return "Synced", "Degraded" if phase == "failed" else "Progressing", True
    if kind == "scale-down":
        # A ready one that is routed drains first (intents keep it for drain_s).
        health = {"ready": "Progressing", "failed": "Degraded"}.get(phase, "Progressing")
        return "OutOfSync" if ready else "Synced", health, not ready
    if kind == "new-version":
        # Blue-green: the new set starts beside the old one, whatever the old one does.
        return "OutOfSync", "Degraded" if phase == "failed" else "Progressing", True
    if kind == "removed":
        return "", "", not ready  # ready ones drain first; others wither at once
    if kind == "invalid":
        health = PHASE_HEALTH[phase]
        return "InvalidSpec", health if phase != "none" else "Progressing", False
    if kind == "suspended":
        return "OutOfSync", "Suspended", False
    if kind == "not-built":
        return "OutOfSync", PHASE_HEALTH[phase], False
    raise AssertionError(kind)


@pytest.mark.parametrize("phase", [*PHASES, "none"])
@pytest.mark.parametrize("kind", list(DESIRED))
def test_desired_by_phase(mesh: Mesh, kind: str, phase: str) -> None:
    mesh.converge(make_desired(make_app("a", 2)))
    before = dict(mesh.placed("a"))
    assert len(before) == 2
    # Every instance now reports `phase` (or nothing).
    instances = dict(mesh.actual.instances)
    for iid in before:
        if phase == "none":
            instances.pop(iid)
        else:
            instances[iid] = replace(instances[iid], phase=phase)  # type: ignore[arg-type]
    mesh.actual = replace(mesh.actual, instances=instances)

    actions = mesh.plan(DESIRED[kind]())
    sync, health, changes = expected(kind, phase)
    if kind == "removed":
        assert "a" not in mesh.statuses or mesh.statuses["a"].reason.startswith("pruning")
    else:
        assert mesh.status("a") == (sync, health), mesh.statuses["a"]
    after = mesh.placed("a")
    assert (after != before) == changes, actions.intents
    # Healthy instances are never moved: whatever stays, stays on its node.
    for iid, node in after.items():
        if iid in before:
            assert node == before[iid]
