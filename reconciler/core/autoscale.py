"""Autoscaling decisions (docs/autoscale.md): the edges' signals + the time → instance counts.

Pure, like the plan: no I/O, no clock (``now`` is an argument), no randomness. Three parts:

* :func:`merge_signals` folds every edge's ``edge/stats`` record into one :class:`Signal`
  per app (rates and in-flight counts add up; the worst edge's p99 counts).
* :func:`decide` is one app's step: from its :class:`ScaleState` (what it runs, the
  recent wishes, what it learned) and the signal to the next state, whose
  :class:`Decision` says what and why. The pipeline, in order:

  1. a raw wish from the target: ``rps_per_instance`` and ``inflight_per_instance`` as
     ``ceil(load / target)``, inside a tolerance band (±10 %) the count is kept;
     ``p99_ms`` from the load per instance the app was seen to carry within the budget
     (``good``) and the load at which it broke it (``bad``, forgotten after a while),
     judging the p99 of the requests *sent* in the window (:func:`judged_p99`: a backlog
     answered late after a scale-up asks for nothing more), see :func:`_p99_wish`;
  2. panic: load at ``panic_factor`` × the target scales up at once (no up
     stabilization) and forbids scaling down until the down window has passed;
  3. stabilization, as the Kubernetes HPA's ``behavior``: scale up to the *smallest*
     wish of the last ``up.stabilize_s``, down to the *largest* wish of the last
     ``down.stabilize_s`` (so a wish must hold for the whole window; the two windows are
     separate);
  4. step limits (``up.max_step``, ``down.max_step``), then ``[min, max]``;
  5. credits: never more than the nutrient ledger can place (``fit``); the rest is
     reported as ``Pending: no credits`` instead of being published and left pending;
  6. scale to zero after ``to_zero_after_s`` without a request; an app at zero wakes to
     ``min`` as soon as an edge holds or sees a request for it.

* :class:`Autoscaler` keeps the states of every app between plans and turns the decisions
  into the :class:`~reconciler.core.model.Desired` the planner reads (each autoscaled
  app's ``instances`` replaced by its decision; unchanged apps keep their very objects,
  so the planner re-plans only what a decision changed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from reconciler.core.ledger import ANY, runs_on
from reconciler.core.model import Actual, Desired, DesiredApp, Status
from reconciler.model import Autoscale
from reconciler.records import Nutrients

Direction = Literal["up", "down", "hold"]


@dataclass(frozen=True)
class AutoscaleConfig:
    """Knobs of the decisions that are not per app (defaults after HPA and Knative)."""

    tolerance: float = 0.1  # a load within ±10 % of the target keeps the count
    panic_factor: float = 2.0  # load at this multiple of the target: panic
    probe_below: float = 0.5  # p99 under this share of the budget: try one instance less
    #: p99: a window is learned from only if the instances ready now were ready this long
    #: (the edge's 1 s window, the route's delay): the same set served all of it
    steady_s: float = 2.0
    #: p99: with a learned capacity, the fewest instances that keep the load per instance
    #: under this share of it (within the budget, after the down window)
    probe_util: float = 0.8
    min_samples: int = 20  # requests in a window before its p99 is believed
    #: p99: judge the requests *sent* in a window (``Signal.p99_sent_ms``) rather than those
    #: answered in it when the budget is at most this share of the window (a request sent
    #: in the window can then be seen over the budget by its end); answers to a backlog
    #: sent before the window then do not count
    sent_share: float = 0.5
    forget_bad_s: float = 300.0  # a learned overload level is forgotten after this long
    #: p99: not believed this long after a decision that saw no ready instance or a held
    #: request (the answers then include the wait for the app to start or wake)
    settle_s: float = 3.0
    max_history: int = 256  # wishes kept per app (older ones are dropped)
    agent_role: str = "agent"


@dataclass(frozen=True)
class Signal:
    """One app's load over the last window, all edges together."""

    rps: float = 0.0  # requests arriving per second (what is asked of the app)
    done_rps: float = 0.0  # requests answered per second (what the app manages)
    inflight: float = 0.0  # requests in flight, on average over the window
    p99_ms: float = 0.0  # the worst edge's p99 (0: no request finished)
    requests: int = 0  # requests answered in the window (how much the p99 is worth)
    held: int = 0  # requests an edge holds for the app while it is at zero
    edges: int = 0  # edges that reported (0: no edge in the mesh, nothing to scale on)
    at: float = 0.0  # the newest edge window in it (``EdgeStatsRecord.at``; 0: unknown)
    #: the worst edge's p99 of the requests *sent* in the window (answered: their latency;
    #: still in flight: their age); None when an edge with arrivals did not say (older)
    p99_sent_ms: float | None = None
    sent: int = 0  # requests sent (begun) in the window
    stale: int = 0  # answers to requests sent before the window (a backlog drained)
    window_s: float = 0.0  # the longest edge window (0: unknown)

    @property
    def active(self) -> bool:
        return self.rps > 0 or self.requests > 0 or self.held > 0 or self.inflight > 0


