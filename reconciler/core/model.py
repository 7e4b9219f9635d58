"""The plain data the plan works on: what should be, what is, and what to publish.

Everything here is frozen and free of I/O. The drivers build :class:`Desired` from the
garden (plus the digests of the spores they built) and :class:`Actual` from the fabric,
call :func:`reconciler.core.plan.plan`, publish :class:`Actions`, and fold them back into
their :class:`Actual` with :meth:`Actual.apply`.

Rollout progress lives in :class:`RolloutState`, one per app, published next to the app's
route (``routes/<app>`` carries it under the extra key ``"rollout"``) so that a reconciler
that takes over, or restarts, continues a rollout from the fabric alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from reconciler.errors import PlanError
from reconciler.model import AppSpec
from reconciler.records import (
    AppStatus,
    InstanceRecord,
    IntentInstance,
    IntentRecord,
    NodeRecord,
    Nutrients,
    RouteRecord,
)

# Status vocabulary (Argo CD / Flux users know these words).
SYNCED, OUT_OF_SYNC, INVALID_SPEC = "Synced", "OutOfSync", "InvalidSpec"
HEALTHY, PROGRESSING, DEGRADED, SUSPENDED, MISSING = (
    "Healthy",
    "Progressing",
    "Degraded",
    "Suspended",
    "Missing",
)

# Rollout phases kept in RolloutState.phase.
IDLE = "idle"
STARTING = "starting"  # blue-green / canary: the new set is being started
WARMING = "warming"  # blue-green: the new set is ready, waiting warmup_s
ROLLING = "rolling"  # rolling: replacing instances a few at a time
CANARY = "canary"  # canary: holding step `step` since `since`
PROMOTING = "promoting"  # canary passed: scaling the new set up to full size


@dataclass(frozen=True)
class PlanConfig:
    """Knobs of the planner that are not per app."""

    drain_s: float = 2.0  # a retired instance stays routed-as-draining this long, then withers
    #: ... and longer, until every live edge serves a route that lists it as draining, but
    #: never longer than this after it was retired (an edge that never confirms cannot keep
    #: an old instance alive for ever)
    drain_confirm_s: float = 30.0
    hold_s: float = 30.0  # an app that scales to zero: how long the edge holds a request
    agent_role: str = "agent"


@dataclass(frozen=True)
class DesiredApp:
    """One valid app of the garden and the digest of its spore ("" while not built yet).

    ``platform`` is the one its spore was built for (its manifest's ``build.platform``):
    placed only on nodes whose record lists it; "" or ``"any"`` runs on every node.
    """

    spec: AppSpec
    digest: str = ""
    platform: str = ""


@dataclass(frozen=True)
class Desired:
    apps: Mapping[str, DesiredApp] = field(default_factory=dict)
    invalid: Mapping[str, str] = field(default_factory=dict)  # app name or file -> first error
    #: app -> the installer's last lines, for every app whose spore build failed ("": none ran)
    build_logs: Mapping[str, str] = field(default_factory=dict)
    revision: str = ""
    fetch_urls: tuple[str, ...] = ()  # base URLs serving GET {url}/spores/{digest}
    allow_empty: bool = False
    drain: frozenset[str] = frozenset()  # nodes to empty (besides those flagged draining)
    suspended: frozenset[str] = frozenset()  # apps frozen from the CLI (myco suspend)
    capacity: Mapping[str, Nutrients] = field(default_factory=dict)  # per-node override


@dataclass(frozen=True)
class RolloutState:
    """Where an app's rollout stands; derivable from the fabric (published with the route)."""

    stable: str = ""  # digest the route serves
    target: str = ""  # digest being rolled out ("" when idle)
    phase: str = IDLE
    since: float = 0.0  # when the current phase or canary step began
    started: float = 0.0  # when the rollout began (progress deadline)
    step: int = 0  # canary step index
    failed: str = ""  # a target that was reverted: not retried until the digest changes
    reason: str = ""  # why it was reverted / is stuck
    revision: str = ""  # garden revision of the spec being served or rolled out
    next_seq: int = 0  # instance ids are <app>-<digest8>-<seq>, seq never reused
    retiring: tuple[tuple[str, float], ...] = ()  # (instance id, wither at)
    platform: str = ""  # the platform the stable spore was built for ("" or "any": every node)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stable": self.stable,
            "target": self.target,
            "phase": self.phase,
            "since": self.since,
            "started": self.started,
            "step": self.step,
            "failed": self.failed,
            "reason": self.reason,
            "revision": self.revision,
            "next_seq": self.next_seq,
            "retiring": [[iid, until] for iid, until in self.retiring],
        }
        if self.platform:  # only when set: states of apps without builds stay as they were
            out["platform"] = self.platform
        return out

    @classmethod
    def from_json(cls, data: object) -> RolloutState:
        if not isinstance(data, dict):
            raise PlanError(f"rollout state: expected an object, got {type(data).__name__}")
        try:
            retiring = tuple((str(i), float(u)) for i, u in data.get("retiring", ()))
            return cls(
                stable=str(data.get("stable", "")),
                target=str(data.get("target", "")),
                phase=str(data.get("phase", IDLE)),
                since=float(data.get("since", 0.0)),
                started=float(data.get("started", 0.0)),
                step=int(data.get("step", 0)),
                failed=str(data.get("failed", "")),
                reason=str(data.get("reason", "")),
                revision=str(data.get("revision", "")),
                next_seq=int(data.get("next_seq", 0)),
                retiring=retiring,
                platform=str(data.get("platform", "")),
            )
        except (TypeError, ValueError) as exc:
            raise PlanError(f"rollout state: {exc}") from exc


