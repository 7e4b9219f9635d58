"""Nutrient enforcement: cgroup v2, else cgroup v1, else rlimits (DESIGN §7).

Instance cgroups are only ever created beneath the agent's *own* cgroup (the delegated
subtree a service manager hands it), in a directory named after the agent, and no
process is ever moved out of that subtree. What is in force is reported per instance as
``"cgroup2"``, ``"cgroup1"`` or ``"rlimit"``; never silently skipped.

The child joins its cgroup itself, before ``exec`` (see :mod:`reconciler.agent.runner`),
so even its first fork is accounted and a kill of the cgroup reaches everything it ever started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
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


class Enforcer:
    """Creates, fills and removes instance cgroups under ``<own cgroup>/myco-<agent>``."""

    def __init__(self, agent_name: str, prefer: str = "auto") -> None:
        self.agent_dir = f"myco-{agent_name}"
        self.mechanism, self._bases, self.reason = self._detect(prefer)
        log.info("nutrient enforcement: %s (%s)", self.mechanism, self.reason)

    # --- detection -------------------------------------------------------------------
    def _detect(self, prefer: str) -> tuple[str, dict[str, Path], str]:
        own = _own_cgroups()
        mounts = _mountinfo()
        if prefer in ("auto", "cgroup2"):
            for root, point, fstype, _ in mounts:
                if fstype != "cgroup2" or "" not in own:
                    continue
                base = _join(point, root, own[""])
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
                return Limits("cgroup1", tuple(dirs), mem)
            except OSError as exc:
                log.warning("cgroup1 set-up failed for %s: %s; using rlimit", instance_id, exc)
                return Limits("rlimit", (), mem, f"cgroup1 failed: {exc}")
        return Limits("rlimit", (), mem, self.reason)

    def _mkdir_v2(self, d: Path) -> None:
        d.mkdir(exist_ok=True)
        # Enable the controllers for the children of our own cgroup and of the agent dir.
        for parent in (d.parent, d):
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text("+memory +cpu")

    def remove(self, limits: Limits) -> None:
        """Remove an instance's (empty) cgroups; a cgroup still in use is left alone."""
        for d in limits.cgroup_dirs:
            with contextlib.suppress(OSError):
                os.rmdir(d)

    def cleanup(self) -> None:
        """Remove the agent's own directory if no instance cgroup is left in it."""
        for base in self._bases.values():
            with contextlib.suppress(OSError):
                os.rmdir(base / self.agent_dir)


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