def _num(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) and value > 0 else 0.0


def merge_signals(records: Iterable[object]) -> tuple[int, dict[str, Signal]]:
    """Every edge's ``edge/stats`` value → (how many edges, one :class:`Signal` per app).

    Rates and in-flight counts add up; the p99 is the worst edge's among those that
    answered requests (a merge of quantiles without the histograms: on the safe side), the
    p99 of the requests sent the worst among those that had requests sent. Records from
    older edges lack ``arrival_rps``/``inflight_avg``: their answered rate and current
    in-flight count stand in; one that lacks ``p99_sent_ms`` while it had arrivals leaves
    the merged one unknown (None). Values that are not numbers count as 0.
    """
    edges = 0
    acc: dict[str, dict[str, float]] = {}
    for value in records:
        if not isinstance(value, dict):
            continue
        apps = value.get("apps")
        if not isinstance(apps, dict):
            continue
        edges += 1
        for app, fig in apps.items():
            if not isinstance(app, str) or not isinstance(fig, dict):
                continue
            a = acc.setdefault(
                app,
                {"rps": 0.0, "done": 0.0, "inf": 0.0, "p99": 0.0, "n": 0.0, "sent_known": 1.0},
            )
            done = _num(fig.get("rps"))
            a["rps"] += _num(fig.get("arrival_rps")) if "arrival_rps" in fig else done
            a["done"] += done
            a["inf"] += _num(fig.get("inflight_avg" if "inflight_avg" in fig else "inflight"))
            a["n"] += _num(fig.get("requests"))
            a["held"] = a.get("held", 0.0) + _num(fig.get("held"))
            a["at"] = max(a.get("at", 0.0), _num(value.get("at")))
            if _num(fig.get("requests")) > 0:
                a["p99"] = max(a["p99"], _num(fig.get("p99_ms")))
            a["window"] = max(a.get("window", 0.0), _num(fig.get("window_s")))
            a["stale"] = a.get("stale", 0.0) + _num(fig.get("stale"))
            if "p99_sent_ms" in fig:
                a["sent"] = a.get("sent", 0.0) + _num(fig.get("sent"))
                if _num(fig.get("sent")) > 0:
                    a["p99s"] = max(a.get("p99s", 0.0), _num(fig.get("p99_sent_ms")))
            elif _num(fig.get("arrival_rps" if "arrival_rps" in fig else "rps")) > 0:
                a["sent_known"] = 0.0
    out = {
        app: Signal(
            rps=round(a["rps"], 3),
            done_rps=round(a["done"], 3),
            inflight=round(a["inf"], 3),
            p99_ms=a["p99"],
            requests=int(a["n"]),
            held=int(a.get("held", 0.0)),
            edges=edges,
            at=a.get("at", 0.0),
            p99_sent_ms=a.get("p99s", 0.0) if a["sent_known"] and "sent" in a else None,
            sent=int(a.get("sent", 0.0)),
            stale=int(a.get("stale", 0.0)),
            window_s=a.get("window", 0.0),
        )
        for app, a in acc.items()
    }
    return edges, out


