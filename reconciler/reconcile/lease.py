"""The lease: any number of reconcilers, one active, with an epoch agents can trust.

Each reconciler publishes its own ``lease`` key (:class:`LeaseRecord`). There is no
consensus to lean on, only gossip, so the rule is made so that every member that sees the
same records draws the same conclusion:

* a record *holds* while it is unexpired and its owner is a live member of the fabric;
  unexpired *as this reconciler sees it*: another reconciler's record holds for ``ttl_s``
  from the moment this one saw it renewed (its ``expires_at`` changed), measured on this
  reconciler's own monotonic clock, so no wall clocks are compared across hosts and a
  reconciler whose clock is off (30 s ahead, say) neither takes the lease from a holder
  that renews nor loses it while it renews (its own record it judges by its own clock);
* the holder is the holding record with the highest ``(epoch, holder)``;
* with no holder, a reconciler *claims*: ``epoch = 1 + the highest epoch it has ever
  seen`` (leases and intents of live and gone members alike), then waits ``settle_s`` for
  rival claims to spread before it acts; the highest ``(epoch, holder)`` wins and the
  others withdraw their claims;
* the holder renews well before expiry; a holder that sees a higher holding record
  steps down at once;
* a reconciler that stands by deletes its intents and routes of an earlier tenure once
  the holder has published its own;
* epochs are never shared: a reconciler that just started may claim before its fabric
  has synced, and so claim the epoch a live holder or a dead predecessor already acted
  with (published intents or routes); agents order records of one epoch by writer name,
  so its plan from a partial view could win. Hence a claim whose epoch a *live* member
  acts with is withdrawn (that member holds; a holder keeps its lease against such a
  claim of its own epoch), a claim whose epoch a *gone* member acted with is made again
  above it, and a claim or a lease is made again above any higher epoch another member
  acted with or leased. A holder cut off from the others never changes its epoch (so a
  healed partition finds it below the new holder's).

The highest epoch seen is kept in the state directory (:meth:`Lease.remember`), and a
reconciler that just started only watches for ``startup_s`` before its first claim: a
fresh process could otherwise claim, and plan, from a fabric that has not synced yet.

A killed active reconciler is either declared dead by the fabric (its keys stop holding
at once) or stops renewing (its record expires after ``ttl_s``): the handover is bounded by
``ttl_s + settle_s`` plus one gossip round. Agents ignore intents from an epoch older than
one they have seen, so a deposed reconciler that has not noticed yet changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.core.lease import decide, read_leases
from reconciler.errors import ConfigError
from reconciler.fabric.api import FabricAPI
from reconciler.files import atomic_write
from reconciler.records import KEY_LEASE, PREFIX_INTENTS, PREFIX_ROUTES, LeaseRecord

log = logging.getLogger("myco.reconciler.lease")

#: For tests only: shifts this reconciler's wall clock (its lease records and its plan's
#: timestamps) by that many seconds, as a host whose clock is off would be (bench/chaos.py;
#: libfaketime slows a Python process down so much that its fabric membership flaps).
WALL_OFFSET_ENV = "MYCO_TEST_WALL_OFFSET_S"


def wall_clock(environ: Mapping[str, str] = os.environ) -> Callable[[], float]:
    """``time.time``, shifted by ``$MYCO_TEST_WALL_OFFSET_S`` seconds when that is set."""
    raw = environ.get(WALL_OFFSET_ENV, "").strip()
    if not raw:
        return time.time
    try:
        offset = float(raw)
    except ValueError:
        raise ConfigError(f"{WALL_OFFSET_ENV}={raw!r}: not a number of seconds") from None
    log.warning("wall clock shifted by %+g s (%s: for tests only)", offset, WALL_OFFSET_ENV)
    return lambda: time.time() + offset


@dataclass(frozen=True)
class LeaseConfig:
    ttl_s: float = 3.0
    renew_s: float = 1.0
    settle_s: float = 0.6  # how long a claim waits for rival claims to arrive
    #: how long a reconciler that just started only watches before it may claim (its
    #: fabric syncs meanwhile, so it sees a live holder and the epochs in use)
    startup_s: float = 0.0


@dataclass(frozen=True)
class UsedEpochs:
    """What other members did with which epoch, as this reconciler's fabric shows it."""

    live: dict[str, int]  # live member -> the highest epoch of its intents and routes
    mine: int  # the highest epoch of this member's own intents and routes
    gone: int  # the highest epoch of a gone member's intents and routes
    leased: int  # the highest epoch of another member's lease record (live or gone)


