"""Nutrient enforcement: cgroup v2, else cgroup v1, else rlimits (docs/agent.md).

Instance cgroups are only ever created beneath the agent's *own* cgroup (the delegated
subtree a service manager hands it), in a directory named after the agent, and no
process is ever moved out of that subtree. What is in force is reported per instance as
``"cgroup2"``, ``"cgroup1"`` or ``"rlimit"``; never silently skipped.

The child joins its cgroup itself, before ``exec`` (see :mod:`reconciler.agent.runner`),
so even its first fork is accounted and a kill of the cgroup reaches everything it ever started.

Clean-up (:meth:`Enforcer.sweep`): at start and on a clean exit the agent removes the
instance cgroups under ``myco-<node>`` that hold no process and belong to no instance it
persisted, then ``myco-<node>`` itself once nothing is left in it. A cgroup that still
holds a process (an instance left running to be re-adopted) is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.records import Nutrients

log = logging.getLogger("myco.agent")

CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    """Where an instance's limits live and how to join them from the child."""

    mechanism: str  # "cgroup2" | "cgroup1" | "rlimit"
    cgroup_dirs: tuple[str, ...] = ()  # the instance's cgroup directories (one per hierarchy)
    memory_bytes: int = 0
    note: str = ""


def _mountinfo() -> list[tuple[str, str, str, str]]:
    """(root, mount point, fstype, super options) of every cgroup mount."""
    out: list[tuple[str, str, str, str]] = []
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        if rfields[0] in ("cgroup", "cgroup2"):
            out.append((fields[3], fields[4], rfields[0], rfields[2]))
    return out


def _own_cgroups() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    own: dict[str, str] = {}
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return own
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            own[""] = path
        for c in controllers.split(","):
            if c:
                own[c] = path
    return own


def _join(mount: str, mount_root: str, path: str) -> Path:
    rel = path
    if mount_root != "/" and rel.startswith(mount_root):
        rel = rel[len(mount_root) :]
    return Path(mount) / rel.lstrip("/")


def _writable_dir(p: Path) -> bool:
    return p.is_dir() and os.access(p, os.W_OK)


def _procs(d: Path) -> list[int]:
    """The pids in cgroup ``d`` (none if it cannot be read)."""
    try:
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


@dataclass
class Sweep:
    """What one clean-up pass did, by instance (cgroup directory name)."""

    removed: list[str] = field(default_factory=list)  # gone from every hierarchy
    in_use: list[str] = field(default_factory=list)  # holds processes: left alone
    busy: list[str] = field(default_factory=list)  # empty but refused (a process exiting)
    kept: list[str] = field(default_factory=list)  # belongs to a persisted instance
    agent_dir_removed: bool = False


