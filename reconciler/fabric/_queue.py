"""memberlist's TransmitLimitedQueue: piggybacked broadcasts, fewest transmits first."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable

from .codec import Message, encode_one


class _Item:
    __slots__ = ("transmits", "order", "size", "msg", "wire")

    def __init__(self, order: int, msg: Message) -> None:
        self.transmits = 0
        self.order = order
        self.wire = encode_one(msg)  # encoded once, sent up to the retransmit limit
        self.size = len(self.wire) + 1
        self.msg = msg


class BroadcastQueue:
    def __init__(
        self, on_queue: Callable[[], None] | None = None, max_size: int | None = None
    ) -> None:
        self._on_queue = on_queue
        self._max_size = max_size
        # A newer message for a key (a member, an owner's key) replaces the older one.
        self._items: dict[Hashable, _Item] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: Hashable, msg: Message) -> None:
        item = _Item(-next(self._seq), msg)
        if self._max_size is not None and item.size > self._max_size:
            self._items.pop(key, None)  # an older, smaller version must not go out either
            return
        self._items[key] = item
        if self._on_queue is not None:
            self._on_queue()

    def transmits(self, key: Hashable) -> int | None:
        item = self._items.get(key)
        return None if item is None else item.transmits

    def take(self, budget: int, limit: int) -> list[Message]:
        """Messages that fit in ``budget`` bytes; each counts one transmit more."""
        return [item.msg for item in self._take(budget, limit)]

    def take_wire(self, budget: int, limit: int) -> list[bytes]:
        """As :meth:`take`, the messages already encoded (see ``codec.join``)."""
        return [item.wire for item in self._take(budget, limit)]

    def _take(self, budget: int, limit: int) -> list[_Item]:
        if not self._items or budget <= 0:
            return []
        out: list[_Item] = []
        ordered = sorted(self._items.items(), key=_rank)
        for key, item in ordered:
            if item.size > budget:
                if budget < 64:
                    break
                continue
            budget -= item.size
            out.append(item)
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[key]
        return out


def _rank(kv: tuple[Hashable, _Item]) -> tuple[int, int]:
    return kv[1].transmits, kv[1].order
