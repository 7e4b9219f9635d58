"""Versions that never go back: a time-based floor and a persisted high-water mark.

The engine reserves blocks of versions ahead and this file records the top of the block
(atomically, fsynced) before any of them is used, so a restarted member starts above
everything it may have published, even if the wall clock went back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reconciler.errors import ConfigError
from reconciler.files import atomic_write

FILE_NAME = "fabric-version"


class VersionFile:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILE_NAME

    def load(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {self.path}: {exc}") from exc
        try:
            return max(0, int(text))
        except ValueError as exc:
            raise ConfigError(f"{self.path}: not a version number") from exc

    def store(self, version: int) -> None:
        try:
            atomic_write(self.path, f"{version}\n")
        except OSError as exc:
            raise ConfigError(f"cannot write {self.path}: {exc}") from exc


def version_source(state_dir: Path | None, wall: float) -> tuple[int, Callable[[int], None] | None]:
    """(first version to use, reservation callback) for a member starting now."""
    time_floor = int(wall * 1_000_000)
    if state_dir is None:
        return time_floor, None
    vf = VersionFile(state_dir)
    return max(time_floor, vf.load() + 1), vf.store
