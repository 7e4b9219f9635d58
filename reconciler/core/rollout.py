"""One app's plan: its instances, its route, its rollout state and its status.

:func:`plan_app` is pure: it reads the app's desired spec and digest, the app's current
placements and their reports, its route and rollout state, and returns what they should
become. Instances leave in two steps: a *retired* instance is first listed as draining in
the route (the edge stops sending new requests) and withered from the intents
``PlanConfig.drain_s`` later; an instance that is not routed leaves at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from reconciler.core.ledger import ANY, Ledger
from reconciler.core.model import (
    CANARY,
    DEGRADED,
    HEALTHY,
    IDLE,
    INVALID_SPEC,
    MISSING,
    OUT_OF_SYNC,
    PROGRESSING,
    PROMOTING,
    ROLLING,
    STARTING,
    SUSPENDED,
    SYNCED,
    WARMING,
    Placement,
    PlanConfig,
    RolloutState,
    Status,
)
from reconciler.model import AppSpec
from reconciler.records import Backend, InstanceRecord, IntentInstance, RouteRecord

Mode = Literal["active", "frozen", "prune"]


@dataclass
class AppInput:
    name: str
    mode: Mode
    spec: AppSpec | None
    digest: str
    placed: dict[str, Placement]  # instance id -> placement (on live nodes only)
    instances: Mapping[str, InstanceRecord]
    route: RouteRecord | None
    state: RolloutState
    epoch: int
    revision: str
    fetch_urls: tuple[str, ...]
    prefix: str = ""
    waiting_on: tuple[str, ...] = ()  # dependencies not Healthy yet
    frozen_reason: str = ""  # why a frozen app is frozen (invalid spec, suspended...)
    invalid: bool = False
    suspended: bool = False
    lost: int = 0  # placements that were on nodes gone from the fabric
    platform: str = ""  # the platform the spore ``digest`` was built for ("" or "any": all)
    #: the oldest route generation a live edge serves (None: no edge reports)
    edges_serve: int | None = None


#: how often a drained instance waiting for the edges' confirmation is looked at again
CONFIRM_POLL_S = 0.25


@dataclass
class AppOutcome:
    placed: dict[str, Placement]
    route: RouteRecord | None
    state: RolloutState | None
    status: Status | None
    wakeup: float | None = None
    pending: int = 0
    removed_any: bool = False


@dataclass
class _Work:
    """Mutable scratch for one app during one plan."""

    inp: AppInput
    ledger: Ledger
    cfg: PlanConfig
    now: float
    placed: dict[str, Placement]
    retiring: dict[str, float]
    next_seq: int
    wakes: list[float] = field(default_factory=list)
    pending: int = 0
    removed_any: bool = False
    unmatched: str = ""  # a platform no eligible node runs (why instances are pending)

    # -- platforms --------------------------------------------------------------------

    def platform_of(self, digest: str) -> str:
        """The platform ``digest`` was built for: the desired one's, the stable one's, or
        "" (unknown: any node) for another."""
        if digest == self.inp.digest:
            return self.inp.platform
        if digest == self.inp.state.stable:
            return self.inp.state.platform
        return ""

    def homes(self, digest: str) -> frozenset[str]:
        """The eligible nodes that run ``digest``'s platform."""
        return self.ledger.eligible_for(self.platform_of(digest))

    # -- instance helpers -------------------------------------------------------------

    def ready(self, iid: str) -> bool:
        rec = self.inp.instances.get(iid)
        return rec is not None and rec.phase == "ready" and bool(rec.endpoint)

    def failed(self, iid: str) -> bool:
        rec = self.inp.instances.get(iid)
        return rec is not None and rec.phase == "failed"

    def active(self, digest: str | None = None) -> list[str]:
        """Instances not retiring (of ``digest``, if given), sorted by id."""
        return sorted(
            iid
            for iid, p in self.placed.items()
            if iid not in self.retiring and (digest is None or p.inst.digest == digest)
        )

    def template(self, digest: str) -> IntentInstance | None:
        for p in self.placed.values():
            if p.inst.digest == digest:
                return p.inst
        return None

    def remove(self, iid: str) -> None:
        p = self.placed.pop(iid)
        self.retiring.pop(iid, None)
        self.ledger.give(p.node, p.inst.nutrients)
        self.removed_any = True

    def retire(self, iid: str) -> None:
        """Drain then wither a routed instance; wither an unrouted one at once."""
        if iid in self.retiring:
            return
        route = self.inp.route
        routed = route is not None and any(b.instance_id == iid for b in route.backends)
        if routed and self.ready(iid) and self.cfg.drain_s > 0:
            until = self.now + self.cfg.drain_s
            self.retiring[iid] = until
            self.wakes.append(until)
        else:
            self.remove(iid)

    def spread(self, digest: str | None = None) -> dict[str, int]:
        """Active instances per node (of ``digest``, if given)."""
        out: dict[str, int] = {}
        for iid in self.active(digest):
            node = self.placed[iid].node
            out[node] = out.get(node, 0) + 1
        return out

    def add(self, tmpl: IntentInstance, count: int) -> int:
        """Place ``count`` new instances like ``tmpl``; returns how many found no node.

        The new instances spread among themselves first (a rollout's new set never piles
        onto the node its old set left free), then among all of the app's instances.
        """
        platform = self.platform_of(tmpl.digest)
        nodes = self.ledger.place(
            tmpl.nutrients, count, self.spread(), same=self.spread(tmpl.digest), platform=platform
        )
        if len(nodes) < count and platform not in ("", ANY) and not self.homes(tmpl.digest):
            self.unmatched = platform
        short = tmpl.digest.split(":")[-1][:8]
        for node in nodes:
            iid = f"{self.inp.name}-{short}-{self.next_seq}"
            self.next_seq += 1
            self.placed[iid] = Placement(node, replace(tmpl, instance_id=iid))
        return count - len(nodes)

    def ensure(self, digest: str, n: int, tmpl: IntentInstance | None) -> list[str]:
        """Keep ``n`` instances of ``digest`` on eligible nodes; returns them.

        A node that does not run the digest's platform (any more) counts as ineligible.
        """
        homes = self.homes(digest)
        mine = self.active(digest)
        home = [i for i in mine if self.placed[i].node in homes]
        away = [i for i in mine if self.placed[i].node not in homes]
        if len(home) < n and tmpl is not None:
            self.pending += self.add(tmpl, n - len(home))
            mine = self.active(digest)
            home = [i for i in mine if self.placed[i].node in homes]
        elif len(home) > n:
            for iid in self.choose_victims(home, len(home) - n):
                self.retire(iid)
                home.remove(iid)
        # Instances on draining nodes leave once their replacements are ready.
        if away and sum(1 for i in home if self.ready(i)) >= n:
            for iid in away:
                self.retire(iid)
        return home

    def choose_victims(self, candidates: list[str], count: int) -> list[str]:
        spread = self.spread()

        def key(iid: str) -> tuple[bool, int, int, str]:
            seq = iid.rsplit("-", 1)[-1]
            return (
                self.ready(iid),
                -spread.get(self.placed[iid].node, 0),
                -int(seq) if seq.isdigit() else 0,
                iid,
            )

        return sorted(candidates, key=key)[:count]

    # -- route -----------------------------------------------------------------------

    def route(self, weights: Mapping[str, int]) -> RouteRecord:
        backends = []
        for iid in sorted(weights):
            rec = self.inp.instances.get(iid)
            if rec is not None and rec.endpoint and weights[iid] > 0:
                backends.append(Backend(iid, rec.endpoint, weights[iid]))
        draining = sorted(
            {
                rec.endpoint
                for iid in self.retiring
                if (rec := self.inp.instances.get(iid)) is not None and rec.endpoint
            }
        )
        spec = self.inp.spec
        auto = spec.deployment.autoscale if spec is not None else None
        return RouteRecord(
            app=self.inp.name,
            prefix=self.inp.prefix,
            epoch=self.inp.epoch,
            backends=tuple(backends),
            draining=tuple(draining),
            revision=self.inp.route.revision if self.inp.route else "",
            hold_s=self.cfg.hold_s if auto is not None and auto.to_zero_after_s else 0.0,
        )