class Lease:
    """Keeps (or waits for) the lease for ``fabric.name``; ``active`` says if it is ours.

    ``wall`` stamps this reconciler's own records; ``monotonic`` measures how long since
    another's record was renewed (default: ``time.monotonic``, or ``wall`` when only that
    is injected, so tests on a virtual clock stay exact)."""

    def __init__(
        self,
        fabric: FabricAPI,
        config: LeaseConfig | None = None,
        wall: Callable[[], float] | None = None,
        on_change: Callable[[], None] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.fabric = fabric
        self.config = config or LeaseConfig()
        self.wall = wall or time.time
        self.monotonic = monotonic or wall or time.monotonic
        self.on_change = on_change or (lambda: None)
        self.epoch = 0
        self.active = False
        self.holder = ""
        self._claimed_at: float | None = None
        #: owner -> ((epoch, expires_at) last seen, monotonic time it was first seen)
        self._renewed: dict[str, tuple[tuple[int, float], float]] = {}
        self._started: float | None = None  # monotonic time of the first step
        self._memory: Path | None = None
        self._remembered = 0  # the highest epoch seen, kept across restarts (remember())

    def remember(self, path: Path) -> None:
        """Keep the highest epoch seen in ``path``: read now, written whenever it grows. A
        restarted reconciler then claims above it even once the fabric has forgotten the
        records of that epoch (a dead holder's are reaped a while after it died)."""
        self._memory = path
        try:
            self._remembered = int(json.loads(path.read_text(encoding="utf-8"))["epoch"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("lease: ignoring %s: %s", path, exc)

    def _note(self, epoch: int) -> None:
        if epoch > self._remembered:
            self._remembered = epoch
            if self._memory is not None:
                try:
                    atomic_write(self._memory, json.dumps({"epoch": epoch}) + "\n")
                except OSError as exc:
                    log.warning("lease: cannot keep the epoch in %s: %s", self._memory, exc)

    def local_view(self, records: Mapping[str, LeaseRecord], now: float) -> dict[str, LeaseRecord]:
        """The records with others' expiry on this reconciler's clock: ``ttl_s`` after this
        reconciler saw each one renewed (see the module doc); its own record as written."""
        mono = self.monotonic()
        renewed: dict[str, tuple[tuple[int, float], float]] = {}
        out: dict[str, LeaseRecord] = {}
        for owner, rec in records.items():
            if owner == self.fabric.name:
                out[owner] = rec
                continue
            stamp = (rec.epoch, rec.expires_at)
            seen = self._renewed.get(owner)
            since = seen[1] if seen is not None and seen[0] == stamp else mono
            renewed[owner] = (stamp, since)
            out[owner] = replace(rec, expires_at=now + self.config.ttl_s - (mono - since))
        self._renewed = renewed
        return out

    def step(self) -> None:
        """One look at the fabric: claim, confirm, renew, withdraw or step down."""
        now = self.wall()
        me = self.fabric.name
        records, max_epoch = read_leases(self.fabric)
        view = decide(self.local_view(records, now), max_epoch, now)
        holder = view.holder
        was_active = self.active
        used = self.used_epochs()
        self._note(max(view.max_epoch, used.gone, *used.live.values()))
        if self._started is None:
            self._started = self.monotonic()
        if holder is not None and holder.holder != me:
            if (
                self.active
                and holder.epoch == self.epoch
                and used.live.get(holder.holder, 0) < holder.epoch
                and used.mine >= self.epoch
            ):
                # A claim of our epoch by a member that has not acted with it, while we have:
                # it claimed before its fabric showed our lease, and withdraws once it does.
                self._renew(self.epoch, now)
            else:
                # Somebody else holds (or won the claim race): follow, withdraw any claim.
                if self.active or self._claimed_at is not None:
                    log.info("lease: %s holds epoch %d; standing by", holder.holder, holder.epoch)
                    self.fabric.delete(KEY_LEASE)
                self.active = False
                self._claimed_at = None
                self.holder = holder.holder
                if used.live.get(holder.holder, 0) >= holder.epoch:
                    self._withdraw_plans()
        elif holder is not None and holder.holder == me and (self.active or self._claimed_at):
            epoch = holder.epoch
            acting = max(used.live.values(), default=0)
            if not self.active and acting == epoch:
                # A live member acts with the epoch just claimed: this claim was made from
                # a view that did not show it yet. It holds; withdraw.
                log.info("lease: epoch %d is in use by a live member; withdrawing", epoch)
                self.fabric.delete(KEY_LEASE)
                self._claimed_at = None
                self.holder = ""
            elif (
                acting > epoch
                or used.leased > epoch
                or used.gone > epoch
                or (used.gone == epoch and not self.active)
            ):
                # Records of a higher epoch exist, or (for a claim) a gone member's of this
                # one, e.g. a predecessor's that came late: agents would not tell ours from
                # theirs, so claim above them. (A holder keeps its epoch against a gone
                # member's of the same one: it acted with it first, or won the tie.)
                log.warning("lease: epoch %d is already used; claiming again", epoch)
                top = max(acting, used.gone, used.leased, view.max_epoch, self._remembered)
                self._claim(top + 1, now)
            elif self.active:
                self._renew(epoch, now)
            elif self._claimed_at is not None and now - self._claimed_at >= self.config.settle_s:
                self.active = True
                self.epoch = epoch
                log.warning("lease: active with epoch %d", self.epoch)
                self._renew(epoch, now)
                self.holder = me
            else:
                self.holder = me
        elif self.monotonic() - self._started < self.config.startup_s:
            self.holder = ""  # just started: watch a while before claiming (LeaseConfig)
        else:
            # Nobody holds: claim a new epoch above everything ever seen.
            self._claim(max(view.max_epoch, self._remembered) + 1, now)
        if was_active != self.active:
            self.on_change()

    def _claim(self, epoch: int, now: float) -> None:
        self.active = False
        self.epoch = epoch
        self._claimed_at = now
        self.holder = ""
        log.info("lease: claiming epoch %d", epoch)
        self.fabric.publish(
            KEY_LEASE, LeaseRecord(self.fabric.name, epoch, now + self.config.ttl_s).to_json()
        )

    def _withdraw_plans(self) -> None:
        """Delete this member's intents and routes of an earlier tenure, once the holder has
        published its own: agents and edges ignore them (older epoch), but an agent waits
        for a withered instance's endpoint to leave every route, so a stale route of a
        deposed holder would hold each wither up to its drain timeout."""
        me = self.fabric.name
        for prefix in (PREFIX_INTENTS, PREFIX_ROUTES):
            for owner, key in list(self.fabric.view(prefix)):
                if owner == me:
                    self.fabric.delete(key)

    def used_epochs(self) -> UsedEpochs:
        """The epochs other members used: see :class:`UsedEpochs`."""
        me = self.fabric.name
        live: dict[str, int] = {}
        acted_any = 0
        for prefix in (PREFIX_INTENTS, PREFIX_ROUTES):
            for (owner, _), value in self.fabric.view(prefix).items():
                epoch = value.get("epoch") if isinstance(value, dict) else None
                if isinstance(epoch, int):
                    live[owner] = max(live.get(owner, 0), epoch)
        mine = live.pop(me, 0)
        for prefix in (PREFIX_INTENTS, PREFIX_ROUTES):
            for (owner, _), value in self.fabric.view(prefix, include_gone=True).items():
                epoch = value.get("epoch") if owner != me and isinstance(value, dict) else None
                if isinstance(epoch, int) and owner not in live:
                    acted_any = max(acted_any, epoch)
        leased = 0
        for (owner, _), value in self.fabric.view(KEY_LEASE, include_gone=True).items():
            epoch = value.get("epoch") if owner != me and isinstance(value, dict) else None
            if isinstance(epoch, int):
                leased = max(leased, epoch)
        return UsedEpochs(live, mine, acted_any, leased)

    def _renew(self, epoch: int, now: float) -> None:
        self.fabric.publish(
            KEY_LEASE,
            LeaseRecord(self.fabric.name, epoch, now + self.config.ttl_s).to_json(),
        )

    async def run(self) -> None:
        """Step every ``renew_s`` (faster while a claim settles) until cancelled."""
        while True:
            self.step()
            pause = self.config.renew_s
            if self._claimed_at is not None and not self.active:
                pause = min(pause, self.config.settle_s / 2)
            await asyncio.sleep(pause)

    def release(self) -> None:
        """Give the lease up (a clean shutdown): others may claim at once."""
        if self.active or self._claimed_at is not None:
            self.fabric.delete(KEY_LEASE)
        self.active = False
        self._claimed_at = None
