"""The process-runner seam: start, watch, signal and re-adopt instance processes.

:class:`LocalRunner` is the real one. Design choices that matter (docs/agent.md, and the
Nomad complaints the issue lists):

* **No helper process per instance.** The child is started with ``posix_spawn`` through
  ``/bin/sh -c '...; exec "$@"'``: the shell joins the cgroup (or sets ``ulimit -v``),
  changes to the payload directory and *execs* the workload, so the pid we record is the
  workload's own and nothing stays behind.
* **Logs survive an agent restart.** stdout and stderr are the log file itself, opened
  ``O_APPEND`` in the child; no pipe goes through the agent. Rotation is copy-truncate
  (safe because of ``O_APPEND``), done by the agent while it runs.
* **Exits are seen through a pidfd**, for our own children and for adopted ones alike; a
  pidfd also pins the exact process, so a reused pid can never be confused with it once
  adopted, and adoption itself checks the kernel's start time (``/proc/<pid>/stat``).
* **Stopping reaches everything**: its process group, its cgroup, and, as a last sweep,
  any process whose environment carries this instance's ``MYCO_INSTANCE``/``MYCO_NODE``
  (catches a grandchild that called ``setsid`` where no cgroup is available).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler.agent.nutrients import Limits, cgroup_pids, kill_cgroup
from reconciler.errors import AgentError

SH = "/bin/sh"


@dataclass(frozen=True)
class LaunchSpec:
    instance_id: str
    node: str
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    log_path: Path
    limits: Limits


@dataclass(frozen=True)
class ProcInfo:
    """What identifies a running instance process across agent restarts."""

    pid: int
    start_ticks: int  # field 22 of /proc/<pid>/stat: never equal for a reused pid


class ProcessRunner(Protocol):
    def start(self, spec: LaunchSpec) -> ProcInfo: ...

    def adopt(self, info: ProcInfo) -> bool:
        """Whether ``info`` is still the same live process (then it is watched again)."""
        ...

    async def wait(self, info: ProcInfo) -> int | None:
        """Wait for the process to end; its exit code, or None if unknown (adopted)."""
        ...

    def members(self, info: ProcInfo, instance_id: str, node: str, limits: Limits) -> set[int]:
        """Every live process that belongs to the instance (group, cgroup, environment)."""
        ...

    def signal(
        self, info: ProcInfo, instance_id: str, node: str, limits: Limits, sig: int
    ) -> None: ...


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name), or None if gone/zombie."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    rest = data.rpartition(b")")[2].split()
    if len(rest) < 20 or rest[0] in (b"Z", b"X"):
        return None
    return rest


def read_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone/zombie."""
    rest = _stat_fields(pid)
    return int(rest[19]) if rest is not None else None  # field 22: starttime


def _read_environ(pid: int) -> bytes:
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    chunks: list[bytes] = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        pass
    finally:
        os.close(fd)
    return b"".join(chunks)


def _scan(pgid: int | None, marker: bytes, node_marker: bytes) -> set[int]:
    """Live pids in process group ``pgid`` or whose environment carries both markers."""
    found: set[int] = set()
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == me:
            continue
        rest = _stat_fields(pid)
        if rest is None:
            continue
        if pgid is not None and int(rest[2]) == pgid:  # field 5: pgrp
            found.add(pid)
            continue
        env = _read_environ(pid)
        if marker in env and node_marker in env:
            found.add(pid)
    return found


def _shell_script(spec: LaunchSpec) -> str:
    lines: list[str] = []
    for d in spec.limits.cgroup_dirs:
        lines.append(f"echo 0 > {shlex.quote(os.path.join(d, 'cgroup.procs'))} || exit 126")
    if spec.limits.mechanism == "rlimit" and spec.limits.memory_bytes:
        lines.append(f"ulimit -v {spec.limits.memory_bytes // 1024} || exit 126")
    lines.append(f"cd {shlex.quote(str(spec.cwd))} || exit 126")
    lines.append('exec "$@"')
    return "; ".join(lines)


class LocalRunner:
    """The real runner: ``posix_spawn`` in a new session, pidfd watching, group kills."""

    _RESET_SIGNALS = (
        signal.SIGPIPE,
        signal.SIGXFSZ,
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGCHLD,
    )

    def __init__(self) -> None:
        self._children: set[int] = set()  # pids we spawned (so we reap them)

    def start(self, spec: LaunchSpec) -> ProcInfo:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [SH, "-c", _shell_script(spec), "myco-sprout", *spec.argv]
        env = {k: str(v) for k, v in spec.env.items()}
        file_actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (
                os.POSIX_SPAWN_OPEN,
                1,
                str(spec.log_path),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                0o640,
            ),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        try:
            pid = os.posix_spawn(
                SH,
                argv,
                env,
                file_actions=file_actions,
                setsid=True,
                setsigmask=(),
                setsigdef=self._RESET_SIGNALS,
            )
        except OSError as exc:
            raise AgentError(f"cannot start {spec.instance_id}: {exc}") from exc
        self._children.add(pid)
        ticks = read_start_ticks(pid)
        return ProcInfo(pid, ticks if ticks is not None else 0)

    def adopt(self, info: ProcInfo) -> bool:
        return info.start_ticks != 0 and read_start_ticks(info.pid) == info.start_ticks

    async def wait(self, info: ProcInfo) -> int | None:
        try:
            fd = os.pidfd_open(info.pid)
        except ProcessLookupError:
            return self._reap(info.pid)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def _ready() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, _ready)
        try:
            await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return self._reap(info.pid)

    def _reap(self, pid: int) -> int | None:
        if pid not in self._children:
            return None
        self._children.discard(pid)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status)

    def members(self, info: ProcInfo, instance_id: str, node: str, limits: Limits) -> set[int]:
        # The group is only trusted while its leader is verified: a reused pid must never
        # make an unrelated process group a target.
        leader = read_start_ticks(info.pid) == info.start_ticks
        pids = {p for p in cgroup_pids(limits) if read_start_ticks(p) is not None}
        if leader:
            pids.add(info.pid)
        if not limits.cgroup_dirs:
            # No cgroup holds the instance: walk /proc for its group and for anything
            # that carries its environment (a grandchild that called setsid).
            pids |= _scan(
                info.pid if leader else None,
                f"MYCO_INSTANCE={instance_id}\0".encode(),
                f"MYCO_NODE={node}\0".encode(),
            )
        return pids

    def signal(self, info: ProcInfo, instance_id: str, node: str, limits: Limits, sig: int) -> None:
        if read_start_ticks(info.pid) == info.start_ticks:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(info.pid, sig)  # setsid made pgid == pid
        kill_cgroup(limits, sig)
        for pid in self.members(info, instance_id, node, limits):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def forget(self) -> None:
        """Stop tracking children (the agent detaches and leaves them running)."""
        self._children.clear()