def plan_app(inp: AppInput, ledger: Ledger, cfg: PlanConfig, now: float) -> AppOutcome:
    st = inp.state
    w = _Work(
        inp=inp,
        ledger=ledger,
        cfg=cfg,
        now=now,
        placed=dict(inp.placed),
        retiring={i: u for i, u in st.retiring if i in inp.placed},
        next_seq=st.next_seq,
    )
    # Finish retirements that have drained and that no edge routes new requests to.
    for iid, until in sorted(w.retiring.items()):
        if now < until:
            w.wakes.append(until)
        elif _edges_stopped_sending(inp, iid) or now >= until - cfg.drain_s + cfg.drain_confirm_s:
            w.remove(iid)
        else:
            w.wakes.append(min(now + CONFIRM_POLL_S, until - cfg.drain_s + cfg.drain_confirm_s))

    if inp.mode == "prune":
        return _prune(w)
    if inp.mode == "frozen" or inp.spec is None or not inp.digest:
        return _frozen(w)
    return _active(w, inp.spec)


def _edges_stopped_sending(inp: AppInput, iid: str) -> bool:
    """Whether every live edge serves a route in which ``iid`` gets no new requests: the
    published route no longer lists it as a backend and no edge serves an older one.

    With no edge reporting (none in the mesh, or edges that predate the report) there is
    nothing to wait for: the drain time alone decides."""
    served, route = inp.edges_serve, inp.route
    if served is None or route is None:
        return True
    return served >= route.generation and all(b.instance_id != iid for b in route.backends)


