"""Per-app history of the spores an app was switched to, and picking a rollback target.

An entry is ``{"digest", "version", "revision", "at"}``; the newest is last. The active
reconciler appends an entry whenever an app's route starts serving a new digest, and
publishes the history in its garden record, so a successor adopts it with the lease.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.core.model import Desired, RolloutState
from reconciler.errors import PlanError

MAX_ENTRIES = 20

History = dict[str, list[dict[str, Any]]]


def record(
    history: History, rollouts: Mapping[str, RolloutState], desired: Desired, now: float
) -> bool:
    """Append the apps' new stable digests; returns whether anything was added."""
    changed = False
    for app, state in rollouts.items():
        if not state.stable:
            continue
        entries = history.setdefault(app, [])
        if entries and entries[-1].get("digest") == state.stable:
            continue
        want = desired.apps.get(app)
        version = want.spec.dna.version if want is not None and want.digest == state.stable else ""
        entries.append(
            {"digest": state.stable, "version": version, "revision": state.revision, "at": now}
        )
        del entries[:-MAX_ENTRIES]
        changed = True
    return changed


def pick_rollback(entries: Sequence[Mapping[str, Any]], target: str = "") -> Mapping[str, Any]:
    """The entry to roll back to: ``target`` (revision, version or digest prefix), else the
    one before the newest."""
    if not entries:
        raise PlanError("no history for this app yet")
    if not target:
        if len(entries) < 2:
            raise PlanError("nothing to roll back to: the app has run one spore only")
        return entries[-2]
    for index in range(len(entries) - 1, -1, -1):
        entry: Mapping[str, Any] = entries[index]
        if (
            entry.get("version") == target
            or (len(target) >= 6 and str(entry.get("revision", "")).startswith(target))
            or (len(target) >= 6 and str(entry.get("digest", "")).startswith(target))
        ):
            return entry
    raise PlanError(f"no spore in the app's history matches {target!r}")
