"""The pure plan: desired state + actual state + the time → records to publish + statuses.

``plan(desired, actual, now)`` is the whole contract. :class:`Planner` is the same function
with a memory of its previous call, so that a re-plan costs time in proportion to what
changed, not to the mesh. Records are frozen, so an unchanged record is the very same
object as last time: the planner finds the apps whose spec, instance reports, route or
intents changed by identity, and re-plans those, the apps whose timers are due, the apps
with pending instances, and the dependents of apps whose health changed. Anything that
concerns every app (the lease epoch, the set of live or eligible nodes, their capacity,
prune permission) makes it plan everything. The result is the same as a full plan (a
property the tests check); ``full=True`` forces one.

Drivers must therefore hand in *new* objects for what changed and never mutate a mapping
they handed in before.

Apps are planned in ``depends_on`` order, so an app sees its dependencies' health of the
same plan. The nutrient ledger is shared by all apps of one plan.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from reconciler.core.ledger import Ledger
from reconciler.core.model import (
    HEALTHY,
    Actions,
    Actual,
    Desired,
    Placement,
    PlanConfig,
    RolloutState,
    Status,
)
from reconciler.core.rollout import AppInput, Mode, plan_app
from reconciler.records import IntentInstance, IntentRecord, Nutrients, RouteRecord


@dataclass
class _NodeIndex:
    record: IntentRecord
    by_app: dict[str, tuple[IntentInstance, ...]]
    used: Nutrients


@dataclass
class _Memo:
    status: Status | None
    wakeup: float | None
    pending: bool = False  # some instances fit nowhere: re-planned whenever anything runs


@dataclass(frozen=True)
class _Env:
    epoch: int
    alive: frozenset[str]
    eligible: frozenset[str]
    prune_allowed: bool
    empty: bool
    drain: frozenset[str]
    suspended: frozenset[str]
    capacity: tuple[tuple[str, Nutrients], ...]
    platforms: tuple[tuple[str, tuple[str, ...]], ...]  # what each live node runs


@dataclass
class _Assembly:
    """Per-node changes collected while apps are planned."""

    changes: dict[str, dict[str, tuple[IntentInstance, ...]]] = field(default_factory=dict)

    def set(self, node: str, app: str, insts: tuple[IntentInstance, ...]) -> None:
        self.changes.setdefault(node, {})[app] = insts


def _diff_identity(
    seen: dict[str, object], now: Mapping[str, object], app_of: Callable[[str, object], str]
) -> set[str]:
    """Apps of entries added, replaced or removed since ``seen``; updates ``seen``."""
    out: set[str] = set()
    for key, value in now.items():
        old = seen.get(key)
        if old is not value:
            out.add(app_of(key, value))
            if old is not None:
                out.add(app_of(key, old))
            seen[key] = value
    if len(seen) != len(now):
        for key in [k for k in seen if k not in now]:
            out.add(app_of(key, seen.pop(key)))
    return out


def plan(
    desired: Desired, actual: Actual, now: float, config: PlanConfig | None = None
) -> tuple[Actions, dict[str, Status]]:
    """Plan from scratch: what to publish so that ``actual`` converges to ``desired``."""
    return Planner(config).plan(desired, actual, now, full=True)


def topo_order(apps: Mapping[str, Iterable[str]]) -> list[str]:
    """App names, dependencies first, ties by name; members of a cycle come last, by name."""
    order: list[str] = []
    state: dict[str, int] = {}
    stuck: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> bool:
        mark = state.get(name, 0)
        if mark == 2:
            return True
        if mark == 1:
            stuck.update(path[path.index(name) :])
            return False
        state[name] = 1
        ok = True
        for dep in sorted(apps.get(name, ())):
            if dep in apps:
                ok = visit(dep, (*path, dep)) and ok
        state[name] = 2
        if ok and name not in stuck:
            order.append(name)
        else:
            stuck.add(name)
        return ok and name not in stuck

    for name in sorted(apps):
        visit(name, (name,))
    return order + sorted(stuck - set(order))


class Planner:
    """:func:`plan` with a memory, for fast incremental re-plans (see the module doc)."""

    def __init__(self, config: PlanConfig | None = None) -> None:
        self.config = config or PlanConfig()
        self._nodes: dict[str, _NodeIndex] = {}
        self._app_nodes: dict[str, set[str]] = {}
        self._memo: dict[str, _Memo] = {}
        self._env: _Env | None = None
        self._order_key: object = None
        self._order: list[str] = []
        self._dependents: dict[str, list[str]] = {}
        self._seen_apps: dict[str, object] = {}
        self._seen_invalid: dict[str, str] = {}
        self._fetch_urls: tuple[str, ...] = ()
        self._seen_instances: dict[str, object] = {}
        self._seen_routes: dict[str, object] = {}
        self._seen_rollouts: dict[str, object] = {}

    # -- change detection (by identity: unchanged records are the same objects) -------

    def _changed(self, desired: Desired, actual: Actual) -> set[str]:
        out: set[str] = set()
        out |= _diff_identity(self._seen_apps, desired.apps, lambda k, v: k)
        if desired.invalid != self._seen_invalid:
            old, new = self._seen_invalid, desired.invalid
            out |= {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
            self._seen_invalid = dict(new)
        out |= _diff_identity(
            self._seen_instances, actual.instances, lambda k, v: getattr(v, "app", "")
        )
        out |= _diff_identity(self._seen_routes, actual.routes, lambda k, v: k)
        out |= _diff_identity(self._seen_rollouts, actual.rollouts, lambda k, v: k)
        return out

    # -- indexes ---------------------------------------------------------------------

    def _index(self, intents: Mapping[str, IntentRecord]) -> set[str]:
        """Refresh the per-node indexes; returns the apps whose placements changed."""
        touched: set[str] = set()
        for node in [n for n in self._nodes if n not in intents]:
            for app in self._nodes.pop(node).by_app:
                self._app_nodes.get(app, set()).discard(node)
                touched.add(app)
        for node, rec in intents.items():
            old = self._nodes.get(node)
            if old is not None and old.record is rec:
                continue
            by_app: dict[str, list[IntentInstance]] = {}
            used = Nutrients()
            for inst in rec.instances:
                by_app.setdefault(inst.app, []).append(inst)
                used = used + inst.nutrients
            frozen = {app: tuple(v) for app, v in by_app.items()}
            old_apps = old.by_app if old is not None else {}
            for app in set(old_apps) | set(frozen):
                if old_apps.get(app) != frozen.get(app):
                    touched.add(app)
                    if app in frozen:
                        self._app_nodes.setdefault(app, set()).add(node)
                    else:
                        self._app_nodes.get(app, set()).discard(node)
            self._nodes[node] = _NodeIndex(rec, frozen, used)
        return touched

    def _ordering(self, desired: Desired) -> list[str]:
        key = desired.apps
        if self._order_key is not key:
            deps = {
                name: tuple(d for d in app.spec.deployment.depends_on if d in desired.apps)
                for name, app in desired.apps.items()
            }
            self._order = topo_order(deps)
            self._dependents = {}
            for name, ds in deps.items():
                for d in ds:
                    self._dependents.setdefault(d, []).append(name)
            self._order_key = key
        return self._order

    # -- the plan --------------------------------------------------------------------

    def plan(
        self,
        desired: Desired,
        actual: Actual,
        now: float,
        *,
        full: bool = False,
        dirty: Collection[str] = (),
    ) -> tuple[Actions, dict[str, Status]]:
        """Plan; ``dirty`` names apps to re-plan in any case (e.g. after a CLI command)."""
        cfg = self.config
        touched = self._index(actual.intents) | self._changed(desired, actual)
        alive = frozenset(n for n, rec in actual.nodes.items() if cfg.agent_role in rec.roles)
        eligible = frozenset(
            n for n in alive if not actual.nodes[n].draining and n not in desired.drain
        )
        capacity = {n: desired.capacity.get(n, actual.nodes[n].capacity) for n in alive}
        free = {
            n: capacity[n] - self._nodes[n].used if n in self._nodes else capacity[n] for n in alive
        }
        known = set(self._app_nodes) | set(actual.routes) | set(actual.rollouts)
        known = {a for a in known if self._app_nodes.get(a) or a in actual.routes}
        universe = set(desired.apps) | known | {a for a in desired.invalid if a in known}
        unattributed = [k for k in desired.invalid if k not in desired.apps and k not in known]
        empty = not desired.apps and not desired.invalid
        prune_allowed = not unattributed and (desired.allow_empty or not empty)
        env = _Env(
            epoch=actual.epoch,
            alive=alive,
            eligible=eligible,
            prune_allowed=prune_allowed,
            empty=empty,
            drain=desired.drain,
            suspended=desired.suspended,
            capacity=tuple(sorted(capacity.items())),
            platforms=tuple(sorted((n, actual.nodes[n].platforms) for n in alive)),
        )
        full = full or env != self._env or desired.fetch_urls != self._fetch_urls
        self._env = env
        self._fetch_urls = desired.fetch_urls
        if full:
            todo = set(universe)
        else:
            todo = (set(dirty) | touched) & universe
            todo |= {a for a in universe if a not in self._memo}
            todo |= {
                a
                for a, m in self._memo.items()
                if m.pending or (m.wakeup is not None and m.wakeup <= now)
            }
        for gone in [a for a in self._memo if a not in universe]:
            del self._memo[gone]

        ledger = Ledger(free, eligible, dict(env.platforms))
        assembly = _Assembly()
        routes: dict[str, RouteRecord | None] = {}
        rollouts: dict[str, RolloutState | None] = {}
        replan_soon = False
        order = self._ordering(desired)
        extra = sorted(universe - set(desired.apps))
        for name in [*order, *extra]:
            if name not in todo:
                continue
            inp = self._input(name, desired, actual, env)
            before = self._memo.get(name)
            out = plan_app(inp, ledger, cfg, now)
            self._diff(name, inp, out.placed, assembly)
            old_route = actual.routes.get(name)
            if out.route != old_route:
                routes[name] = out.route
            old_state = actual.rollouts.get(name)
            if out.state != old_state and not (out.state is None and old_state is None):
                rollouts[name] = out.state
            if out.state is None and name in actual.rollouts:
                rollouts[name] = None
            if out.status is None:
                self._memo.pop(name, None)
            else:
                self._memo[name] = _Memo(out.status, out.wakeup, out.pending > 0)
            if out.pending:
                replan_soon = True
            health_before = before.status.health if before and before.status else None
            health_after = out.status.health if out.status else None
            if health_before != health_after:
                todo.update(self._dependents.get(name, ()))
        intents = self._assemble(assembly, actual, alive, desired.revision)
        wakeups = [m.wakeup for m in self._memo.values() if m.wakeup is not None]
        wakeup = min(wakeups) if wakeups else None
        if replan_soon and (intents or routes):
            wakeup = now  # something left a node or changed: a pending instance may fit now
        statuses: dict[str, Status] = {}
        for a, m in self._memo.items():
            if m.status is None:
                continue
            if a not in desired.invalid and m.status.revision != desired.revision:
                m.status = replace(m.status, revision=desired.revision)  # a newer commit
            statuses[a] = m.status
        return Actions(intents=intents, routes=routes, rollouts=rollouts, wakeup=wakeup), statuses

    def _input(self, name: str, desired: Desired, actual: Actual, env: _Env) -> AppInput:
        placed: dict[str, Placement] = {}
        lost = 0
        for node in self._app_nodes.get(name, ()):
            for inst in self._nodes[node].by_app.get(name, ()):
                if node in env.alive:
                    placed[inst.instance_id] = Placement(node, inst)
                else:
                    lost += 1
        app = desired.apps.get(name)
        mode: Mode = "active"
        reason = ""
        suspended = False
        invalid = name in desired.invalid and app is None
        waiting: tuple[str, ...] = ()
        if app is not None:
            suspended = app.spec.deployment.suspend or name in desired.suspended
            if suspended:
                mode, reason = "frozen", "suspended"
            elif not app.digest:
                mode = "frozen"
            waiting = tuple(
                d
                for d in app.spec.deployment.depends_on
                if d in desired.apps and not self._healthy(d)
            )
        elif invalid:
            mode = "frozen"
            reason = f"invalid manifest, running the last good spec: {desired.invalid[name]}"
        elif env.prune_allowed:
            mode = "prune"
        else:
            mode = "frozen"
            reason = "not pruned: the garden holds no apps (use --allow-empty)"
            if desired.apps or desired.invalid:
                reason = "not pruned while the garden has files that do not parse"
        route = actual.routes.get(name)
        return AppInput(
            name=name,
            mode=mode,
            spec=app.spec if app else None,
            digest=app.digest if app else "",
            placed=placed,
            instances=actual.instances,
            route=route,
            state=actual.rollouts.get(name) or RolloutState(),
            epoch=actual.epoch,
            revision=desired.revision,
            fetch_urls=desired.fetch_urls,
            prefix=app.spec.prefix if app else (route.prefix if route else f"/{name}"),
            waiting_on=waiting,
            frozen_reason=reason,
            invalid=invalid,
            suspended=suspended,
            lost=lost,
            platform=app.platform if app else "",
            edges_serve=actual.served_generation(name),
        )

    def _healthy(self, name: str) -> bool:
        memo = self._memo.get(name)
        return memo is not None and memo.status is not None and memo.status.health == HEALTHY

    def _diff(
        self, name: str, inp: AppInput, new: Mapping[str, Placement], assembly: _Assembly
    ) -> None:
        old_nodes = self._app_nodes.get(name, set())
        new_by_node: dict[str, list[IntentInstance]] = {}
        for p in new.values():
            new_by_node.setdefault(p.node, []).append(p.inst)
        for node in old_nodes | set(new_by_node):
            old = self._nodes[node].by_app.get(name, ()) if node in self._nodes else ()
            insts = tuple(sorted(new_by_node.get(node, ()), key=lambda i: i.instance_id))
            if insts != old:
                assembly.set(node, name, insts)

    def _assemble(
        self, assembly: _Assembly, actual: Actual, alive: frozenset[str], revision: str
    ) -> dict[str, IntentRecord]:
        out: dict[str, IntentRecord] = {}
        nodes = set(assembly.changes)
        nodes |= {n for n, rec in actual.intents.items() if rec.epoch != actual.epoch}
        nodes |= {n for n, rec in actual.intents.items() if n not in alive and rec.instances}
        for node in sorted(nodes):
            old = actual.intents.get(node)
            # A node gone from the fabric gets an empty record rather than none: should it
            # come back, it withers what it ran instead of running it beside replacements.
            by_app = dict(self._nodes[node].by_app) if node in self._nodes else {}
            for app, insts in assembly.changes.get(node, {}).items():
                if insts:
                    by_app[app] = insts
                else:
                    by_app.pop(app, None)
            instances = tuple(
                sorted((i for v in by_app.values() for i in v), key=lambda i: i.instance_id)
            )
            if old is not None and old.instances == instances and old.epoch == actual.epoch:
                continue
            if old is None and not instances:
                continue
            out[node] = IntentRecord(
                node=node, epoch=actual.epoch, revision=revision, instances=instances
            )
        return out