def _finish(
    w: _Work, state: RolloutState | None, weights: Mapping[str, int], status: Status
) -> AppOutcome:
    route = w.route(weights)
    if state is not None:
        state = replace(state, next_seq=w.next_seq, retiring=tuple(sorted(w.retiring.items())))
        route = replace(route, revision=state.revision)
    # The generation grows with every change of the route's content (edges report it).
    prev = w.inp.route
    generation = prev.generation if prev is not None else 0
    if prev is None or replace(route, generation=generation) != prev:
        generation += 1
    route = replace(route, generation=generation)
    return AppOutcome(
        placed=w.placed,
        route=route,
        state=state,
        status=status,
        wakeup=min(w.wakes) if w.wakes else None,
        pending=w.pending,
        removed_any=w.removed_any,
    )


def _prune(w: _Work) -> AppOutcome:
    for iid in w.active():
        w.retire(iid)
    if not w.placed:
        return AppOutcome(placed={}, route=None, state=None, status=None, removed_any=True)
    status = Status(
        sync=OUT_OF_SYNC,
        health=PROGRESSING,
        reason="pruning: manifest removed from the garden",
        revision=w.inp.revision,
    )
    return _finish(w, w.inp.state, {}, status)


def _frozen(w: _Work) -> AppOutcome:
    """Invalid, suspended, or waiting for its spore: keep the instances as they are."""
    inp = w.inp
    active = w.active()
    ready = [i for i in active if w.ready(i)]
    weights = {i: 1 for i in ready}
    if inp.route is not None:  # keep the routing as it was (weights of a canary included)
        routed = {b.instance_id: b.weight for b in inp.route.backends}
        weights = {i: routed.get(i, 1) for i in ready if i in routed} or weights
    desired = inp.spec.deployment.instances if inp.spec else len(active)
    if inp.suspended:
        health = SUSPENDED
    elif not active:
        health = MISSING
    elif any(w.failed(i) for i in active):
        health = DEGRADED
    elif len(ready) == len(active):
        health = HEALTHY
    else:
        health = PROGRESSING
    sync = INVALID_SPEC if inp.invalid else OUT_OF_SYNC
    if not inp.invalid and inp.digest and inp.spec is not None:
        if _synced(w, inp.digest, inp.spec.deployment.instances, inp.state):
            sync = SYNCED
    reason = inp.frozen_reason or ("waiting for the spore to be built" if not inp.digest else "")
    status = Status(
        sync=sync,
        health=health,
        reason=reason,
        spec_digest=inp.digest or inp.state.stable,
        desired=desired,
        ready=len(ready),
        rollout=inp.state.phase,
        revision=inp.state.revision if inp.invalid else inp.revision,
    )
    if inp.route is None and not inp.placed:
        # Nothing runs yet: publish an empty route only for a valid app (503 until ready).
        if inp.invalid or inp.spec is None:
            return AppOutcome(placed=w.placed, route=None, state=None, status=status)
    return _finish(w, inp.state, weights, status)


