"""Garden sources (a seam): where the garden is read from and when it changed.

:class:`DirSource` watches a directory (watchdog, debounced) and also re-reads it every
``resync_s`` in case an event was missed; :class:`GitSource` polls a Git remote branch;
:class:`StaticSource` is the in-memory fake for tests and for one-shot ``myco apply``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from reconciler.garden import GardenReader, GardenResult
from reconciler.garden.git import GitGarden, GitPoller
from reconciler.garden.watch import GardenWatcher
from reconciler.model import Garden


class GardenSource(Protocol):
    description: str
    resync_s: float  # re-read at least this often, whatever the change signals say

    def read(self) -> GardenResult:
        """Read the garden now (blocking: call it in a thread)."""
        ...

    async def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` whenever the garden may have changed; runs until cancelled."""
        ...

    def close(self) -> None: ...


class DirSource:
    def __init__(self, root: Path, resync_s: float = 30.0, debounce_s: float = 0.05) -> None:
        self.root = Path(root)
        self.description = str(self.root)
        self.resync_s = resync_s
        self.debounce_s = debounce_s
        self._reader = GardenReader(self.root)

    def read(self) -> GardenResult:
        return self._reader.read(source=self.description)

    async def watch(self, changed: Callable[[], None]) -> None:
        async with GardenWatcher(self.root, debounce_s=self.debounce_s) as watcher:
            async for _ in watcher:
                changed()

    def close(self) -> None:
        pass


class GitSource:
    def __init__(
        self,
        url: str,
        branch: str = "main",
        interval_s: float = 5.0,
        subdir: str = "",
        workdir: Path | None = None,
    ) -> None:
        self.git = GitGarden(url, branch, subdir=subdir, workdir=workdir)
        self.description = f"{url}#{branch}"
        self.resync_s = max(interval_s * 6, 30.0)
        self.poller = GitPoller(self.git, interval_s=interval_s)

    def read(self) -> GardenResult:
        return self.git.read()

    async def watch(self, changed: Callable[[], None]) -> None:
        async for _sha in self.poller:
            changed()

    def close(self) -> None:
        self.git.close()


class StaticSource:
    """A fixed garden (tests, ``myco apply``); :meth:`set` replaces it and signals."""

    def __init__(self, result: GardenResult, description: str = "static") -> None:
        self.result = result
        self.description = description
        self.resync_s = 3600.0
        self._changed: Callable[[], None] | None = None

    def set(self, result: GardenResult) -> None:
        self.result = result
        if self._changed is not None:
            self._changed()

    def read(self) -> GardenResult:
        return self.result

    async def watch(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        await asyncio.Event().wait()  # until cancelled

    def close(self) -> None:
        pass


def empty_result() -> GardenResult:
    return GardenResult(Garden(apps=()), [])
