"""``myco down``: stop the mesh a ``myco up -d`` left running from a state directory.

The normal path: SIGTERM to the ``myco up`` process named in ``<state>/mesh.json``, which
stops its children (agents withering their instances) and removes the record. A ``myco up``
that is gone without that (killed with -9, out of memory) leaves its children serving in
their own sessions: they are then stopped here, each group with SIGTERM, a grace period and
SIGKILL, and whatever instances a lost agent left are killed (pid + start time checked).

A pid is only signalled if it is still the process the record means: the ``myco up``
process started no later than the record says it did, and a child's command line names the
state directory. A pid the kernel has since given to someone else is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from reconciler.errors import ConfigError
from reconciler.home import MeshRecord

#: a process may have started this long after the record's time and still be the one meant
#: (``started_at`` is taken once ``myco up`` runs; start times are rounded to clock ticks)
_START_SLACK_S = 1.0


@dataclass(frozen=True)
class DownResult:
    """What ``myco down`` found and did (rendered by the command)."""

    running: bool  # a mesh record was found
    up_stopped: bool = False  # the `myco up` process was running and stopped
    leftovers: int = 0  # children (and instances) of a lost `myco up`, stopped here

    def message(self, state: Path) -> str:
        if not self.running:
            return f"no mesh is running from {state}"
        if self.up_stopped:
            return "mesh stopped"
        if self.leftovers:
            return (
                f"the mesh's `myco up` process was gone; stopped the {self.leftovers} "
                "process(es) it left running"
            )
        return "the mesh was not running (stale record removed)"


def _live(pid: int) -> psutil.Process | None:
    """The process ``pid`` if it exists and is not a zombie."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.NoSuchProcess:
        return None


def up_process(record: MeshRecord) -> psutil.Process | None:
    """The record's ``myco up`` process, if it still runs (and its pid was not reused)."""
    proc = _live(record.pid)
    if proc is None:
        return None
    with contextlib.suppress(psutil.Error):
        if record.started_at and proc.create_time() > record.started_at + _START_SLACK_S:
            return None  # started after the mesh did: the pid was reused
        return proc
    return None


def child_processes(record: MeshRecord, state: Path) -> list[psutil.Process]:
    """The record's children still running (each one's command line names ``state``)."""
    found = []
    for pid in record.children.values():
        proc = _live(pid)
        if proc is None:
            continue
        with contextlib.suppress(psutil.Error):
            if str(state) in " ".join(proc.cmdline()):
                found.append(proc)
    return found


def _wait_gone(pids: Iterable[int], until: float, sleep: Callable[[float], None]) -> list[int]:
    """Wait until none of ``pids`` runs (or ``until``); the ones still running."""
    left = list(pids)
    while True:
        left = [p for p in left if _live(p) is not None]
        if not left or time.monotonic() >= until:
            return left
        sleep(0.05)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_mesh(
    state: Path,
    timeout_s: float = 60.0,
    grace_s: float = 10.0,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> DownResult:
    """Stop the mesh recorded in ``state`` (see the module docstring)."""
    from reconciler.mesh.up import kill_orphans

    record = MeshRecord.load(state)
    if record is None:
        return DownResult(running=False)
    up = up_process(record)
    if up is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            up.send_signal(signal.SIGTERM)
        if _wait_gone([record.pid], time.monotonic() + timeout_s, sleep):
            raise ConfigError(
                f"the mesh (pid {record.pid}) did not stop within {timeout_s:.0f}s; "
                f"see {state / 'logs' / 'up.log'}"
            )
    # A `myco up` that stopped normally stopped its children; one that died did not.
    children = child_processes(record, state)
    for proc in children:
        _signal_group(proc.pid, signal.SIGTERM)  # agents wither their instances on SIGTERM
    left = _wait_gone([p.pid for p in children], time.monotonic() + grace_s, sleep)
    for pid in left:
        _signal_group(pid, signal.SIGKILL)
    _wait_gone(left, time.monotonic() + 5.0, sleep)
    orphans = kill_orphans(state)  # instances of an agent that did not wither them
    (state / "mesh.json").unlink(missing_ok=True)
    return DownResult(running=True, up_stopped=up is not None, leftovers=len(children) + orphans)