def _synced(w: _Work, digest: str, n: int, state: RolloutState) -> bool:
    active = w.active()
    return (
        state.stable == digest
        and len(active) == n
        and all(w.placed[i].inst.digest == digest for i in active)
        and all(w.placed[i].node in w.homes(digest) for i in active)
        and not w.retiring
    )


def _active(w: _Work, spec: AppSpec) -> AppOutcome:
    inp = w.inp
    now = w.now
    d = inp.digest
    n = spec.deployment.instances
    ro = spec.deployment.rollout
    st = inp.state
    tmpl_new = IntentInstance(
        instance_id="",
        app=inp.name,
        digest=d,
        version=spec.dna.version,
        nutrients=spec.dna.nutrients,
        fetch_urls=inp.fetch_urls,
    )
    reason = ""

    # Nothing of the stable set is left (a fresh app, or everything was lost): no old
    # version to protect, so the desired one becomes stable directly.
    if not w.active(st.stable) or not st.stable:
        if not w.active() and inp.waiting_on:
            status = Status(
                sync=OUT_OF_SYNC,
                health=MISSING,
                reason="waiting for dependencies: " + ", ".join(inp.waiting_on),
                spec_digest=d,
                desired=n,
                revision=inp.revision,
            )
            return _finish(w, st, {}, status)
        if st.stable != d:
            st = replace(
                st,
                stable=d,
                target="",
                phase=IDLE,
                since=now,
                revision=inp.revision,
                platform=inp.platform,
            )
    if st.stable == d and st.platform != inp.platform:
        st = replace(st, platform=inp.platform)  # a state from before platforms were kept

    if d != st.stable and d == st.failed:
        # A reverted target: keep serving the stable set until the garden changes it.
        st = replace(st, target="", phase=IDLE)
        reason = st.reason
    elif d != st.stable and st.target != d:
        # A new target (perhaps superseding one in flight): start over towards it.
        st = replace(
            st,
            target=d,
            phase=ROLLING if ro.strategy == "rolling" else STARTING,
            since=now,
            started=now,
            step=0,
            failed="",
            reason="",
            revision=inp.revision,
        )
    elif d == st.stable and (st.target or st.phase != IDLE):
        st = replace(st, target="", phase=IDLE)

    weights: dict[str, int]
    if not st.target:
        weights = _steady(w, st, n, tmpl_new)
    elif ro.strategy == "rolling":
        st, weights = _rolling(w, st, n, ro.max_surge, ro.max_unavailable, tmpl_new)
    elif ro.strategy == "canary":
        st, weights = _canary(w, st, spec, tmpl_new)
    else:
        st, weights = _blue_green(w, st, n, ro.warmup_s, tmpl_new)

    if st.target:
        deadline = st.started + ro.progress_deadline_s
        if now >= deadline and not reason:
            reason = f"progress deadline of {ro.progress_deadline_s:g}s exceeded"
        elif now < deadline:
            w.wakes.append(deadline)
    if st.failed and not reason and st.failed == d:
        reason = st.reason
    return _finish(w, st, weights, _status(w, st, n, reason))


