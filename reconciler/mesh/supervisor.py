"""Run a set of child processes as one unit: start, watch, and stop them all, always.

Used by ``myco up`` (reconciler, agents, edge on loopback). Each child gets its own session
and process group, so a terminal's Ctrl-C reaches only the supervisor, which then stops the
children in order (SIGTERM to each group, a grace period, SIGKILL). Nothing is left behind:
:meth:`Supervisor.stop` waits for every child, and is also run on any error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.errors import MycoError

log = logging.getLogger("myco.mesh")


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    #: returns True once the child is ready to be used (e.g. its port answers)
    ready: Callable[[], bool] | None = None
    stop_grace_s: float = 10.0


@dataclass
class Child:
    spec: ChildSpec
    proc: asyncio.subprocess.Process
    started_at: float

    @property
    def pid(self) -> int:
        return self.proc.pid


class ChildFailed(MycoError):
    """A child process of the mesh exited or never became ready."""


class Supervisor:
    """Owns the children; ``async with Supervisor() as sup`` guarantees they are stopped."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, spec: ChildSpec, ready_timeout_s: float = 30.0) -> Child:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(spec.env)
        with spec.log_path.open("ab") as logf:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                env=env,
                start_new_session=True,
            )
        child = Child(spec, proc, time.time())
        self.children.append(child)
        log.info("started %s (pid %s)", spec.name, proc.pid)
        if spec.ready is not None:
            deadline = time.monotonic() + ready_timeout_s
            while not spec.ready():
                if proc.returncode is not None:
                    raise ChildFailed(
                        f"{spec.name} exited with code {proc.returncode} while starting; "
                        f"see {spec.log_path}"
                    )
                if time.monotonic() > deadline:
                    raise ChildFailed(
                        f"{spec.name} was not ready after {ready_timeout_s:.0f}s; "
                        f"see {spec.log_path}"
                    )
                await asyncio.sleep(0.05)
        return child

    def exited(self) -> list[Child]:
        return [c for c in self.children if c.proc.returncode is not None]

    async def stop(self) -> None:
        """Stop every child, newest first: SIGTERM to its group, grace, SIGKILL."""
        for child in reversed(self.children):
            await stop_process_group(child.proc, child.spec.stop_grace_s, child.spec.name)
        self.children.clear()


async def stop_process_group(
    proc: asyncio.subprocess.Process, grace_s: float, name: str = ""
) -> None:
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            log.warning("%s did not stop within %.1fs; killing it", name or proc.pid, grace_s)
    # The group may still hold grandchildren even when the leader is gone.
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        await proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
