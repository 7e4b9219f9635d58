"""Scuttlebutt state: per-owner maps ``key -> (JSON value, version)``, digests and deltas.

A *watermark* is the highest version of an owner up to which this member holds every
update (or a newer one for the same key). Eager pushes may bring newer entries without
moving the watermark; only an owner's ordered deltas move it, so a digest never claims an
update it lacks. Deltas are sent oldest first per owner and cut at the packet budget; the
watermark sent with them tells how far the receiver may now claim, but never above the
newest version it holds of that owner: a peer's claim is not believed beyond what was
actually delivered (else one forged ``deltas`` message from any keyring holder would stop
anti-entropy for that owner everywhere, as the claim spreads).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .api import JSONValue
from .codec import Deltas, Entry, dumps


@dataclass(slots=True)
class Item:
    version: int
    deleted: bool
    value: JSONValue
    sig: str = ""


class StateStore:
    def __init__(self) -> None:
        self._data: dict[str, dict[str, Item]] = {}
        self._wm: dict[str, int] = {}
        self._top: dict[str, int] = {}  # owner -> the newest version held of it

    # Reading.

    def owners(self) -> Iterator[str]:
        return iter(self._data)

    def items(self, owner: str) -> dict[str, Item]:
        return self._data.get(owner, {})

    def get(self, owner: str, key: str) -> Item | None:
        return self._data.get(owner, {}).get(key)

    def watermark(self, owner: str) -> int:
        return self._wm.get(owner, 0)

    def digest(self, owners: Iterable[str]) -> dict[str, int]:
        wm = self._wm
        return {o: wm[o] for o in owners if o in wm}

    # Writing.

    def set_own(
        self, owner: str, key: str, value: JSONValue, version: int, deleted: bool, sig: str = ""
    ) -> Entry:
        self._data.setdefault(owner, {})[key] = Item(
            version, deleted, None if deleted else value, sig
        )
        if version > self._wm.get(owner, 0):
            self._wm[owner] = version
        if version > self._top.get(owner, 0):
            self._top[owner] = version
        return Entry(owner, key, version, deleted, None if deleted else value, sig)

    def apply(self, e: Entry) -> bool:
        """Store ``e`` if it is newer than what is held for its key; True if it was."""
        items = self._data.get(e.owner)
        if items is None:
            items = self._data[e.owner] = {}
        cur = items.get(e.key)
        if cur is not None and cur.version >= e.version:
            return False
        items[e.key] = Item(e.version, e.deleted, None if e.deleted else e.value, e.sig)
        if e.version > self._top.get(e.owner, 0):
            self._top[e.owner] = e.version
        return True

    def newer(self, e: Entry) -> bool:
        """Whether ``e`` is newer than what is held for its key (checked before the costly
        signature check, so a stale or replayed record costs a dict lookup)."""
        cur = self._data.get(e.owner, {}).get(e.key)
        return cur is None or cur.version < e.version

    def raise_watermark(self, owner: str, version: int) -> None:
        version = min(version, self._top.get(owner, 0))
        if version > self._wm.get(owner, 0):
            self._wm[owner] = version

    def drop(self, owner: str) -> None:
        self._data.pop(owner, None)
        self._wm.pop(owner, None)
        self._top.pop(owner, None)

    # Anti-entropy.

    def deltas(
        self,
        peer_digest: dict[str, int],
        owners: Iterable[str],
        budget: int | None,
        rng: random.Random,
        skip: Callable[[str], bool] | None = None,
    ) -> Deltas:
        """Entries the peer lacks, oldest first per owner, within ``budget`` bytes.

        Only entries up to this member's own watermark are offered (it may lack some
        above), and each owner's watermark in the result is how far the peer may claim.
        """
        wanted: list[str] = []
        for o in owners:
            mine = self._wm.get(o, 0)
            if mine > peer_digest.get(o, 0) and (skip is None or not skip(o)):
                wanted.append(o)
        rng.shuffle(wanted)  # fairness between owners when the budget is tight
        marks: dict[str, int] = {}
        out: list[Entry] = []
        used = 16
        for o in wanted:
            floor, top = peer_digest.get(o, 0), self._wm[o]
            fresh = sorted(
                (it.version, k, it) for k, it in self._data.get(o, {}).items()
                if floor < it.version <= top
            )  # fmt: skip
            if not fresh:
                marks[o] = top  # only superseded versions in between: nothing to send
                continue
            sent_to = floor
            cut = False
            for version, key, it in fresh:
                e = Entry(o, key, version, it.deleted, it.value, it.sig)
                size = (
                    len(dumps([o, key, version, 0, it.value]))
                    + 1
                    + (len(it.sig) + 3 if it.sig else 0)
                )
                if budget is not None and used + size + len(o) + 24 > budget:
                    cut = True
                    break
                out.append(e)
                used += size
                sent_to = version
            if cut:
                if sent_to > floor:
                    marks[o] = sent_to
                    used += len(o) + 24
                break
            marks[o] = top
            used += len(o) + 24
        return Deltas(marks, tuple(out))
