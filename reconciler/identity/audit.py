"""The audit log: one JSON line per state-changing HTTP call, in ``<state>/audit.log``.

Every call that is not a ``GET``, ``HEAD`` or ``OPTIONS`` is written, refused ones (401,
403) included, once the answer is known::

    {"time": "2026-05-09T07:35:25.123Z", "at": 1778312125.123, "who": "alice",
     "how": "cert", "role": "operator", "access": "operator", "method": "POST",
     "path": "/v1/nodes/node-2/drain", "status": 200, "remote": "10.0.0.5", "reason": ""}

``who`` is the certificate or token name (``local`` on a loopback listener that needs no
credentials, empty when nobody was recognised), ``how`` is ``cert``, ``token``, ``open``
(that loopback listener) or ``none``; ``reason`` says why a call was refused.

Policy: the file is opened in append mode and each line is one ``write`` (lines never
interleave, not even between processes sharing the file) followed by ``fsync``:
state-changing calls are rare (operator verbs, enrolments, renewals), and an entry must
outlive a crash that follows the answer. The write runs in a worker thread, one at a time
and in the order the calls finished, so the event loop never waits on the disk. A failed
write is logged as an error; it does not undo the call, which has already happened.
The file is never rotated by the mesh (``logrotate`` with ``copytruncate`` works).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("myco.audit")

AUDIT_FILE = "audit.log"
#: Methods that change nothing, never audited.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def changes_state(method: str) -> bool:
    return method.upper() not in READ_METHODS


@dataclass(frozen=True)
class AuditEntry:
    at: float  # wall time, seconds since the epoch
    who: str
    how: str  # cert | token | open | none
    role: str  # the certificate's role; "" for a token
    access: str  # viewer | operator | admin | "" (members read only; nobody recognised)
    method: str
    path: str
    status: int
    remote: str = ""
    reason: str = ""

    def to_line(self) -> bytes:
        when = dt.datetime.fromtimestamp(self.at, tz=dt.UTC)
        body: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        }
        body.update(asdict(self))
        return (json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class AuditLog:
    """Appends :class:`AuditEntry` lines to ``path`` (see the module's policy)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()
        self.written = 0
        self.failed = 0

    @classmethod
    def in_state(cls, state_dir: Path) -> AuditLog:
        return cls(Path(state_dir) / AUDIT_FILE)

    def append(self, entry: AuditEntry) -> None:
        """Write one entry now (blocking: the caller is in a thread or a test)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, entry.to_line())
            os.fsync(fd)
        finally:
            os.close(fd)

    async def record(self, entry: AuditEntry) -> None:
        """Write one entry from the event loop (and log it); a failure is logged, never
        raised."""
        log_entry(entry)
        async with self._lock:
            try:
                await asyncio.to_thread(self.append, entry)
            except OSError as exc:
                self.failed += 1
                log.error("cannot write the audit log %s: %s", self.path, exc.strerror or exc)
                return
        self.written += 1


def log_entry(entry: AuditEntry) -> None:
    """One line in the ``myco.audit`` log (also where entries go when there is no file)."""
    log.info(
        "%s %s by %s (%s) -> %d%s",
        entry.method,
        entry.path,
        entry.who or "nobody",
        entry.how,
        entry.status,
        f": {entry.reason}" if entry.reason else "",
    )


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every entry of an audit log, oldest first (tests and tools)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
