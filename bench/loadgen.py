"""A steady-rate HTTP load for end-to-end tests and benchmarks (loopback only).

``async with Load(url, rps=150) as load: ...`` sends GET requests at a fixed rate with a
bounded number in flight, and records every outcome: status, time, and the JSON body's
``version`` and ``instance`` fields when the workload answers with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp


@dataclass
class Outcome:
    at: float  # monotonic time the request was sent
    status: int  # 0 for a connection error or timeout
    version: str = ""
    instance: str = ""
    error: str = ""


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def versions_after(self, t: float) -> set[str]:
        return {o.version for o in self.outcomes if o.at >= t and o.status == 200}

    def first_time_all(self, version: str, since: float = 0.0) -> float | None:
        """The send time after which every successful answer came from ``version``."""
        last_other = None
        for o in self.outcomes:
            if o.at >= since and o.status == 200 and o.version != version:
                last_other = o.at
        seen = [o.at for o in self.outcomes if o.version == version and o.at >= since]
        if not seen:
            return None
        return max(last_other or seen[0], seen[0])


class Load:
    def __init__(
        self, url: str, rps: float = 100.0, max_in_flight: int = 64, timeout_s: float = 10.0
    ):
        self.url = url
        self.rps = rps
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.result = LoadResult()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.max_in_flight),
        )
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self) -> LoadResult:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        return self.result

    async def _run(self) -> None:
        sem = asyncio.Semaphore(self.max_in_flight)
        pending: set[asyncio.Task[None]] = set()
        interval = 1.0 / self.rps
        next_at = time.monotonic()
        try:
            while True:
                await sem.acquire()
                task = asyncio.create_task(self._one(sem))
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            # Let requests in flight finish so every outcome is counted, then stop.
            if pending:
                await asyncio.wait(pending, timeout=self.timeout_s)
            for task in pending:
                task.cancel()

    async def _one(self, sem: asyncio.Semaphore) -> None:
        assert self._session is not None
        out = Outcome(at=time.monotonic(), status=0)
        try:
            async with self._session.get(self.url) as resp:
                out.status = resp.status
                if resp.status == 200:
                    with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
                        body = await resp.json(content_type=None)
                        if isinstance(body, dict):
                            out.version = str(body.get("version", ""))
                            out.instance = str(body.get("instance", ""))
                else:
                    out.error = (await resp.text())[:200]
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.error = f"{type(exc).__name__}: {exc}"
        finally:
            sem.release()
        self.result.outcomes.append(out)