class Enforcer:
    """Creates, fills and removes instance cgroups under ``<own cgroup>/myco-<agent>``."""

    def __init__(
        self,
        agent_name: str,
        prefer: str = "auto",
        *,
        mounts: list[tuple[str, str, str, str]] | None = None,
        own: dict[str, str] | None = None,
        rmdir: Callable[[Path], None] | None = None,
    ) -> None:
        """``mounts`` and ``own`` replace /proc/self/{mountinfo,cgroup}, ``rmdir`` the
        removal of a cgroup directory (for tests on a fake tree of plain files)."""
        self._mounts = mounts
        self._own = own
        self._rmdir: Callable[[Path], None] = rmdir or os.rmdir
        self.agent_dir = f"myco-{agent_name}"
        self.agent_leaf = f"myco-agent-{agent_name}"  # cgroup v2: where the agent itself moves
        self.mechanism, self._bases, self.reason = self._detect(prefer)
        self._cpu: dict[str, int] = {}  # instance -> cpu_milli, for the group's weight
        log.info("nutrient enforcement: %s (%s)", self.mechanism, self.reason)

    # --- detection -------------------------------------------------------------------
    def _detect(self, prefer: str) -> tuple[str, dict[str, Path], str]:
        own = self._own if self._own is not None else _own_cgroups()
        mounts = self._mounts if self._mounts is not None else _mountinfo()
        if prefer in ("auto", "cgroup2"):
            for root, point, fstype, _ in mounts:
                if fstype != "cgroup2" or "" not in own:
                    continue
                base = _join(point, root, own[""])
                if base.name == self.agent_leaf:
                    base = base.parent  # a restarted agent already sits in its leaf
                try:
                    ctrls = set((base / "cgroup.controllers").read_text().split())
                except OSError:
                    continue
                if {"memory", "cpu"} <= ctrls and _writable_dir(base):
                    return "cgroup2", {"": base}, f"delegated subtree {base}"
                why = f"cgroup2 at {base} offers {sorted(ctrls) or 'no controllers'}"
                log.debug("%s", why)
        if prefer in ("auto", "cgroup2", "cgroup1"):
            bases: dict[str, Path] = {}
            for root, point, fstype, opts in mounts:
                if fstype != "cgroup":
                    continue
                for ctrl in ("memory", "cpu"):
                    if ctrl in opts.split(",") and ctrl in own:
                        base = _join(point, root, own[ctrl])
                        if _writable_dir(base):
                            bases[ctrl] = base
            if {"memory", "cpu"} <= set(bases):
                return "cgroup1", bases, "v1 memory+cpu under the agent's cgroups"
        return "rlimit", {}, "no writable cgroup subtree: RLIMIT_AS only, CPU not capped"

    # --- per instance ----------------------------------------------------------------
    def prepare(self, instance_id: str, nutrients: Nutrients) -> Limits:
        mem = max(nutrients.memory_mb, 0) * 1024 * 1024
        if self.mechanism == "cgroup2":
            d = self._bases[""] / self.agent_dir
            try:
                self._mkdir_v2(d)
                inst = d / instance_id
                inst.mkdir(exist_ok=True)
                if mem:
                    (inst / "memory.max").write_text(str(mem))
                    with contextlib.suppress(OSError):
                        (inst / "memory.swap.max").write_text("0")
                if nutrients.cpu_milli:
                    quota = nutrients.cpu_milli * CPU_PERIOD_US // 1000
                    (inst / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
                    (inst / "cpu.weight").write_text(str(_weight_v2(nutrients.cpu_milli)))
                self.track(instance_id, nutrients.cpu_milli)
                return Limits("cgroup2", (str(inst),), mem)
            except OSError as exc:
                log.warning("cgroup2 set-up failed for %s: %s; using rlimit", instance_id, exc)
                return Limits("rlimit", (), mem, f"cgroup2 failed: {exc}")
        if self.mechanism == "cgroup1":
            dirs: list[str] = []
            try:
                for ctrl in ("memory", "cpu"):
                    inst = self._bases[ctrl] / self.agent_dir / instance_id
                    inst.mkdir(parents=True, exist_ok=True)
                    dirs.append(str(inst))
                    if ctrl == "memory" and mem:
                        with contextlib.suppress(OSError):
                            (inst / "memory.swappiness").write_text("0")
                        (inst / "memory.limit_in_bytes").write_text(str(mem))
                        with contextlib.suppress(OSError):
                            (inst / "memory.memsw.limit_in_bytes").write_text(str(mem))
                    if ctrl == "cpu" and nutrients.cpu_milli:
                        (inst / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                        quota = max(1000, nutrients.cpu_milli * CPU_PERIOD_US // 1000)
                        (inst / "cpu.cfs_quota_us").write_text(str(quota))
                        (inst / "cpu.shares").write_text(str(_shares_v1(nutrients.cpu_milli)))
                self.track(instance_id, nutrients.cpu_milli)
                return Limits("cgroup1", tuple(dirs), mem)
            except OSError as exc:
                log.warning("cgroup1 set-up failed for %s: %s; using rlimit", instance_id, exc)
                return Limits("rlimit", (), mem, f"cgroup1 failed: {exc}")
        return Limits("rlimit", (), mem, self.reason)

    def _mkdir_v2(self, d: Path) -> None:
        """Enable memory+cpu for the children of our cgroup and of ``d``.

        cgroup v2 refuses controllers below a cgroup that holds processes ("no internal
        processes"), so if our own cgroup holds the agent, the agent first moves itself
        into a leaf *inside* its own subtree (``myco-agent-<node>``), as systemd services
        with ``Delegate=yes`` are expected to do.
        """
        base = d.parent
        try:
            (base / "cgroup.subtree_control").write_text("+memory +cpu")
        except OSError:
            leaf = base / self.agent_leaf
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
            (base / "cgroup.subtree_control").write_text("+memory +cpu")
        d.mkdir(exist_ok=True)
        (d / "cgroup.subtree_control").write_text("+memory +cpu")

    def track(self, instance_id: str, cpu_milli: int) -> None:
        """Count an instance (new or adopted) in the CPU weight of the agent's group.

        All instances share one group (``myco-<node>``) that competes with the host's other
        tasks; its weight is the sum of their CPU budgets, so that 200 instances weigh
        like 200 budgets rather than like one process.
        """
        if self.mechanism not in ("cgroup1", "cgroup2"):
            return
        self._cpu[instance_id] = cpu_milli
        self._write_group_weight()

    def _write_group_weight(self) -> None:
        total = sum(self._cpu.values())
        with contextlib.suppress(OSError, KeyError):
            if self.mechanism == "cgroup1":
                path = self._bases["cpu"] / self.agent_dir / "cpu.shares"
                path.write_text(str(_shares_v1(total)))
            elif self.mechanism == "cgroup2":
                path = self._bases[""] / self.agent_dir / "cpu.weight"
                path.write_text(str(_weight_v2(total)))

    def remove(self, limits: Limits) -> None:
        """Remove an instance's (empty) cgroups; a cgroup still in use is left alone.

        (One the kernel still finds busy because its last process is exiting is removed
        by the next :meth:`sweep`: at the agent's exit or next start.)
        """
        for d in limits.cgroup_dirs:
            with contextlib.suppress(OSError):
                self._rmdir(Path(d))
            if self._cpu.pop(Path(d).name, None) is not None:
                self._write_group_weight()

    def agent_dirs(self) -> list[Path]:
        """``<base>/myco-<node>`` in every hierarchy in force (existing or not)."""
        return [base / self.agent_dir for base in self._bases.values()]

    def instance_cgroups(self) -> dict[str, list[Path]]:
        """instance id -> its cgroup directories found under ``myco-<node>``."""
        found: dict[str, list[Path]] = {}
        for d in self.agent_dirs():
            try:
                children = sorted(c for c in d.iterdir() if c.is_dir())
            except OSError:
                continue
            for c in children:
                found.setdefault(c.name, []).append(c)
        return found

    def sweep(self, keep: Collection[str]) -> Sweep:
        """Remove the empty instance cgroups not in ``keep``, then ``myco-<node>`` if empty.

        ``keep`` names the instances the agent has persisted (running, or to be restarted
        in their cgroup): theirs stay, even empty. A cgroup holding a process is never
        removed (nor its processes touched): it is reported as ``in_use``.
        """
        out = Sweep()
        for iid, dirs in sorted(self.instance_cgroups().items()):
            if iid in keep:
                out.kept.append(iid)
                continue
            if any(_procs(d) for d in dirs):
                out.in_use.append(iid)
                continue
            gone = True
            for d in dirs:
                try:
                    self._rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    gone = False
                    if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                        log.warning("cannot remove cgroup %s: %s", d, exc.strerror)
            (out.removed if gone else out.busy).append(iid)
            if gone:
                self._cpu.pop(iid, None)
        if not (out.kept or out.in_use or out.busy):
            removed = False
            for d in self.agent_dirs():
                with contextlib.suppress(OSError):
                    self._rmdir(d)
                    removed = True
            out.agent_dir_removed = removed
        # (a v2 agent leaf holds the agent itself while it runs: it stays)
        return out

    def remove_stale(self, keep: Collection[str]) -> Sweep:
        """At start: remove what an earlier agent on this node left (see :meth:`sweep`)."""
        out = self.sweep(keep)
        if out.removed:
            log.info(
                "removed %d stale cgroup(s) of earlier agents: %s",
                len(out.removed),
                ", ".join(out.removed),
            )
        for iid in out.in_use:
            log.warning(
                "cgroup %s/%s holds processes but no instance of this agent: left alone",
                self.agent_dir,
                iid,
            )
        return out

    def cleanup(self, keep: Collection[str] = ()) -> Sweep:
        """At exit: one :meth:`sweep` (instances left to be re-adopted keep theirs)."""
        return self.sweep(keep)

    async def cleanup_settled(self, keep: Collection[str], within_s: float = 2.0) -> Sweep:
        """:meth:`cleanup`, again while a cgroup is refused only because its last process
        is still exiting (empty but busy), up to ``within_s``."""
        deadline = time.monotonic() + within_s
        while True:
            out = self.sweep(keep)
            if not out.busy or time.monotonic() >= deadline:
                if out.busy:
                    log.warning("cgroups still busy at exit: %s", ", ".join(out.busy))
                return out
            await asyncio.sleep(0.02)


def _shares_v1(cpu_milli: int) -> int:
    """cgroup v1 ``cpu.shares`` for a CPU budget (1024 = one core), within 2..262144."""
    return max(2, min(262144, cpu_milli * 1024 // 1000))


def _weight_v2(cpu_milli: int) -> int:
    """cgroup v2 ``cpu.weight`` for a CPU budget (100 = one core), within 1..10000."""
    return max(1, min(10000, cpu_milli // 10))


def cgroup_pids(limits: Limits) -> set[int]:
    """Every pid in the instance's cgroups (what a kill must reach)."""
    pids: set[int] = set()
    for d in limits.cgroup_dirs:
        with contextlib.suppress(OSError, ValueError):
            text = (Path(d) / "cgroup.procs").read_text()
            pids.update(int(x) for x in text.split())
    return pids


def kill_cgroup(limits: Limits, sig: int) -> None:
    """Signal everything in the instance's cgroups (``cgroup.kill`` where v2 offers it)."""
    if limits.mechanism == "cgroup2" and sig == signal.SIGKILL:
        for d in limits.cgroup_dirs:
            with contextlib.suppress(OSError):
                (Path(d) / "cgroup.kill").write_text("1")
    for pid in cgroup_pids(limits):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def oom_kills(limits: Limits) -> int:
    """How many times the kernel's OOM killer fired inside the instance's memory cgroup."""
    total = 0
    for d in limits.cgroup_dirs:
        name = "memory.events" if limits.mechanism == "cgroup2" else "memory.oom_control"
        with contextlib.suppress(OSError, ValueError):
            for line in (Path(d) / name).read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    total += int(v)
    return total
