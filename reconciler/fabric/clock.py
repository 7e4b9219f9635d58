"""The injected clock: ``now()`` and ``call_later()``, real (asyncio) or virtual."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("myco.fabric")


class Handle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Monotonic seconds and one-shot timers; the protocol code knows no other time."""

    def now(self) -> float: ...

    def wall(self) -> float:
        """Seconds since the epoch (only used to seed versions that survive restarts)."""
        ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> Handle: ...


class AsyncioScheduler:
    """Real time on the running asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time()

    def wall(self) -> float:
        return time.time()

    def call_later(self, delay: float, fn: Callable[[], None]) -> Handle:
        return self._loop.call_later(max(0.0, delay), _guarded, fn)


def _guarded(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # a timer must never kill the loop's callback machinery silently
        log.exception("fabric timer failed")


class _VirtualHandle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualScheduler:
    """Virtual time for tests and the simulator: ``run_until`` fires timers in order."""

    def __init__(self, start: float = 0.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._heap: list[tuple[float, int, Callable[[], None], _VirtualHandle]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def call_later(self, delay: float, fn: Callable[[], None]) -> Handle:
        handle = _VirtualHandle()
        heapq.heappush(self._heap, (self._now + max(0.0, delay), next(self._seq), fn, handle))
        return handle

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        """Fire every timer due up to ``t``; return True early if ``stop()`` becomes true."""
        heap = self._heap
        while heap and heap[0][0] <= t:
            when, _, fn, handle = heapq.heappop(heap)
            if handle.cancelled:
                continue
            self._now = when
            fn()
            if stop is not None and stop():
                return True
        self._now = max(self._now, t)
        return False

    def run_for(self, seconds: float, stop: Callable[[], bool] | None = None) -> bool:
        return self.run_until(self._now + seconds, stop)
