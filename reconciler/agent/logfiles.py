"""Instance log files: copy-truncate rotation by size, tail, and follow.

The child holds the log file open with ``O_APPEND`` (see :mod:`reconciler.agent.runner`),
so the agent rotates by copying the file to ``.1`` and truncating it in place: the
child's next write lands at the new end, and no pipe through the agent is ever needed.
A few bytes written between the copy and the truncate can be lost; that is the price
of having no helper process and of logs that survive an agent restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def rotate_if_needed(path: Path, max_bytes: int, keep: int) -> bool:
    """Rotate ``path`` to ``path.1`` (shifting older ones) once it exceeds ``max_bytes``."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    if keep >= 1:
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with contextlib.suppress(FileNotFoundError):
        os.truncate(path, 0)
    return True


def tail_lines(path: Path, n: int = 10, max_bytes: int = 16384) -> list[str]:
    """The last ``n`` lines of ``path`` (reading at most ``max_bytes`` from its end)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-n:]


def remove_logs(path: Path) -> None:
    for p in path.parent.glob(f"{path.name}*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
