"""Fakes for the agent's seams: a scripted process runner and a virtual clock.

:class:`VirtualClock` jumps forward instead of sleeping, so restart backoff and health
intervals run in no real time. :class:`FakeRunner` "starts" processes that exit with a
scripted code after a scripted (virtual) lifetime; it never creates a real process.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.agent.nutrients import Limits
from reconciler.agent.runner import LaunchSpec, ProcInfo


class VirtualClock:
    """``sleep`` advances virtual time at once (and yields to the loop); ``sleeps`` logs it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._moved = asyncio.Event()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
        await asyncio.sleep(0)

    async def until(self, when: float) -> None:
        """Wait (without real time passing) until someone's sleep moved the clock past."""
        while self.now < when:
            await self._moved.wait()


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
        self.signals: list[tuple[int, int]] = []

    def start(self, spec: LaunchSpec) -> ProcInfo:
        run = self.script.popleft() if self.script else Script(0, float("inf"))
        pid = next(self._pids)
        self.started.append(spec)
        self._ends[pid] = (self.clock.now + run.lifetime_s, run.code)
        return ProcInfo(pid, pid)

    def adopt(self, info: ProcInfo) -> bool:
        end = self._ends.get(info.pid)
        return end is not None and self.clock.now < end[0]

    async def wait(self, info: ProcInfo) -> int | None:
        while True:
            end_at, code = self._ends[info.pid]
            if self.clock.now >= end_at:
                return code
            await self.clock.until(end_at if end_at != float("inf") else self.clock.now + 1e-9)

    def members(self, info: ProcInfo, instance_id: str, node: str, limits: Limits) -> set[int]:
        return {info.pid} if self.adopt(info) else set()

    def signal(self, info: ProcInfo, instance_id: str, node: str, limits: Limits, sig: int) -> None:
        self.signals.append((info.pid, sig))
        end_at, _ = self._ends[info.pid]
        if end_at > self.clock.now:
            self._ends[info.pid] = (self.clock.now, -sig)
