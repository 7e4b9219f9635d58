"""A debounced stream of :class:`MeshStatus`, driven by :meth:`FabricAPI.subscribe`.

The first status is yielded at once; after that, a change starts a window of
``debounce_s`` in which further changes are absorbed, then one new status is built and
yielded if it differs from the last one. With no change for ``refresh_s`` the status is
rebuilt anyway (member states such as ``suspect`` are not key changes) and, with
``heartbeat=True``, yielded even if unchanged (so a server notices a gone client). The
feed ends when the fabric stops or :meth:`aclose` is called.

:class:`Timeline` keeps the last minutes of each app for the dashboard's charts (requests
per second, p99 against the budget, instances, and the autoscale and rollout events);
:func:`sample_timeline` feeds it from a running member.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from reconciler.clock import Clock
from reconciler.core.autoscale import Signal, merge_signals
from reconciler.fabric.api import Change, FabricAPI
from reconciler.records import KEY_EDGE_STATS

from .snapshot import FabricSnapshot, snapshot_of
from .status import AppView, MeshStatus, build_status


class StatusFeed:
    def __init__(
        self,
        fabric: FabricAPI,
        *,
        debounce_s: float = 0.2,
        refresh_s: float = 5.0,
        heartbeat: bool = False,
    ) -> None:
        self._fabric = fabric
        self._debounce = debounce_s
        self._refresh = refresh_s
        self._heartbeat = heartbeat
        self._sub: AsyncIterator[Change] = fabric.subscribe("")
        self._last: dict[str, Any] | None = None
        self._closed = False

    def status(self) -> MeshStatus:
        return build_status(snapshot_of(self._fabric))

    def __aiter__(self) -> StatusFeed:
        return self

    async def __anext__(self) -> MeshStatus:
        if self._last is None and not self._closed:
            st = self.status()
            self._last = st.to_json()
            return st
        while True:
            got = await self._next_change(self._refresh)
            if got is None:
                raise StopAsyncIteration
            if not got:  # quiet for refresh_s
                st = self.status()
                doc = st.to_json()
                if doc != self._last or self._heartbeat:
                    self._last = doc
                    return st
                continue
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._debounce
            while (left := deadline - loop.time()) > 0:
                if not await self._next_change(left):
                    break
            if self._closed:
                raise StopAsyncIteration
            st = self.status()
            doc = st.to_json()
            if doc != self._last:
                self._last = doc
                return st

    async def _next_change(self, within: float) -> bool | None:
        """Wait for one change: True if one came, False if none within, None if ended."""
        if self._closed:
            return None
        try:
            async with asyncio.timeout(within):
                await anext(self._sub)
        except TimeoutError:
            return False
        except StopAsyncIteration:
            self._closed = True
            return None
        return True

    async def aclose(self) -> None:
        """End the feed: a pending ``__anext__`` returns StopAsyncIteration."""
        self._closed = True
        closer = getattr(self._sub, "aclose", None)
        if closer is not None:
            await closer()


# -- the dashboard's charts: the last minutes of each app -------------------------------------

#: One sample of one app: (wall time, arrivals/s, answers/s, p99 ms or None when nothing was
#: answered, instances ready, instances desired).
Sample = tuple[float, float, float, float | None, int, int]


@dataclass
class _Series:
    autoscaled: bool
    budget_ms: float | None
    last_active: float  # the last sample with a request (an idle app leaves the chart)
    samples: deque[Sample] = field(default_factory=deque)
    events: deque[dict[str, Any]] = field(default_factory=deque)
    decision: tuple[Any, ...] | None = None  # the autoscale ``last`` seen (its identity)
    rollout: str | None = None  # the rollout phase seen ("" idle)


class Timeline:
    """The last ``window_s`` of each app: load, latency and instances, with its events.

    :meth:`observe` takes one sample (a :class:`MeshStatus` and the edges' ``edge/stats``
    values, merged as the autoscaler merges them: arrivals and answers add up, the worst
    edge's p99) and notes the events: a change of the autoscaler's count (with its own
    time and reason, from the app's ``autoscale.last``) and a change of the rollout phase.
    Pure: time is an argument. Charted are the apps with ``autoscale`` and those with a
    request in the window, at most ``max_apps`` (autoscaled first, then the busiest), so
    memory stays bounded (``max_apps`` × ``window_s`` / sample interval samples).
    """

    def __init__(self, window_s: float = 900.0, max_apps: int = 32, max_events: int = 200):
        self.window_s = window_s
        self.max_apps = max_apps
        self.max_events = max_events
        self.seq = 0  # samples taken
        self.now = 0.0  # the time of the last sample
        self._series: dict[str, _Series] = {}

    def observe(
        self, status: MeshStatus, edge_records: Iterable[object], at: float
    ) -> dict[str, Any]:
        """Add one sample at ``at`` (wall seconds); returns it as the event stream sends it:
        ``{"seq", "t", "apps": {name: {"s": [arrivals, answers, p99, ready, desired],
        "budget_ms", "autoscale"}}, "events": [...]}`` (apps not in it left the chart)."""
        _, signals = merge_signals(edge_records)
        self.seq += 1
        self.now = at
        horizon = at - self.window_s
        apps = {a.name: a for a in status.apps}
        for gone in [n for n in self._series if n not in apps]:
            del self._series[gone]
        candidates = sorted(
            (a for a in status.apps if a.name not in self._series),
            key=lambda a: (not a.autoscale, -_arrivals(signals.get(a.name)), a.name),
        )
        for a in candidates:
            sig = signals.get(a.name)
            if len(self._series) >= self.max_apps:
                break
            if a.autoscale or (sig is not None and sig.active):
                self._series[a.name] = _Series(bool(a.autoscale), None, at)
        out_apps: dict[str, Any] = {}
        events: list[dict[str, Any]] = []
        for name in sorted(self._series):
            series, a = self._series[name], apps[name]
            sig = signals.get(name)
            if sig is not None and sig.active:
                series.last_active = at
            series.autoscaled = bool(a.autoscale)
            if not series.autoscaled and series.last_active < horizon:
                del self._series[name]  # idle for the whole window
                continue
            budget = a.autoscale.get("budget_ms") if a.autoscale else None
            series.budget_ms = float(budget) if isinstance(budget, int | float) else None
            desired = a.autoscale.get("desired") if a.autoscale else a.desired
            sample: Sample = (
                round(at, 3),
                round(sig.rps, 2) if sig else 0.0,
                round(sig.done_rps, 2) if sig else 0.0,
                round(sig.p99_ms, 1) if sig and sig.requests else None,
                a.phases.get("ready", 0),
                desired if isinstance(desired, int) else a.desired,
            )
            series.samples.append(sample)
            while series.samples and series.samples[0][0] < horizon:
                series.samples.popleft()
            for ev in self._events(name, series, a, at):
                series.events.append(ev)
                events.append({"app": name, **ev})
            while series.events and (
                series.events[0]["at"] < horizon or len(series.events) > self.max_events
            ):
                series.events.popleft()
            out_apps[name] = {
                "s": list(sample[1:]),
                "budget_ms": series.budget_ms,
                "autoscale": series.autoscaled,
            }
        return {"seq": self.seq, "t": round(at, 3), "apps": out_apps, "events": events}

    def _events(self, name: str, series: _Series, a: AppView, at: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        last = a.autoscale.get("last") if a.autoscale else None
        if isinstance(last, dict):
            key = (last.get("at"), last.get("previous"), last.get("desired"))
            when = last.get("at")
            if key != series.decision and isinstance(when, int | float):
                series.decision = key
                if when >= at - self.window_s:  # it carries its own time: maybe before us
                    direction = str(last.get("direction", ""))
                    moved = f"{direction} {last.get('previous')}→{last.get('desired')}"
                    out.append(
                        {
                            "at": round(float(when), 3),
                            "kind": "autoscale",
                            "direction": direction,
                            "label": f"{'▲' if direction == 'up' else '▼'}{last.get('desired')}",
                            "text": f"{moved}: {last.get('reason', '')}".rstrip(": "),
                        }
                    )
        phase = a.rollout if a.rollout and a.rollout != "idle" else ""
        seen, series.rollout = series.rollout, phase
        if phase != seen and (seen is not None or phase):  # (a rollout under way when first seen)
            if phase:
                text = f"rollout: {phase}"
            elif a.reason.startswith("reverted"):
                text = f"rollout reverted: {a.reason}"
            else:
                text = "rollout done"
            out.append(
                {
                    "at": round(at, 3),
                    "kind": "rollout",
                    "phase": phase or "idle",
                    "label": "◆" if phase else "◇",
                    "text": text,
                }
            )
        return out

    def to_json(self) -> dict[str, Any]:
        """Everything in the window: ``{"seq", "now", "window_s", "apps": {name:
        {"budget_ms", "autoscale", "samples": [[t, arrivals, answers, p99, ready,
        desired], ...], "events": [{"at", "kind", "label", "text", ...}]}}}``."""
        return {
            "seq": self.seq,
            "now": round(self.now, 3),
            "window_s": self.window_s,
            "apps": {
                name: {
                    "budget_ms": s.budget_ms,
                    "autoscale": s.autoscaled,
                    "samples": [list(x) for x in s.samples],
                    "events": list(s.events),
                }
                for name, s in sorted(self._series.items())
            },
        }


def _arrivals(sig: Signal | None) -> float:
    return sig.rps if sig is not None else 0.0


def edge_values(snap: FabricSnapshot) -> list[object]:
    """The values of every edge's ``edge/stats`` record in a snapshot."""
    return [e.value for e in snap.entries if e.key == KEY_EDGE_STATS]


async def sample_timeline(
    fabric: FabricAPI,
    timeline: Timeline,
    *,
    sample_s: float,
    clock: Clock,
    on_sample: Callable[[dict[str, Any]], None],
) -> None:
    """Feed ``timeline`` one sample every ``sample_s`` until cancelled; ``on_sample`` gets
    each. The status is rebuilt only after a change in the fabric (an idle mesh costs a
    sample, not a rebuild)."""
    changed = asyncio.Event()
    changed.set()

    async def watch() -> None:
        sub = fabric.subscribe("")
        try:
            async for _ in sub:
                changed.set()
        finally:
            closer = getattr(sub, "aclose", None)
            if closer is not None:
                await closer()

    async def sample() -> None:
        status, records = MeshStatus(), list[object]()
        while True:
            if changed.is_set():
                changed.clear()
                snap = snapshot_of(fabric)
                status, records = build_status(snap), edge_values(snap)
            on_sample(timeline.observe(status, records, clock.wall()))
            await clock.sleep(sample_s)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(watch())
        tg.create_task(sample())
