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


_NEVER_CANCELLED = _VirtualHandle()  # shared by ``post``: no one holds it to cancel


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
        when = self._now + delay if delay > 0 else self._now
        heapq.heappush(self._heap, (when, next(self._seq), fn, handle))
        return handle

    def post(self, delay: float, fn: Callable[[], None]) -> None:
        """``call_later`` for a timer nobody cancels (the memory network's deliveries)."""
        when = self._now + delay if delay > 0 else self._now
        heapq.heappush(self._heap, (when, next(self._seq), fn, _NEVER_CANCELLED))

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        """Fire every timer due up to ``t``; return True early if ``stop()`` becomes true."""
        heap = self._heap
        pop = heapq.heappop
        if stop is None:  # the simulator's long runs: the same loop without the test
            while heap and heap[0][0] <= t:
                when, _, fn, handle = pop(heap)
                if not handle.cancelled:
                    self._now = when
                    fn()
        else:
            while heap and heap[0][0] <= t:
                when, _, fn, handle = pop(heap)
                if handle.cancelled:
                    continue
                self._now = when
                fn()
                if stop():
                    return True
        self._now = max(self._now, t)
        return False

    def run_for(self, seconds: float, stop: Callable[[], bool] | None = None) -> bool:
        return self.run_until(self._now + seconds, stop)
