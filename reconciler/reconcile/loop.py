"""The reconcile driver: garden source + builder + fabric around the pure plan (docs/reconciler.md).

Tasks, all owned by one TaskGroup:

* *garden*: on every change signal of the source, read the garden, build the missing
  spores (in a thread), and swap in the new :class:`Desired`;
* *fabric*: every change in the fabric wakes the planner (level-triggered: the planner
  reads the whole view, the signal only says "look");
* *lease*: keeps or waits for the lease (see :mod:`.lease`);
* *plan*: while active, plan and publish whenever woken or when the plan's own timer
  (``Actions.wakeup``) is due, and at least every ``resync_s``. Before each plan the
  autoscaler (:class:`~reconciler.core.autoscale.Autoscaler`, pure) turns the edges'
  ``edge/stats`` records into the counts of the apps with ``autoscale`` (the edges
  publish every second while there is traffic, which wakes the plan loop).

Signal handlers and callbacks only set the wake event; the plan loop is the one consumer.

Dependency builds run in the garden task's thread; each step they report
(:class:`~reconciler.spore.deps.BuildStep`) comes back to the event loop, is kept in
``building`` (app -> step, package count, elapsed), handed to ``step_listeners`` (``myco
apply`` prints them) and published as the ``build`` record (``myco up`` and ``myco status``
show it); the record is deleted when the builds are over. An app whose build failed gets
its installer's last lines in ``AppStatus.build_log``, and an InvalidSpec status even if
it never ran (so ``myco apply`` fails for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.aio import first_error, guard, wait_event
from reconciler.core.autoscale import Autoscaler, annotate, merge_signals
from reconciler.core.model import (
    Actions,
    Actual,
    Desired,
    DesiredApp,
    PlanConfig,
    Status,
    route_json,
)
from reconciler.core.plan import Planner
from reconciler.errors import ConfigError, MycoError
from reconciler.fabric.api import FabricAPI
from reconciler.files import atomic_write
from reconciler.garden import GardenResult
from reconciler.reconcile import history
from reconciler.reconcile.builder import Overrides, SporeBuilder, desired_from
from reconciler.reconcile.lease import Lease, LeaseConfig
from reconciler.reconcile.mirror import FabricMirror
from reconciler.reconcile.source import GardenSource
from reconciler.records import (
    KEY_BUILD,
    KEY_EDGE_STATS,
    KEY_GARDEN,
    BuildProgressRecord,
    GardenRevisionRecord,
    intents_key,
    plain,
    routes_key,
)

if TYPE_CHECKING:
    from reconciler.observe.metrics import Metrics
    from reconciler.spore.deps import BuildStep

log = logging.getLogger("myco.reconciler")


@dataclass(frozen=True)
class ReconcileSettings:
    fetch_urls: tuple[str, ...] = ()
    allow_empty: bool = False
    resync_s: float = 2.0
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)


def save_overrides(path: Path, overrides: Overrides) -> None:
    """Write the CLI overrides atomically (they survive a restart of this reconciler)."""
    atomic_write(path, json.dumps(overrides.to_json(), indent=2) + "\n")


def load_overrides(path: Path) -> Overrides:
    try:
        return Overrides.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return Overrides()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable overrides: {exc}") from exc


def stabilize(new: Desired, old: Desired | None) -> Desired:
    """Reuse the old DesiredApp objects that did not change (the planner diffs by identity)."""
    if old is None:
        return new
    apps: dict[str, DesiredApp] = {}
    same = len(new.apps) == len(old.apps)
    for name, app in new.apps.items():
        prev = old.apps.get(name)
        if prev is not None and prev == app:
            apps[name] = prev
        else:
            apps[name] = app
            same = False
    return replace(new, apps=old.apps if same else apps)


def with_builds(statuses: dict[str, Status], desired: Desired) -> dict[str, Status]:
    """Statuses with each failed build's installer lines; an app whose build failed and that
    never ran (the planner has no status for it) is shown InvalidSpec all the same."""
    if not desired.build_logs:
        return statuses
    out = dict(statuses)
    for app, lines in desired.build_logs.items():
        st = out.get(app)
        if st is None:
            reason = desired.invalid.get(app, "spore build failed")
            out[app] = Status(
                sync="InvalidSpec", reason=reason, revision=desired.revision, build_log=lines
            )
        elif st.build_log != lines:
            out[app] = replace(st, build_log=lines)
    return out


class ReconcileLoop:
    def __init__(
        self,
        fabric: FabricAPI,
        source: GardenSource,
        builder: SporeBuilder | None,
        settings: ReconcileSettings | None = None,
        *,
        overrides: Overrides | None = None,
        overrides_path: Path | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.overrides_path = overrides_path
        self.fabric = fabric
        self.source = source
        self.builder = builder
        self.settings = settings or ReconcileSettings()
        self.overrides = overrides or Overrides()
        self.wall = wall
        self.wake = asyncio.Event()
        self.lease = Lease(fabric, self.settings.lease, wall=wall, on_change=self.wake.set)
        self.mirror = FabricMirror(fabric)
        self.planner = Planner(self.settings.plan)
        self.autoscaler = Autoscaler()
        self.garden: GardenResult | None = None
        self.desired: Desired | None = None
        self.statuses: dict[str, Status] = {}
        self.last_actions = Actions()
        self.passes = 0
        self.converged = asyncio.Event()  # the last pass planned nothing and waits for nothing
        self.garden_read = asyncio.Event()
        self._garden_changed = asyncio.Event()
        self._adopt = True
        self.history: history.History = {}
        self.control_url = ""
        self._published_garden: dict[str, Any] | None = None
        self.metrics: Metrics | None = None  # set by the control API when it serves /metrics
        #: dependency builds under way: app -> {step, packages?, elapsed_s}
        self.building: dict[str, dict[str, Any]] = {}
        self.step_listeners: list[Callable[[BuildStep], None]] = []
        self._build_published = False

    # -- desired state ---------------------------------------------------------------

    async def refresh_garden(self) -> None:
        try:
            result = await asyncio.to_thread(self.source.read)
        except MycoError as exc:
            log.warning("cannot read the garden %s: %s", self.source.description, exc)
            return
        self.garden = result
        await self.rebuild_desired()
        self.garden_read.set()

    async def rebuild_desired(self) -> None:
        if self.garden is None:
            return
        garden = self.garden.garden
        if self.builder is not None:
            loop = asyncio.get_running_loop()

            def from_thread(step: BuildStep) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closing: nobody to tell
                    loop.call_soon_threadsafe(self.on_build_step, step)

            self.builder.on_step = from_thread
        try:
            desired = await asyncio.to_thread(
                desired_from,
                garden,
                self.builder,
                fetch_urls=self.settings.fetch_urls,
                allow_empty=self.settings.allow_empty,
                overrides=self.overrides,
            )
        except BaseException:  # cancelled (stopping): nothing to publish any more
            self.building.clear()
            raise
        # every step reported in the thread has been handled before this point
        self.building.clear()
        self.publish_building()
        self.desired = stabilize(desired, self.desired)
        log.info(
            "garden %s at %s: %d app(s), %d invalid",
            self.source.description,
            garden.revision[:12],
            len(desired.apps),
            len(desired.invalid),
        )
        self.wake.set()

    def on_build_step(self, step: BuildStep) -> None:
        """A step of a dependency build (on the event loop): keep, tell, publish it."""
        if step.final:
            self.building.pop(step.app, None)
        else:
            entry: dict[str, Any] = {"step": step.text, "elapsed_s": step.elapsed_s}
            if step.packages is not None:
                entry["packages"] = step.packages
            self.building[step.app] = entry
        for listener in list(self.step_listeners):
            listener(step)
        self.publish_building()

    def publish_building(self) -> None:
        """The ``build`` record while builds run; deleted once they are over."""
        if self.building:
            record = BuildProgressRecord(apps=dict(sorted(self.building.items())), at=self.wall())
            self.fabric.publish(KEY_BUILD, plain(record.to_json()))
            self._build_published = True
        elif self._build_published:
            self.fabric.delete(KEY_BUILD)
            self._build_published = False

    async def set_overrides(self, overrides: Overrides) -> None:
        self.overrides = overrides
        if self.overrides_path is not None:
            await asyncio.to_thread(save_overrides, self.overrides_path, overrides)
        await self.rebuild_desired()

    # -- one pass --------------------------------------------------------------------

    def plan_once(self) -> Actions | None:
        """Plan and publish once if active; None when not active or no garden yet."""
        if not self.lease.active:
            self._adopt = True
            return None
        if self.desired is None:
            return None
        if self._adopt:
            self.adopt_overrides()
        actual = self.mirror.actual(self.lease.epoch, adopt=self._adopt)
        now = self.wall()
        desired = self.autoscale(actual, now)
        actions, statuses = self.planner.plan(desired, actual, now, full=self._adopt)
        self._adopt = False
        after = actual.apply(actions)
        self.publish(actions, after)
        if actions.rollouts or not self.history:
            history.record(self.history, after.rollouts, self.desired, now)
        self.statuses = with_builds(annotate(statuses, self.autoscaler.states, desired), desired)
        self.publish_garden()
        self.last_actions = actions
        self.passes += 1
        if actions.empty and actions.wakeup is None:
            self.converged.set()
        else:
            self.converged.clear()
        if not actions.empty:
            log.info("pass %d: published %s", self.passes, actions.summary())
        return actions

    def autoscale(self, actual: Actual, now: float) -> Desired:
        """The desired state with the autoscaled apps' counts decided from the edges."""
        assert self.desired is not None
        records = [
            value
            for (_owner, key), value in self.fabric.view(KEY_EDGE_STATS).items()
            if key == KEY_EDGE_STATS
        ]
        desired, decisions = self.autoscaler.apply(self.desired, actual, records, now)
        if decisions and log.isEnabledFor(logging.DEBUG):  # the decision log, with signals
            _edges, signals = merge_signals(records)
            for app, d in decisions.items():
                log.debug(
                    "autoscale %s: signal %s; ready %d, %d -> %d (want %d): %s",
                    app,
                    json.dumps(asdict(signals[app]) if app in signals else {}),
                    d.current,
                    d.previous,
                    d.desired,
                    d.want,
                    d.reason,
                )
        for app, d in decisions.items():
            if d.direction != "hold":
                log.info(
                    "autoscale %s: %d -> %d: %s%s",
                    app,
                    d.previous,
                    d.desired,
                    d.reason,
                    f"; {d.pending}" if d.pending else "",
                )
        return desired

    def publish(self, actions: Actions, after: Actual) -> None:
        for node, rec in actions.intents.items():
            self.fabric.publish(intents_key(node), plain(rec.to_json()))
        for app in sorted(set(actions.routes) | set(actions.rollouts)):
            route = after.routes.get(app)
            if route is None:
                self.fabric.delete(routes_key(app))
            else:
                value = route_json(route, after.rollouts.get(app))
                self.fabric.publish(routes_key(app), plain(value))

    def adopt_overrides(self) -> None:
        """Take over the CLI overrides of the previous holder (from its garden record)."""
        best: tuple[int, Overrides] | None = None
        for (_owner, key), value in self.fabric.view(KEY_GARDEN, include_gone=True).items():
            if key != KEY_GARDEN or not isinstance(value, dict):
                continue
            epoch = value.get("epoch")
            if isinstance(epoch, int) and (best is None or epoch > best[0]):
                best = (epoch, Overrides.from_json(value.get("overrides")))
                past = value.get("history")
                if isinstance(past, dict) and epoch < self.lease.epoch:
                    for app, entries in past.items():
                        if isinstance(entries, list) and app not in self.history:
                            self.history[app] = [e for e in entries if isinstance(e, dict)]
        if best is not None and best[1] != self.overrides and best[0] < self.lease.epoch:
            if not (self.overrides.suspended or self.overrides.drain or self.overrides.pins):
                log.info("adopting overrides of epoch %d: %s", best[0], best[1].to_json())
                self.overrides = best[1]
                if self.desired is not None:
                    self.desired = replace(
                        self.desired, drain=best[1].drain, suspended=best[1].suspended
                    )

    def publish_garden(self) -> None:
        if self.garden is None:
            return
        garden = self.garden.garden
        apps = {name: status.to_json() for name, status in sorted(self.statuses.items())}
        record = GardenRevisionRecord(
            revision=garden.revision,
            source=garden.source or self.source.description,
            commit=garden.revision if len(garden.revision) == 40 else "",
            apps=apps,
        ).to_json()
        record["problems"] = [str(p) for p in self.garden.problems]
        record["overrides"] = self.overrides.to_json()
        record["epoch"] = self.lease.epoch
        record["holder"] = self.fabric.name
        record["control_url"] = self.control_url
        record["history"] = self.history
        if record != self._published_garden:
            self.fabric.publish(KEY_GARDEN, plain(record))
            self._published_garden = record

    # -- the tasks -------------------------------------------------------------------

    async def _garden_loop(self) -> None:
        while True:
            self._garden_changed.clear()
            await self.refresh_garden()
            await wait_event(self._garden_changed, self.source.resync_s)

    async def _fabric_loop(self) -> None:
        async for _change in self.fabric.subscribe(""):
            self.wake.set()

    async def _plan_loop(self) -> None:
        while True:
            self.wake.clear()
            try:
                if self.metrics is not None:
                    with self.metrics.reconcile.timed():
                        actions = self.plan_once()
                else:
                    actions = self.plan_once()
            except MycoError as exc:
                log.warning("plan pass failed: %s", exc)
                actions = None
            timeout = self.settings.resync_s
            if actions is not None and actions.wakeup is not None:
                timeout = max(0.01, min(timeout, actions.wakeup - self.wall()))
            await wait_event(self.wake, timeout)
            await asyncio.sleep(0.02)  # coalesce a burst of fabric changes into one pass

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Run until cancelled; on the way out give the lease up.

        Each loop must run as long as the reconciler does: if one ends or fails, the others
        are cancelled and :class:`~reconciler.errors.ServiceFailed` names it (so the
        ``myco reconcile`` process stops rather than running on half alive).
        """
        loops = (
            ("the garden watcher", self.source.watch(self._garden_changed.set)),
            ("the garden reader", self._garden_loop()),
            ("the fabric watch", self._fabric_loop()),
            ("the lease", self.lease.run()),
            ("the planner", self._plan_loop()),
        )
        try:
            async with asyncio.TaskGroup() as tg:
                for what, coro in loops:
                    tg.create_task(guard(what, coro), name=f"reconciler: {what}")
                if started is not None:
                    started.set()
        except BaseExceptionGroup as eg:
            raise first_error(eg) from None
        finally:
            self.lease.release()