def _steady(w: _Work, st: RolloutState, n: int, tmpl: IntentInstance) -> dict[str, int]:
    for iid in w.active():
        if w.placed[iid].inst.digest != st.stable:
            w.retire(iid)
    w.ensure(st.stable, n, w.template(st.stable) or tmpl)
    return {i: 1 for i in w.active(st.stable) if w.ready(i)}


def _retire_others(w: _Work, keep: set[str]) -> None:
    for iid in w.active():
        if w.placed[iid].inst.digest not in keep:
            w.retire(iid)


def _blue_green(
    w: _Work, st: RolloutState, n: int, warmup_s: float, tmpl: IntentInstance
) -> tuple[RolloutState, dict[str, int]]:
    _retire_others(w, {st.stable, st.target})
    w.ensure(st.stable, n, w.template(st.stable))
    new = w.ensure(st.target, n, tmpl)
    all_ready = sum(1 for i in new if w.ready(i)) >= n
    if st.phase == STARTING and all_ready:
        st = replace(st, phase=WARMING, since=w.now)
    elif st.phase == WARMING and not all_ready:
        st = replace(st, phase=STARTING, since=w.now)
    if st.phase == WARMING:
        if w.now >= st.since + warmup_s:
            return _switch(w, st, n, tmpl)
        w.wakes.append(st.since + warmup_s)
    return st, {i: 1 for i in w.active(st.stable) if w.ready(i)}


def _switch(
    w: _Work, st: RolloutState, n: int, tmpl: IntentInstance
) -> tuple[RolloutState, dict[str, int]]:
    """Route to the target set only; the old set drains, then withers."""
    platform = w.platform_of(st.target)
    st = replace(
        st, stable=st.target, target="", phase=IDLE, since=w.now, step=0, platform=platform
    )
    return st, _steady(w, st, n, tmpl)


def _rolling(
    w: _Work, st: RolloutState, n: int, surge: int, unavailable: int, tmpl: IntentInstance
) -> tuple[RolloutState, dict[str, int]]:
    surge = max(0, surge)
    unavailable = max(0, unavailable)
    if surge == 0 and unavailable == 0:
        surge = 1
    min_ready = max(0, n - unavailable)
    new = w.active(st.target)
    if len(new) > n:
        for iid in w.choose_victims(new, len(new) - n):
            w.retire(iid)
    old = [i for i in w.active() if w.placed[i].inst.digest != st.target]
    # Old instances that do not serve go first: removing them costs no availability.
    for iid in [i for i in old if not w.ready(i)]:
        w.retire(iid)
    old = [i for i in old if w.ready(i)]
    ready_total = len(old) + sum(1 for i in w.active(st.target) if w.ready(i))
    removable = ready_total - min_ready
    for iid in w.choose_victims(old, max(0, min(removable, len(old)))):
        w.retire(iid)
    total = len(w.active())
    new_count = len(w.active(st.target))
    room = min(n - new_count, n + surge - total)
    if room > 0:
        w.pending += w.add(tmpl, room)
    if not [i for i in w.active() if w.placed[i].inst.digest != st.target]:
        new_ready = sum(1 for i in w.active(st.target) if w.ready(i))
        if new_ready >= n:
            return _switch(w, st, n, tmpl)
    return st, {i: 1 for i in w.active() if w.ready(i)}


def _canary_failure(w: _Work, digest: str) -> str:
    for iid in w.active(digest):
        rec = w.inp.instances.get(iid)
        if rec is None:
            continue
        if rec.phase == "failed":
            return f"canary {iid} failed: {rec.message or 'crash loop'}"
        if rec.restarts > 0:
            return f"canary {iid} restarted {rec.restarts} time(s)"
    return ""


