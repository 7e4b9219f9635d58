"""The pure core of the reconciler: desired state + actual state + the time -> the plan.

Public API (see docs/reconciler.md)::

    Planner(config).plan(desired, actual, now) -> (Actions, {app: Status})
    reconciler.core.plan.plan(desired, actual, now, config=None)   # the same, one-shot
    Desired, DesiredApp, Actual, Actions, Status, RolloutState, PlanConfig   # its values

Pure: no I/O library, no clock, no randomness (the time is an argument); it imports only
:mod:`reconciler.records`, :mod:`reconciler.model`, :mod:`reconciler.addr` and
:mod:`reconciler.errors`, which ``tests/test_layers.py`` checks. :mod:`.sim` is a pure
stand-in for the agents, to drive the plan in tests and benchmarks (in :mod:`reconciler.testing`).

The function ``plan`` is not re-exported: ``reconciler.core.plan`` is its module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.lazy import lazy_exports

if TYPE_CHECKING:
    from reconciler.core.model import (
        Actions,
        Actual,
        Desired,
        DesiredApp,
        PlanConfig,
        RolloutState,
        Status,
    )
    from reconciler.core.plan import Planner, topo_order

_LAZY = {
    "Actions": "reconciler.core.model",
    "Actual": "reconciler.core.model",
    "Desired": "reconciler.core.model",
    "DesiredApp": "reconciler.core.model",
    "PlanConfig": "reconciler.core.model",
    "RolloutState": "reconciler.core.model",
    "Status": "reconciler.core.model",
    "Planner": "reconciler.core.plan",
    "topo_order": "reconciler.core.plan",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "Actions",
    "Actual",
    "Desired",
    "DesiredApp",
    "PlanConfig",
    "Planner",
    "RolloutState",
    "Status",
    "topo_order",
]
