"""The one injected clock: monotonic and wall seconds, sleeping and one-shot timers.

Code that waits or measures time takes a :class:`Clock` instead of calling :mod:`time` or
:func:`asyncio.sleep`, so tests and the gossip simulator can run it on virtual time::

    clock.now() -> float                        # monotonic seconds (cheap: hot paths call it)
    clock.wall() -> float                       # seconds since the epoch
    await clock.sleep(seconds)
    clock.call_later(delay, fn) -> Handle       # fn() once, unless handle.cancel()

:class:`RealClock` is real time on the running asyncio loop. :class:`VirtualClock` is
virtual time with a timer heap: :meth:`~VirtualClock.advance` and
:meth:`~VirtualClock.run_until` fire due timers in order, and ``await sleep(s)`` jumps
``s`` seconds forward (firing what fell due) and then yields to the loop, so seconds of
backoff take no real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("myco.clock")

Callback = Callable[[], None]


class Handle(Protocol):
    """A pending timer; ``cancel()`` is idempotent and harmless once it has fired."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic and wall seconds, sleeping and one-shot timers: the only time code knows."""

    def now(self) -> float:
        """Monotonic seconds (only differences mean anything)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch (timestamps that leave the process or survive it)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, delay: float, fn: Callback) -> Handle:
        """Call ``fn()`` once after ``delay`` seconds (at once if ``delay <= 0``)."""
        ...


class RealClock:
    """Real time; timers run on the asyncio loop (given, else the running one when set)."""

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, fn: Callback) -> Handle:
        loop = self._loop or asyncio.get_running_loop()
        return loop.call_later(max(0.0, delay), _guarded, fn)


def _guarded(fn: Callback) -> None:
    try:
        fn()
    except Exception:  # a timer must never kill the loop's callback machinery silently
        log.exception("timer failed")


class _VirtualHandle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


_NEVER_CANCELLED = _VirtualHandle()  # shared by ``post``: no one holds it to cancel


class VirtualClock:
    """Virtual time for tests and the simulator; nothing moves unless told to.

    Time moves by :meth:`advance`, :meth:`run_until` or :meth:`sleep`; each fires the
    timers that fell due, in order (ties in the order they were set), with :meth:`now` at
    each timer's due time. A timer's exception propagates to whoever moved the clock.
    ``sleeps`` logs every ``sleep`` asked for, for tests to check exact backoff.
    """

    def __init__(self, start: float = 0.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._heap: list[tuple[float, int, Callback, _VirtualHandle]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []

    # Clock.

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.run_until(self._now + max(seconds, 0.0))
        await asyncio.sleep(0)

    def call_later(self, delay: float, fn: Callback) -> Handle:
        handle = _VirtualHandle()
        when = self._now + delay if delay > 0 else self._now
        heapq.heappush(self._heap, (when, next(self._seq), fn, handle))
        return handle

    # Virtual only.

    def call_at(self, when: float, fn: Callback) -> Handle:
        """Call ``fn()`` when the clock reaches ``when`` (exactly: no float round trip)."""
        handle = _VirtualHandle()
        heapq.heappush(self._heap, (max(when, self._now), next(self._seq), fn, handle))
        return handle

    def post(self, delay: float, fn: Callback) -> None:
        """``call_later`` for a timer nobody cancels (cheaper: the simulator's packets)."""
        when = self._now + delay if delay > 0 else self._now
        heapq.heappush(self._heap, (when, next(self._seq), fn, _NEVER_CANCELLED))

    def shift_wall(self, seconds: float) -> None:
        """Step the wall clock (an NTP correction); monotonic time does not move."""
        self._wall_offset += seconds

    @property
    def pending(self) -> int:
        """Timers set and not yet fired (cancelled ones included until their time)."""
        return len(self._heap)

    def advance(self, seconds: float, stop: Callable[[], bool] | None = None) -> bool:
        """Move ``seconds`` forward firing due timers; see :meth:`run_until` for ``stop``."""
        return self.run_until(self._now + seconds, stop)

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
        if t > self._now:
            self._now = t
        return False


__all__ = ["Callback", "Clock", "Handle", "RealClock", "VirtualClock"]
