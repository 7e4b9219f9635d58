"""Pure convergence: the intents addressed to this node + its local instances → actions.

Level-triggered (docs/fabric.md): the newest intent is the whole truth, so the same inputs
always give the same actions and a missed update is corrected at the next pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reconciler.records import IntentInstance, IntentRecord, Nutrients


@dataclass(frozen=True)
class Start:
    intent: IntentInstance


@dataclass(frozen=True)
class Stop:
    instance_id: str
    reason: str = "no longer in the intent"


Action = Start | Stop


def pick_intent(
    candidates: Iterable[IntentRecord | tuple[str, IntentRecord]], min_epoch: int
) -> IntentRecord | None:
    """The intent from the newest lease epoch; None if every one is older than ``min_epoch``.

    Several reconcilers may have published ``intents/<node>`` (one is active by lease); an
    intent from an epoch older than one already seen is ignored. Candidates may come with
    their writer's member name: between two of one epoch (two reconcilers that started
    apart both held it for a moment) the higher ``(epoch, owner)`` wins, the order the
    lease rule keeps its holder by (:func:`reconciler.core.lease.decide`).
    """
    best: tuple[int, str, IntentRecord] | None = None
    for cand in candidates:
        owner, rec = cand if isinstance(cand, tuple) else ("", cand)
        if rec.epoch < min_epoch:
            continue
        if best is None or (rec.epoch, owner) > (best[0], best[1]):
            best = (rec.epoch, owner, rec)
    return best[2] if best is not None else None


def converge(
    desired: Iterable[IntentInstance],
    local: Mapping[str, str],
    withering: Iterable[str] = (),
) -> list[Action]:
    """Actions that bring ``local`` (instance id → digest) to ``desired``.

    An instance whose id is desired with another digest is stopped first; it is started
    again once its old incarnation is gone (a later pass). Ids being withered are left
    alone until they are gone.
    """
    wanted = {i.instance_id: i for i in desired}
    going = set(withering)
    actions: list[Action] = []
    for iid in sorted(local):
        if iid in going:
            continue
        want = wanted.get(iid)
        if want is None:
            actions.append(Stop(iid))
        elif want.digest != local[iid]:
            actions.append(Stop(iid, f"digest changed to {want.digest}"))
    for iid in sorted(wanted):
        if iid not in local and iid not in going:
            actions.append(Start(wanted[iid]))
    return actions


def free_credits(capacity: Nutrients, placed: Iterable[Nutrients]) -> Nutrients:
    """What is left of ``capacity`` after what is placed (may go negative: over-placed)."""
    used = Nutrients()
    for n in placed:
        used = used + n
    return capacity - used