@dataclass(frozen=True)
class Decision:
    """The last decision for an app: what it runs, what it wants, and why."""

    at: float
    current: int  # instances ready when it was taken
    desired: int  # the count published
    previous: int  # the count before
    want: int  # the raw wish of the target, before windows, steps, bounds and credits
    direction: Direction
    reason: str
    panic: bool = False
    pending: str = ""  # "Pending: no credits ..." when the credits cut the count
    warning: str = ""  # e.g. max beyond the mesh's credits (with the line of max)
    blocked: str = ""  # why nothing can scale (no edge), in words that stay put

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "current": self.current,
            "desired": self.desired,
            "previous": self.previous,
            "want": self.want,
            "direction": self.direction,
            "reason": self.reason,
            "panic": self.panic,
            "pending": self.pending,
            "warning": self.warning,
            "blocked": self.blocked,
        }


@dataclass(frozen=True)
class ScaleState:
    """One app's autoscaler memory between decisions."""

    count: int  # the count in force
    started: float  # the first decision (a down window needs this much history)
    last_request: float  # the last time the app had any request (scale to zero)
    wishes: tuple[tuple[float, int], ...] = ()  # (since, wish), a wish holds until the next
    changed: float = 0.0  # when ``count`` last changed
    panic_until: float = 0.0
    good: float = 0.0  # p99: highest load per instance seen within the budget
    bad: float = 0.0  # p99: lowest load per instance seen over it (0: none known)
    bad_at: float = 0.0
    unready_at: float = -math.inf  # the last decision with no ready instance or a held request
    seen_at: float = 0.0  # p99: the edge window (``Signal.at``) of the last wish, and the wish
    p99_wish: tuple[int, str] | None = None
    over: bool = False  # p99: the last judged window was over the budget
    last_rps: float = 0.0  # p99: the arrivals of the last judged window
    cap: float = 0.0  # p99: answers per instance when it could not keep up (0: unknown)
    readies: tuple[tuple[float, int], ...] = ()  # (since, ready), the last ``steady_s``
    digest: str = ""  # what was learned belongs to this spore
    decision: Decision | None = None  # the latest
    last_change: Decision | None = None  # the latest that changed the count


def fits(free: Mapping[str, Nutrients], need: Nutrients) -> int:
    """How many instances of ``need`` the ``free`` credits hold (a node holds whole ones)."""
    total = 0
    for credit in free.values():
        per = []
        if need.cpu_milli > 0:
            per.append(max(0, credit.cpu_milli) // need.cpu_milli)
        if need.memory_mb > 0:
            per.append(max(0, credit.memory_mb) // need.memory_mb)
        total += min(per) if per else 10_000
    return total


def _clamp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, n))


def _ratio_wish(load: float, target: float, count: int, tol: float) -> int:
    if target <= 0:
        return count
    if count > 0 and abs(load / (count * target) - 1.0) <= tol:
        return count  # within tolerance: no change (the HPA's ±10 %)
    return math.ceil(load / target - 1e-9)


def _per(rps: float, level: float) -> float:
    """``rps / level`` instances, bounded (a level of a denormal float is not infinite)."""
    return min(rps / level, 1e9) if level > 0 else 1e9


def judged_p99(cfg: AutoscaleConfig, budget_ms: float, sig: Signal) -> tuple[float, int]:
    """The p99 a latency target judges, and how many requests it is of.

    The p99 of the requests *sent* in the window when the edges say it and the budget is
    at most ``sent_share`` of the window: answers to a backlog sent before the window (the
    first instance's queue after a step, drained once more instances are ready) then do
    not count, so a backlog that drains does not ask for more instances. Otherwise (older
    edges, a budget near the window's length: no request sent in it could be seen over the
    budget by its end) the p99 of the requests answered in it."""
    if sig.p99_sent_ms is not None and budget_ms <= sig.window_s * 1000.0 * cfg.sent_share:
        return sig.p99_sent_ms, sig.sent
    return sig.p99_ms, sig.requests


