"""A fake for the agent's process seam: a scripted runner on virtual time.

:class:`FakeRunner` "starts" processes that exit with a scripted code after a scripted
lifetime on a :class:`~reconciler.clock.VirtualClock` (whose ``sleep`` jumps forward, so
restart backoff and health intervals take no real time); it never creates a process.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.agent.nutrients import Limits
from reconciler.agent.runner import LaunchSpec, ProcInfo
from reconciler.clock import Handle, VirtualClock


@dataclass(frozen=True)
class Script:
    """One scripted run: exit with ``code`` after ``lifetime_s`` of virtual time."""

    code: int
    lifetime_s: float = 0.0


class FakeRunner:
    """A :class:`~reconciler.agent.runner.ProcessRunner` whose processes follow a script."""

    def __init__(self, clock: VirtualClock, runs: Iterable[Script]) -> None:
        self.clock = clock
        self.script = deque(runs)
        self.started: list[LaunchSpec] = []
        self._pids = itertools.count(10_000)
        self._ends: dict[int, tuple[float, int]] = {}
        self._wakers: dict[int, asyncio.Future[None]] = {}
        self.signals: list[tuple[int, int]] = []

    def start(self, spec: LaunchSpec) -> ProcInfo:
        run = self.script.popleft() if self.script else Script(0, float("inf"))
        pid = next(self._pids)
        self.started.append(spec)
        self._ends[pid] = (self.clock.now() + run.lifetime_s, run.code)
        return ProcInfo(pid, pid)

    def adopt(self, info: ProcInfo) -> bool:
        end = self._ends.get(info.pid)
        return end is not None and self.clock.now() < end[0]

    async def wait(self, info: ProcInfo) -> int | None:
        """Until the scripted end (a timer on the clock) or a kill (:meth:`signal` wakes)."""
        while True:
            end_at, code = self._ends[info.pid]
            if self.clock.now() >= end_at:
                return code
            woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._wakers[info.pid] = woken
            timer: Handle | None = None
            if end_at != float("inf"):
                timer = self.clock.call_at(end_at, functools.partial(_wake, woken))
            try:
                await woken
            finally:
                if timer is not None:
                    timer.cancel()
                if self._wakers.get(info.pid) is woken:
                    del self._wakers[info.pid]

    def members(self, info: ProcInfo, instance_id: str, node: str, limits: Limits) -> set[int]:
        return {info.pid} if self.adopt(info) else set()

    def signal(self, info: ProcInfo, instance_id: str, node: str, limits: Limits, sig: int) -> None:
        self.signals.append((info.pid, sig))
        end_at, _ = self._ends[info.pid]
        if end_at > self.clock.now():
            self._ends[info.pid] = (self.clock.now(), -sig)
            woken = self._wakers.get(info.pid)
            if woken is not None:
                _wake(woken)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