@dataclass(frozen=True)
class Status(AppStatus):
    """An app's status plus the garden revision it refers to."""

    revision: str = ""


class Placement(NamedTuple):
    node: str
    inst: IntentInstance


@dataclass(frozen=True)
class Actual:
    """What the fabric says: live nodes, instance reports, and the reconciler's own records."""

    nodes: Mapping[str, NodeRecord] = field(default_factory=dict)  # alive members only
    instances: Mapping[str, InstanceRecord] = field(default_factory=dict)
    intents: Mapping[str, IntentRecord] = field(default_factory=dict)  # node -> record
    routes: Mapping[str, RouteRecord] = field(default_factory=dict)
    rollouts: Mapping[str, RolloutState] = field(default_factory=dict)
    epoch: int = 0
    #: live edge member -> app -> the route generation it serves (``EdgeRoutesRecord``)
    edge_routes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def served_generation(self, app: str) -> int | None:
        """The oldest route generation of ``app`` a live edge serves (0: an edge that has
        none yet), or None when no edge reports."""
        if not self.edge_routes:
            return None
        return min(apps.get(app, 0) for apps in self.edge_routes.values())

    def apply(self, actions: Actions) -> Actual:
        """This state with ``actions`` published (what the fabric shows once they spread)."""
        intents = dict(self.intents)
        intents.update(actions.intents)
        routes = dict(self.routes)
        for app, route in actions.routes.items():
            if route is None:
                routes.pop(app, None)
            else:
                routes[app] = route
        rollouts = dict(self.rollouts)
        for app, state in actions.rollouts.items():
            if state is None:
                rollouts.pop(app, None)
            else:
                rollouts[app] = state
        return replace(self, intents=intents, routes=routes, rollouts=rollouts)


@dataclass(frozen=True)
class Actions:
    """Whole records to publish (level-triggered); only those that differ. None = delete."""

    intents: Mapping[str, IntentRecord] = field(default_factory=dict)  # never deleted
    routes: Mapping[str, RouteRecord | None] = field(default_factory=dict)
    rollouts: Mapping[str, RolloutState | None] = field(default_factory=dict)
    wakeup: float | None = None  # plan again at this time even if nothing changes

    @property
    def empty(self) -> bool:
        return not (self.intents or self.routes or self.rollouts)

    def summary(self) -> str:
        return (
            f"{len(self.intents)} intent record(s), {len(self.routes)} route(s), "
            f"{len(self.rollouts)} rollout state(s)"
        )


def route_json(route: RouteRecord, state: RolloutState | None) -> dict[str, Any]:
    """The JSON published under ``routes/<app>``: the route plus its rollout state."""
    out = route.to_json()
    if state is not None:
        out["rollout"] = state.to_json()
    return out


def parse_route(value: object) -> tuple[RouteRecord, RolloutState | None]:
    """The inverse of :func:`route_json` (raises FabricError / PlanError on bad data)."""
    # The core keeps the rollout state beside the route, not inside it.
    route = dataclasses.replace(RouteRecord.from_json(value), rollout={})
    state = None
    if isinstance(value, dict) and value.get("rollout"):
        state = RolloutState.from_json(value["rollout"])
    return route, state