def _p99_wish(
    cfg: AutoscaleConfig, a: Autoscale, st: ScaleState, sig: Signal, ready: int, now: float
) -> tuple[int, ScaleState, str, bool]:
    """:func:`_p99_judge` once per edge window: the plan loop also decides when something
    else changed (an instance turned ready), with the same window; it is not judged again
    (nothing is learned twice, and its figures are not divided by a count of instances it
    was not measured with)."""
    if sig.at and sig.at == st.seen_at and st.p99_wish is not None:
        wish, why = st.p99_wish
        return wish, st, why, False
    wish, st, why, panic = _p99_judge(cfg, a, st, sig, ready, now)
    return wish, replace(st, seen_at=sig.at, p99_wish=(wish, why)), why, panic


def _p99_judge(
    cfg: AutoscaleConfig, a: Autoscale, st: ScaleState, sig: Signal, ready: int, now: float
) -> tuple[int, ScaleState, str, bool]:
    """The wish of a latency target, and what was learned: (wish, state, why, panic).

    The p99 judged is :func:`judged_p99`'s (of the requests sent in the window, as a rule).

    Latency says *that* an app needs more, not how many; the load per instance says how
    many. So the state learns levels of load per ready instance: ``good``, the highest
    seen within the budget; ``bad``, the lowest seen over it (when the app cannot keep up:
    what it answers per instance, about what one instance carries; forgotten after
    ``forget_bad_s``, and at once when the app is seen within the budget at that load);
    ``cap``, what each instance answered while the app could not keep up.

    Only *clean* windows teach: the same instances ready for all of it (``steady_s``), and,
    for ``bad`` and ``cap``, over the budget in the window before too or with arrivals that
    did not rise into it (an overload that began inside the window, or instances that
    joined it partway, make the answers per instance look smaller than what one carries).
    An unclean window over the budget still moves the count, on its own figures (per
    instance that served all of it), but leaves nothing behind.

    * Over the budget in one window only, while the answers keep up with the arrivals:
      nothing (a blip of a busy machine; nothing is learned). An overload that the app
      cannot keep up with (a step) moves the count at once.
    * Over the budget: enough instances to bring the load per instance under ``bad`` (else
      ``cap``, else this window's level) by the tolerance, and at least one more than now
      once all have been ready for a whole window (not while a backlog drains: answers
      outpacing arrivals; nothing is learned from such a window either).
    * Within it: the fewest instances that keep the load per instance under ``good`` (and
      under ``bad``): a load that fell lets the count fall (a window that instances joined
      partway keeps the count); more than now only beyond the tolerance.
    * Within it, with ``cap`` known: the fewest that keep the load per instance under
      ``probe_util`` × ``cap`` (and ``bad``), if fewer than now.
    * Far within it (p99 under ``probe_below`` of the budget): one less than now, if
      ``bad`` does not forbid it. That is how an app never loaded learns it can carry more.
    """
    count, budget, tol = st.count, a.target, cfg.tolerance
    if st.bad and now - st.bad_at >= cfg.forget_bad_s:
        st = replace(st, bad=0.0)
    if sig.rps <= 0 and sig.requests == 0:
        return 0, replace(st, over=False, last_rps=0.0), "no requests", False
    basis = ready or count
    load = sig.rps / max(basis, 1)
    # the instances ready for the whole window (those that joined it served part of it)
    whole = min(n for _t, n in st.readies) if st.readies else basis
    steady = whole == ready > 0
    settling = now - st.unready_at < cfg.settle_s
    p99, samples = judged_p99(cfg, budget, sig)
    believed = samples >= cfg.min_samples and p99 > 0 and ready > 0 and not settling
    draining = sig.done_rps > sig.rps * (1 + tol)
    if believed and p99 > budget * (1 + tol):
        why = f"p99 {p99:g} ms over the {budget:g} ms budget at {sig.rps:g} rps"
        if not st.over and sig.done_rps >= sig.rps * (1 - tol):
            # a blip: one window over while the app keeps up with its arrivals (a busy
            # machine, a pause) says nothing of its capacity; a second in a row does
            why += ", keeping up: once is not enough"
            return count, replace(st, over=True, last_rps=sig.rps), why, False
        level = 0.0
        if not draining:
            served = sig.done_rps / max(whole, 1)
            level = min(sig.rps / max(whole, 1), served) if served > 0 else load
            # an overload that began inside the window (arrivals rose into it) is not
            # what one instance carries: only its answers while it lasted
            rose = sig.rps > st.last_rps * (1 + tol)
            if steady and (st.over or not rose):
                st = replace(st, bad=min(st.bad, level) if st.bad else level, bad_at=now)
                if sig.rps > sig.done_rps * (1 + tol) and served > 0:
                    st = replace(st, cap=max(st.cap, served))
        per = st.bad or st.cap or level
        wish = math.ceil(_per(sig.rps, per * (1 - tol))) if per else count
        if ready >= count and steady and not draining:
            wish = max(wish, count + 1)
        wish = max(wish, count)
        panic = p99 >= budget * cfg.panic_factor
        if draining:
            why += " (draining a backlog)"
        return wish, replace(st, over=True, last_rps=sig.rps), why, panic
    st = replace(st, over=False, last_rps=sig.rps)
    if believed and steady:
        st = replace(st, good=max(st.good, load))
        if st.bad and load >= st.bad:
            st = replace(st, bad=0.0)  # it carries this now: the old overload was a blip
    limit = st.good
    if st.bad:
        limit = min(limit, st.bad * (1 - tol)) if limit else st.bad * (1 - tol)
    if believed and not steady:
        wish = count
        why = f"{sig.rps:g} rps within the budget, instances joined within the window"
    elif limit > 0:
        wish = max(1, math.ceil(_per(sig.rps, limit) - 1e-9))
        if wish > count and sig.rps <= count * limit * (1 + tol):
            wish = count  # within the budget and the tolerance of the limit: no more
        why = f"{sig.rps:g} rps at up to {limit:.4g} rps per instance within the budget"
    elif settling:
        wish = count
        why = f"{sig.rps:g} rps, just started or woken: its p99 is the wait for it"
    else:
        wish = count
        why = f"{sig.rps:g} rps, too few answers to judge the p99"
    if believed and steady and st.cap and wish >= count:
        # the fewest that keep each instance under probe_util of what it was seen to answer
        fit = max(1, math.floor(_per(sig.rps, st.cap * cfg.probe_util)) + 1)
        if st.bad:
            fit = max(fit, math.ceil(_per(sig.rps, st.bad * (1 - tol)) - 1e-9))
        if fit < count:
            wish = fit
            why = (
                f"{sig.rps:g} rps: {fit} instance(s) stay under "
                f"{cfg.probe_util:.0%} of the {st.cap:.4g} rps one answers"
            )
    if (
        believed
        and wish >= count > max(1, a.min)
        and p99 < budget * cfg.probe_below
        and (not st.bad or sig.rps / (count - 1) < st.bad * (1 - tol))
    ):
        wish = count - 1
        why = f"p99 {p99:g} ms is far under the {budget:g} ms budget: trying one less"
    return wish, st, why, False


