"""File chores done one way: atomic writes (one fsync policy) and bounded reads.

:func:`atomic_write` writes a temporary file beside the target, fsyncs it, renames it over
the target and fsyncs the directory, so a reader sees the old bytes or the new ones, never a
half-written file, even across a crash. Nothing is left behind on failure.
:func:`atomic_writer` is the same for streaming writes: a file object to write into.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def atomic_write(
    path: Path,
    data: bytes | str,
    mode: int = 0o644,
    *,
    durable: bool = True,
    exclusive: bool = False,
) -> None:
    """Replace ``path`` with ``data`` atomically (mode ``mode``; parents created).

    ``durable`` (the default) fsyncs the file and its directory; pass False for files that
    are cheap to lose (caches), where only atomicity matters. ``exclusive`` never clobbers:
    :class:`FileExistsError` if ``path`` exists (checked atomically, at the rename).
    """
    raw = data.encode() if isinstance(data, str) else data
    with atomic_writer(path, mode, durable=durable, exclusive=exclusive) as f:
        f.write(raw)


@contextlib.contextmanager
def atomic_writer(
    path: Path,
    mode: int = 0o644,
    *,
    durable: bool = True,
    exclusive: bool = False,
) -> Iterator[BinaryIO]:
    """A binary file (read-write, empty) that replaces ``path`` when the block ends cleanly.

    For streaming writes (a spore build, a download): the temporary file sits beside
    ``path`` with mode 0600 while it is written (so secrets never show), gets ``mode`` and
    is renamed over ``path`` on a clean exit, with the fsync policy of :func:`atomic_write`.
    If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
        if exclusive:
            os.link(tmp, path)  # fails if ``path`` exists, even if it appeared meanwhile
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of ``path``; :class:`ValueError` if it is larger than ``limit``."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: larger than {limit} bytes")
    return data
