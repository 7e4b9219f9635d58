"""Watch a garden directory: watchdog events become one debounced "garden changed" signal.

The watchdog observer thread only enqueues (``call_soon_threadsafe``); the async iterator
waits until no relevant event has arrived for ``debounce_s`` and then yields once, so an
editor's burst of writes (temp file, rename, chmod) gives one signal at most ``debounce_s``
after the last write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from reconciler.garden.reader import SUFFIXES

log = logging.getLogger("myco.garden")


def _relevant(path: str | bytes, is_directory: bool) -> bool:
    text = path.decode(errors="replace") if isinstance(path, bytes) else path
    name = Path(text).name
    if not name or name.startswith("."):
        return False  # hidden files and editor swap files
    return is_directory or name.endswith(SUFFIXES)


class _Handler(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, notify: asyncio.Event) -> None:
        self._loop = loop
        self._notify = notify
        self.last_event = 0.0

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type == "modified":
            return  # a folder's mtime moves with every child: the child's event counts
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        if not any(p and _relevant(p, event.is_directory) for p in paths):
            return
        self._loop.call_soon_threadsafe(self._poke)

    def _poke(self) -> None:
        self.last_event = time.monotonic()
        self._notify.set()


class GardenWatcher:
    """``async with GardenWatcher(root) as w: async for _ in w: ...`` — one item per burst."""

    def __init__(self, root: Path, debounce_s: float = 0.1) -> None:
        self.root = Path(root)
        self.debounce_s = debounce_s
        self._notify = asyncio.Event()
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._handler: _Handler | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._handler = _Handler(loop, self._notify)
        observer = Observer()
        observer.schedule(self._handler, str(self.root), recursive=True)
        observer.start()
        self._observer = observer

    async def stop(self) -> None:
        self._handler = None
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            await asyncio.to_thread(observer.join, 5.0)

    async def __aenter__(self) -> GardenWatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __aiter__(self) -> AsyncIterator[None]:
        return self._signals()

    async def _signals(self) -> AsyncIterator[None]:
        owned = self._handler is None  # iterated without ``async with``: start and stop here
        if owned:
            await self.start()
        assert self._handler is not None
        handler = self._handler
        try:
            while True:
                await self._notify.wait()
                # Quiet period: wait until debounce_s has passed since the last event.
                while True:
                    self._notify.clear()
                    remaining = handler.last_event + self.debounce_s - time.monotonic()
                    if remaining <= 0:
                        break
                    try:  # not wait_for: on 3.11 it can swallow a cancellation
                        async with asyncio.timeout(remaining):
                            await self._notify.wait()
                    except TimeoutError:
                        pass
                self._notify.clear()
                log.debug("garden changed: %s", self.root)
                yield None
        finally:
            if owned:
                await self.stop()