def _window(wishes: tuple[tuple[float, int], ...], since: float) -> list[int]:
    """The wishes in force at some time after ``since`` (each holds until the next)."""
    out: list[int] = []
    for i, (_t, w) in enumerate(wishes):
        end = wishes[i + 1][0] if i + 1 < len(wishes) else math.inf
        if end > since:
            out.append(w)
    return out


def decide(
    a: Autoscale,
    state: ScaleState | None,
    sig: Signal,
    now: float,
    *,
    ready: int,
    start: int,
    fit: int,
    digest: str = "",
    config: AutoscaleConfig | None = None,
) -> ScaleState:
    """One decision for one app. ``start``: the count to begin from when there is no
    state (what runs now, else the garden's ``instances``); ``ready``: instances serving;
    ``fit``: the most instances the credits allow (those placed plus what fits)."""
    cfg = config or AutoscaleConfig()
    if state is None:
        state = ScaleState(
            count=_clamp(start, a.min, a.max), started=now, last_request=now, changed=now
        )
    st = state
    if st.digest != digest:  # a new spore: what was learned of the old one does not hold
        st = replace(st, digest=digest, good=0.0, bad=0.0, bad_at=0.0, cap=0.0)
    if sig.active:
        st = replace(st, last_request=now)
    if ready == 0 or sig.held > 0:
        st = replace(st, unready_at=now)
    # the ready counts of the last ``steady_s`` (none known yet: as if ready for long)
    if not st.readies or st.readies[-1][1] != ready:
        readies = (*st.readies, (now if st.readies else -math.inf, ready))
    else:
        readies = st.readies
    while len(readies) > 1 and readies[1][0] <= now - cfg.steady_s:
        readies = readies[1:]
    st = replace(st, readies=readies)
    count = st.count
    panic = now < st.panic_until
    new, want, raw, why, blocked = count, count, count, "", ""

    if sig.edges == 0:
        new = _clamp(count, a.min if count else 0, a.max)
        why = blocked = "no edge reports requests: nothing to scale on (is an edge running?)"
    elif count == 0:
        if sig.active:
            new = want = raw = a.min
            why = f"woken: {sig.held} request(s) held, {sig.rps:g} rps at the edge"
        else:
            why = "at zero, no requests"
    elif (
        a.to_zero_after_s is not None
        and not sig.active
        and now - st.last_request >= a.to_zero_after_s
    ):
        new = want = raw = 0
        why = f"no request for {a.to_zero_after_s:g}s: scaled to zero"
        st = replace(st, wishes=())
    else:
        if a.target_kind == "p99_ms":
            want, st, why, hot = _p99_wish(cfg, a, st, sig, ready, now)
        else:
            load = sig.rps if a.target_kind == "rps_per_instance" else sig.inflight
            want = _ratio_wish(load, a.target, count, cfg.tolerance)
            hot = count > 0 and load >= cfg.panic_factor * a.target * count
            unit = "rps" if a.target_kind == "rps_per_instance" else "in flight"
            why = f"{load:g} {unit} for {a.target:g} per instance"
        raw = want
        want = _clamp(want, a.min, a.max)
        if hot and not panic:
            st = replace(st, panic_until=now + a.down.stabilize_s)
            panic = True
        elif hot:
            st = replace(st, panic_until=max(st.panic_until, now + a.down.stabilize_s))
        # No wish yet: the count in force was wished since it was set.
        wishes = st.wishes or ((st.changed, count),)
        if wishes[-1][1] != want:
            wishes = (*wishes, (now, want))
        keep_from = now - max(a.up.stabilize_s, a.down.stabilize_s)
        while len(wishes) > 1 and wishes[1][0] <= keep_from:
            wishes = wishes[1:]
        wishes = wishes[-cfg.max_history :]
        st = replace(st, wishes=wishes)
        up_to = min(_window(wishes, now - (0.0 if panic else a.up.stabilize_s)))
        down_to = max(_window(wishes, now - a.down.stabilize_s))
        if up_to > count:
            new = up_to
            if a.up.max_step:
                new = min(new, count + a.up.max_step)
        elif want < count and panic:
            why += "; panic: no scaling down"
        elif down_to < count:
            if now - st.started < a.down.stabilize_s:
                why += f"; down after {a.down.stabilize_s:g}s of history"
            else:
                new = down_to
                if a.down.max_step:
                    new = max(new, count - a.down.max_step)
        elif want > count:
            why += f"; up once wished for {a.up.stabilize_s:g}s"
        elif want < count:
            why += f"; down once wished for {a.down.stabilize_s:g}s"
        new = _clamp(new, a.min, a.max)

    pending = ""
    if new > count and new > fit:
        pending = f"Pending: no credits: wants {new}, the credits place {max(fit, count)}"
        new = max(count, fit)
    direction: Direction = "up" if new > count else "down" if new < count else "hold"
    if panic and direction != "down":
        why += " (panic)"
    decision = Decision(
        at=now,
        current=ready,
        desired=new,
        previous=count,
        want=raw,
        direction=direction,
        reason=why,
        panic=panic,
        pending=pending,
        blocked=blocked,
    )
    if new != count:
        st = replace(st, count=new, changed=now, last_change=decision)
    return replace(st, decision=decision)