def _canary(
    w: _Work, st: RolloutState, spec: AppSpec, tmpl: IntentInstance
) -> tuple[RolloutState, dict[str, int]]:
    ro = spec.deployment.rollout
    n = spec.deployment.instances
    steps = tuple(s for s in ro.canary_steps if 0 < s <= 100) or (
        max(1, min(100, ro.canary_weight)),
    )
    count = min(n, max(1, math.ceil(n * max(steps) / 100))) if n > 0 else 0
    _retire_others(w, {st.stable, st.target})
    failure = _canary_failure(w, st.target)
    if not failure and w.now >= st.started + ro.progress_deadline_s:
        failure = f"progress deadline of {ro.progress_deadline_s:g}s exceeded"
    if failure:
        for iid in w.active(st.target):
            w.retire(iid)
        failed = st.target
        st = replace(st, target="", phase=IDLE, failed=failed, reason=f"reverted: {failure}")
        return st, _steady(w, st, n, w.template(st.stable) or tmpl)
    w.ensure(st.stable, n, w.template(st.stable))
    size = n if st.phase == PROMOTING else count
    new = w.ensure(st.target, size, tmpl)
    all_ready = sum(1 for i in new if w.ready(i)) >= size
    if st.phase == STARTING and all_ready:
        st = replace(st, phase=CANARY, since=w.now, step=0)
    if st.phase == CANARY:
        if w.now >= st.since + ro.warmup_s:
            if st.step + 1 < len(steps):
                st = replace(st, step=st.step + 1, since=w.now)
            else:
                st = replace(st, phase=PROMOTING, since=w.now)
                new = w.ensure(st.target, n, tmpl)
                all_ready = sum(1 for i in new if w.ready(i)) >= n
        if st.phase == CANARY:
            w.wakes.append(st.since + ro.warmup_s)
    if st.phase == PROMOTING and all_ready:
        return _switch(w, st, n, tmpl)
    old_ready = [i for i in w.active(st.stable) if w.ready(i)]
    new_ready = [i for i in w.active(st.target) if w.ready(i)]
    if st.phase == STARTING or not new_ready:
        return st, {i: 1 for i in old_ready}
    if not old_ready:
        return st, {i: 1 for i in new_ready}
    weight = steps[min(st.step, len(steps) - 1)]
    weights = {i: (100 - weight) * len(new_ready) for i in old_ready}
    weights.update({i: weight * len(old_ready) for i in new_ready})
    return st, weights


def _status(w: _Work, st: RolloutState, n: int, reason: str) -> Status:
    inp = w.inp
    d = inp.digest
    active = w.active()
    ready_d = sum(1 for i in w.active(d) if w.ready(i))
    failed = [i for i in active if w.failed(i)]
    sync = SYNCED if _synced(w, d, n, st) else OUT_OF_SYNC
    if w.pending:
        nut = inp.spec.dna.nutrients if inp.spec else None
        need = f" (needs cpu_milli={nut.cpu_milli}, memory_mb={nut.memory_mb})" if nut else ""
        if w.unmatched:
            reason = reason or f"Pending: no node matches platform {w.unmatched}"
        reason = reason or f"Pending: {w.pending} instance(s) fit on no node{need}"
    if failed and not reason:
        rec = inp.instances.get(failed[0])
        detail = rec.message if rec is not None and rec.message else "crash loop"
        reason = f"{len(failed)} instance(s) failed: {failed[0]}: {detail}"
    if inp.lost and not reason:
        reason = f"replacing {inp.lost} instance(s) lost with their node"
    if failed or w.pending or (st.failed and st.failed == d) or "deadline" in reason:
        health = DEGRADED
    elif not active and n > 0:
        health = MISSING
    elif sync == SYNCED and ready_d >= n and not st.target:
        health = HEALTHY
    else:
        health = PROGRESSING
    if not reason and st.target:
        reason = f"{st.phase}: {ready_d}/{n} ready of {d[:12]}"
    elif not reason and health == PROGRESSING:
        reason = f"{ready_d}/{n} ready"
    return Status(
        sync=sync,
        health=health,
        reason=reason,
        spec_digest=d,
        desired=n,
        ready=ready_d,
        rollout=st.phase if st.target else IDLE,
        revision=inp.revision,
    )
