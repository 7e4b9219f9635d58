"""Run a set of child processes as one unit: start them, restart the ones that crash, and
stop them all, always.

Used by ``myco up`` (reconciler, agents, edge on loopback). Each child gets its own session
and process group, so a terminal's Ctrl-C reaches only the supervisor, which then stops the
children in order (SIGTERM to each group, a grace period, SIGKILL). Nothing is left behind:
:meth:`Supervisor.stop` waits for every child, and is also run on any error;
:meth:`Supervisor.kill_all` is the forced form (SIGKILL to every group at once).

:meth:`Supervisor.supervise` keeps one child running: when it exits, the rest of its group
is killed, and it is started again on the same command line (same addresses, same state
directory) after a delay from :class:`Backoff`. A child that keeps crashing soon after
each start makes ``supervise`` raise :class:`ChildFailed` instead of looping forever.
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

from reconciler.errors import ServiceFailed

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
    started_at: float  # monotonic

    @property
    def pid(self) -> int:
        return self.proc.pid


class ChildFailed(ServiceFailed):
    """A child process of the mesh never became ready, or kept crashing after restarts."""


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a child that exited, and when to give up on it."""

    initial_s: float = 0.5  # the first restart's delay; doubled after each quick crash
    max_s: float = 10.0  # the longest delay
    stable_after_s: float = 30.0  # up this long: its next crash starts over at initial_s
    max_failures: int = 5  # more quick crashes in a row than this: give up (stop the mesh)
    ready_timeout_s: float = 30.0  # a (re)start not ready in time counts as a crash


class Backoff:
    """Restart delays for one child (pure: the caller measures the uptime)."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.failures = 0  # quick crashes in a row

    def next_delay(self, uptime_s: float) -> float | None:
        """The delay before the next start after a run of ``uptime_s``; None: give up."""
        if uptime_s >= self.policy.stable_after_s:
            self.failures = 0
        self.failures += 1
        if self.failures > self.policy.max_failures:
            return None
        delay = self.policy.initial_s * 2.0 ** (self.failures - 1)
        return float(min(self.policy.max_s, delay))


def describe_exit(returncode: int) -> str:
    """``exit code 3`` / ``killed by SIGKILL`` for an asyncio returncode."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    """Owns the children; ``async with Supervisor() as sup`` guarantees they are stopped.

    ``say`` receives the lines a person watching should see (restarts, give-ups).
    """

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.say = say or (lambda msg: log.info("%s", msg))
        self.children: dict[str, Child] = {}  # the current process of each child, by name
        self.stopping = False

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def pids(self) -> dict[str, int]:
        return {name: child.pid for name, child in self.children.items()}

    async def start_retrying(self, spec: ChildSpec, attempts: int = 3) -> Child:
        """:meth:`start`, tried up to ``attempts`` times (0.5 s, then 1 s apart): a port
        taken for a moment by someone else's connection should not fail ``myco up``, and a
        real misconfiguration still fails within a couple of seconds."""
        delay = self.policy.initial_s
        for attempt in range(1, attempts + 1):
            try:
                return await self.start(spec)
            except ChildFailed as exc:
                if attempt == attempts or self.stopping:
                    raise
                self.say(f"{exc}; retrying in {delay:g}s")
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def start(self, spec: ChildSpec) -> Child:
        """Start ``spec`` and wait until it is ready; :class:`ChildFailed` if it is not."""
        if self.stopping:
            raise ChildFailed(f"{spec.name}: not started, the mesh is stopping")
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
        child = Child(spec, proc, time.monotonic())
        self.children[spec.name] = child
        log.info("started %s (pid %s)", spec.name, proc.pid)
        try:
            await self._wait_ready(child)
        except ChildFailed:
            await stop_process_group(proc, 0.0, spec.name)
            raise
        return child

    async def _wait_ready(self, child: Child) -> None:
        spec, proc = child.spec, child.proc
        if spec.ready is None:
            return
        timeout = self.policy.ready_timeout_s
        deadline = time.monotonic() + timeout
        while not spec.ready():
            if proc.returncode is not None:
                raise ChildFailed(
                    f"{spec.name} exited ({describe_exit(proc.returncode)}) while starting; "
                    f"see {spec.log_path}"
                )
            if time.monotonic() > deadline:
                raise ChildFailed(
                    f"{spec.name} was not ready after {timeout:.0f}s; see {spec.log_path}"
                )
            await asyncio.sleep(0.05)

    async def supervise(self, name: str, on_start: Callable[[Child], None]) -> None:
        """Keep child ``name`` running until cancelled; ``on_start`` after each restart.

        Raises :class:`ChildFailed` once it crashed ``max_failures`` times in a row, each
        within ``stable_after_s`` of its start (the mesh then stops with that error).
        """
        backoff = Backoff(self.policy)
        child = self.children[name]
        while True:
            returncode = await child.proc.wait()
            uptime = time.monotonic() - child.started_at
            # Whatever the child left in its group (workers, helpers) goes with it.
            _signal_group(child.pid, signal.SIGKILL)
            if self.stopping:
                await _until_cancelled()
            what = f"{name} exited ({describe_exit(returncode)})"
            while True:
                delay = backoff.next_delay(uptime)
                if delay is None:
                    raise ChildFailed(
                        f"{what}; it crashed {backoff.failures} times in a row, each within "
                        f"{self.policy.stable_after_s:g}s of starting: giving up "
                        f"(see {child.spec.log_path})"
                    )
                self.say(f"{what}; restarting in {delay:g}s")
                await asyncio.sleep(delay)
                try:
                    child = await self.start(child.spec)
                except ChildFailed as exc:
                    if self.stopping:
                        await _until_cancelled()
                    what, uptime = str(exc), 0.0
                    continue
                break
            self.say(f"{name} restarted (pid {child.pid})")
            on_start(child)

    def kill_all(self) -> None:
        """The forced stop: SIGKILL every child's process group at once (synchronous)."""
        self.stopping = True
        for child in self.children.values():
            _signal_group(child.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """Stop every child, newest first: SIGTERM to its group, grace, SIGKILL."""
        self.stopping = True
        try:
            for child in reversed(list(self.children.values())):
                await stop_process_group(child.proc, child.spec.stop_grace_s, child.spec.name)
        except BaseException:
            self.kill_all()  # cut short (a forced stop): nothing may outlive us
            raise
        self.children.clear()


async def stop_process_group(
    proc: asyncio.subprocess.Process, grace_s: float, name: str = ""
) -> None:
    if proc.returncode is None and grace_s > 0:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            log.warning("%s did not stop within %.1fs; killing it", name or proc.pid, grace_s)
    # The group may still hold grandchildren even when the leader is gone.
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        await proc.wait()


async def _until_cancelled() -> None:
    """Park a watcher whose child was stopped on purpose until the stop cancels it."""
    await asyncio.get_running_loop().create_future()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
