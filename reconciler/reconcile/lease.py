"""The lease: any number of reconcilers, one active, with an epoch agents can trust.

Each reconciler publishes its own ``lease`` key (:class:`LeaseRecord`). There is no
consensus to lean on, only gossip, so the rule is made so that every member that sees the
same records draws the same conclusion:

* a record *holds* while it is unexpired and its owner is a live member of the fabric;
* the holder is the holding record with the highest ``(epoch, holder)``;
* with no holder, a reconciler *claims*: ``epoch = 1 + the highest epoch it has ever
  seen`` (leases and intents of live and gone members alike), then waits ``settle_s`` for
  rival claims to spread before it acts; the highest ``(epoch, holder)`` wins and the
  others withdraw their claims;
* the holder renews well before expiry; a holder that sees a higher holding record
  steps down at once.

A killed active reconciler is either declared dead by the fabric (its keys stop holding
at once) or stops renewing (its record expires after ``ttl_s``): the handover is bounded by
``ttl_s + settle_s`` plus one gossip round. Agents ignore intents from an epoch older than
one they have seen, so a deposed reconciler that has not noticed yet changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.core.lease import decide, read_leases
from reconciler.fabric.api import FabricAPI
from reconciler.records import KEY_LEASE, LeaseRecord

log = logging.getLogger("myco.reconciler.lease")


@dataclass(frozen=True)
class LeaseConfig:
    ttl_s: float = 3.0
    renew_s: float = 1.0
    settle_s: float = 0.6  # how long a claim waits for rival claims to arrive


class Lease:
    """Keeps (or waits for) the lease for ``fabric.name``; ``active`` says if it is ours."""

    def __init__(
        self,
        fabric: FabricAPI,
        config: LeaseConfig | None = None,
        wall: Callable[[], float] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.fabric = fabric
        self.config = config or LeaseConfig()
        self.wall = wall or time.time
        self.on_change = on_change or (lambda: None)
        self.epoch = 0
        self.active = False
        self.holder = ""
        self._claimed_at: float | None = None

    def step(self) -> None:
        """One look at the fabric: claim, confirm, renew or step down."""
        now = self.wall()
        me = self.fabric.name
        records, max_epoch = read_leases(self.fabric)
        view = decide(records, max_epoch, now)
        holder = view.holder
        was_active = self.active
        if holder is not None and holder.holder != me:
            # Somebody else holds (or won the claim race): follow, withdraw any claim.
            if self.active or self._claimed_at is not None:
                log.info("lease: %s holds epoch %d; standing by", holder.holder, holder.epoch)
                self.fabric.delete(KEY_LEASE)
            self.active = False
            self._claimed_at = None
            self.holder = holder.holder
        elif holder is not None and holder.holder == me and (self.active or self._claimed_at):
            if self.active:
                self._renew(holder.epoch, now)
            elif self._claimed_at is not None and now - self._claimed_at >= self.config.settle_s:
                self.active = True
                self.epoch = holder.epoch
                log.warning("lease: active with epoch %d", self.epoch)
                self._renew(holder.epoch, now)
            self.holder = me
        else:
            # Nobody holds: claim a new epoch above everything ever seen.
            self.active = False
            self.epoch = view.max_epoch + 1
            self._claimed_at = now
            self.holder = ""
            log.info("lease: claiming epoch %d", self.epoch)
            self.fabric.publish(
                KEY_LEASE,
                LeaseRecord(me, self.epoch, now + self.config.ttl_s).to_json(),
            )
        if was_active != self.active:
            self.on_change()

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
