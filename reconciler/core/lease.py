"""The lease rule, pure: which reconciler's lease record holds, from the records alone.

Every member that sees the same records draws the same conclusion (see
:mod:`reconciler.reconcile.lease` for the protocol around it). Used by the reconciler that
keeps or claims the lease and by the client that looks for the active reconciler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.errors import FabricError
from reconciler.records import KEY_LEASE, PREFIX_INTENTS, PREFIX_ROUTES, LeaseRecord


class RecordView(Protocol):
    """What the rule reads of the fabric (a :class:`~reconciler.fabric.api.FabricAPI` is one)."""

    def view(
        self, prefix: str = "", *, include_gone: bool = False
    ) -> Mapping[tuple[str, str], Any]: ...


@dataclass(frozen=True)
class LeaseView:
    holder: LeaseRecord | None  # the record that holds now, if any
    max_epoch: int  # the highest epoch seen anywhere


def read_leases(fabric: RecordView) -> tuple[dict[str, LeaseRecord], int]:
    """Live members' lease records (owner -> record) and the highest epoch ever seen."""
    live: dict[str, LeaseRecord] = {}
    max_epoch = 0
    for (_owner, key), value in fabric.view(KEY_LEASE, include_gone=True).items():
        if key != KEY_LEASE or value is None:
            continue
        try:
            rec = LeaseRecord.from_json(value)
        except FabricError:
            continue
        max_epoch = max(max_epoch, rec.epoch)
    for (owner, key), value in fabric.view(KEY_LEASE).items():
        if key == KEY_LEASE and value is not None:
            with contextlib.suppress(FabricError):
                live[owner] = LeaseRecord.from_json(value)
    for prefix in (PREFIX_INTENTS, PREFIX_ROUTES):
        for value in fabric.view(prefix, include_gone=True).values():
            epoch = value.get("epoch") if isinstance(value, dict) else None
            if isinstance(epoch, int):
                max_epoch = max(max_epoch, epoch)
    return live, max_epoch


def decide(records: Mapping[str, LeaseRecord], max_epoch: int, now: float) -> LeaseView:
    """Pure: which record holds the lease now (see the module doc)."""
    holding = [
        rec for owner, rec in records.items() if rec.holder == owner and rec.expires_at > now
    ]
    best = max(holding, key=lambda r: (r.epoch, r.holder), default=None)
    return LeaseView(best, max(max_epoch, *(r.epoch for r in records.values()), 0))