# -- many apps, between plans ---------------------------------------------------------


def free_credits(
    desired: Desired, actual: Actual, agent_role: str = "agent"
) -> dict[str, Nutrients]:
    """Each eligible node's credits left: capacity (or its override) minus what the intents
    give it, as the plan's ledger starts out."""
    out: dict[str, Nutrients] = {}
    for node, rec in actual.nodes.items():
        if agent_role not in rec.roles or rec.draining or node in desired.drain:
            continue
        free = desired.capacity.get(node, rec.capacity)
        intent = actual.intents.get(node)
        for inst in intent.instances if intent is not None else ():
            free = free - inst.nutrients
        out[node] = free
    return out


def _capacity(desired: Desired, actual: Actual, agent_role: str) -> dict[str, Nutrients]:
    return {
        node: desired.capacity.get(node, rec.capacity)
        for node, rec in actual.nodes.items()
        if agent_role in rec.roles and not rec.draining and node not in desired.drain
    }


@dataclass
class Autoscaler:
    """The decisions of every autoscaled app between plans (see the module docstring).

    The driver calls :meth:`apply` before each plan with the fabric's ``edge/stats``
    values; it gets back the :class:`Desired` to plan and the decisions for the statuses.
    State lives in this object: a reconciler that takes over starts from the counts that
    run (the intents), not from the garden's ``instances``.
    """

    config: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    states: dict[str, ScaleState] = field(default_factory=dict)
    _scaled: dict[str, tuple[DesiredApp, int, DesiredApp]] = field(default_factory=dict)
    _last: dict[str, DesiredApp] | None = None

    def apply(
        self, desired: Desired, actual: Actual, edge_records: Iterable[object], now: float
    ) -> tuple[Desired, dict[str, Decision]]:
        role = self.config.agent_role
        edges, signals = merge_signals(edge_records)
        free = free_credits(desired, actual, role)
        capacity = _capacity(desired, actual, role)
        placed: dict[str, int] = {}
        per_digest: dict[tuple[str, str], int] = {}
        for rec in actual.intents.values():
            for inst in rec.instances:
                placed[inst.app] = placed.get(inst.app, 0) + 1
                key = (inst.app, inst.digest)
                per_digest[key] = per_digest.get(key, 0) + 1
        running: dict[str, int] = {}  # the largest set of one spore (not both of a rollout)
        for (app_name, _digest), n in per_digest.items():
            running[app_name] = max(running.get(app_name, 0), n)
        ready: dict[str, int] = {}
        for irec in actual.instances.values():
            if irec.phase == "ready" and irec.endpoint:
                ready[irec.app] = ready.get(irec.app, 0) + 1
        apps: dict[str, DesiredApp] = {}
        decisions: dict[str, Decision] = {}
        for name, app in desired.apps.items():
            a = app.spec.deployment.autoscale
            if a is None or app.spec.deployment.suspend or name in desired.suspended:
                apps[name] = app
                self.states.pop(name, None)
                continue
            need = app.spec.dna.nutrients
            homes = {
                n: f
                for n, f in free.items()
                if app.platform in ("", ANY) or runs_on(app.platform, actual.nodes[n].platforms)
            }
            fit = placed.get(name, 0) + fits(homes, need)
            sig = signals.get(name, Signal(edges=edges))
            if sig.edges != edges:
                sig = replace(sig, edges=edges)
            start = running.get(name) or app.spec.deployment.instances
            st = decide(
                a,
                self.states.get(name),
                sig,
                now,
                ready=ready.get(name, 0),
                start=start,
                fit=fit,
                digest=app.digest,
                config=self.config,
            )
            total = fits(capacity, need)
            if a.max > total and st.decision is not None:
                where = f"{a.where}: " if a.where else ""
                warning = (
                    f"{where}autoscale.max {a.max} is beyond the mesh's credits: "
                    f"{total} instance(s) of cpu_milli={need.cpu_milli}, "
                    f"memory_mb={need.memory_mb} fit"
                )
                st = replace(st, decision=replace(st.decision, warning=warning))
            self.states[name] = st
            if st.decision is not None:
                decisions[name] = st.decision
            apps[name] = self._with_count(name, app, st.count)
        for gone in [n for n in self.states if n not in desired.apps]:
            del self.states[gone]
        if self._last is not None and self._last.keys() == apps.keys():
            if all(self._last[n] is v for n, v in apps.items()):
                apps = self._last
        if all(apps[n] is desired.apps[n] for n in apps) and len(apps) == len(desired.apps):
            self._last = apps
            return desired, decisions
        self._last = apps
        return replace(desired, apps=apps), decisions

    def _with_count(self, name: str, app: DesiredApp, count: int) -> DesiredApp:
        """``app`` with ``instances = count``; the same object while neither changes."""
        hit = self._scaled.get(name)
        if hit is not None and hit[0] is app and hit[1] == count:
            return hit[2]
        dep = app.spec.deployment
        scaled = (
            app
            if dep.instances == count
            else replace(app, spec=replace(app.spec, deployment=replace(dep, instances=count)))
        )
        self._scaled[name] = (app, count, scaled)
        return scaled


