"""The watcher: a burst of writes gives one debounced signal; unrelated files give none."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from reconciler.garden.watch import GardenWatcher
from tests.helpers import async_wait_for


async def test_burst_gives_one_signal(tmp_path: Path) -> None:
    async with GardenWatcher(tmp_path, debounce_s=0.3) as watcher:
        signals = aiter(watcher)
        for i in range(10):  # an editor's burst of writes
            (tmp_path / "app.yaml").write_text(f"a: {i}\n")
        last_write = time.monotonic()
        await asyncio.wait_for(anext(signals), 10)
        # The signal came after the quiet period (never before the debounce elapsed).
        assert time.monotonic() - last_write >= 0.3
        # No second signal for the same burst: the next one needs a new write.
        pending = asyncio.ensure_future(anext(signals))
        done, _ = await asyncio.wait({pending}, timeout=0.3)
        assert not done
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "b.yml").write_text("b: 1\n")
        await asyncio.wait_for(pending, 10)
        await signals.aclose()  # type: ignore[attr-defined]


async def test_unrelated_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    async with GardenWatcher(tmp_path, debounce_s=0.05) as watcher:
        signals = aiter(watcher)
        pending = asyncio.ensure_future(anext(signals))
        (tmp_path / "notes" / "todo.txt").write_text("x")
        (tmp_path / ".app.yaml.swp").write_text("x")
        done, _ = await asyncio.wait({pending}, timeout=0.3)
        assert not done
        (tmp_path / "app.yaml").write_text("a: 1\n")
        await asyncio.wait_for(pending, 10)
        await signals.aclose()  # type: ignore[attr-defined]


async def test_iterating_without_context_manager(tmp_path: Path) -> None:
    watcher = GardenWatcher(tmp_path, debounce_s=0.05)
    signals = aiter(watcher)
    pending = asyncio.ensure_future(anext(signals))

    await async_wait_for(lambda: watcher._observer is not None, within=10)
    (tmp_path / "app.yaml").write_text("a: 1\n")
    await asyncio.wait_for(pending, 10)
    await signals.aclose()  # type: ignore[attr-defined]
    assert watcher._observer is None  # stopped when the iteration ended