def annotate(
    statuses: Mapping[str, Status], states: Mapping[str, ScaleState], desired: Desired
) -> dict[str, Status]:
    """The plan's statuses with each autoscaled app's ``autoscale`` block: current (ready),
    desired, min, max, target, the SLO's p99 budget (``budget_ms``), the last change of the
    count and why (``last``), and what holds it (``pending`` credits, ``blocked`` without an
    edge, ``panic``, ``warning``).

    Only what changes with a decision that matters is in it (not the live figures), so the
    garden record is not republished every second. A count the credits cut shows as the
    status reason ``Pending: no credits ...`` when nothing else is wrong.
    """
    out = dict(statuses)
    for name, st in states.items():
        status = out.get(name)
        app = desired.apps.get(name)
        d = st.decision
        if status is None or app is None or d is None or app.spec.deployment.autoscale is None:
            continue
        a = app.spec.deployment.autoscale
        last = st.last_change
        block: dict[str, Any] = {
            "current": status.ready,
            "desired": st.count,
            "min": a.min,
            "max": a.max,
            "target": {a.target_kind: a.target},
            # the p99 the app promises (the dashboard draws it against the edge's p99)
            "budget_ms": app.spec.dna.slo.p99_budget_ms,
            "to_zero_after_s": a.to_zero_after_s,
            "panic": d.panic,
            "pending": d.pending,
            "blocked": d.blocked,
            "warning": d.warning,
            "last": None
            if last is None
            else {
                "at": last.at,
                "previous": last.previous,
                "desired": last.desired,
                "direction": last.direction,
                "reason": last.reason,
            },
        }
        reason = status.reason or d.pending or d.blocked
        out[name] = replace(status, autoscale=block, reason=reason)
    return out
