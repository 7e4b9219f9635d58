"""Which enforcement is chosen, what it writes and what it cleans up, on a fake cgroup
tree (tmp files), and the clean-up once more on the host's real cgroup v1 hierarchy.

The host's own mechanism is exercised by the real-process tests; this covers the
branches the host may not offer (cgroup v2 with controllers, v1, none).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.agent.nutrients import Enforcer, Limits, cgroup_pids
from reconciler.agent.runner import LaunchSpec, _shell_script
from reconciler.fabric import Fabric, open_fabric
from reconciler.records import Nutrients
from reconciler.spore.trust import TrustPolicy
from tests.agent.mesh import make_spore, one, publish_intent, serve_repo
from tests.helpers import async_wait_for, wait_for


def _v2(tmp: Path, controllers: str) -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
    base = tmp / "unified" / "svc"
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text(controllers)
    return [("/", str(tmp / "unified"), "cgroup2", "rw")], {"": "/svc"}


def _v1(tmp: Path) -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
    mounts = []
    for ctrl in ("memory", "cpu"):
        (tmp / ctrl / "svc").mkdir(parents=True)
        mounts.append(("/", str(tmp / ctrl), "cgroup", f"rw,{ctrl}"))
    return mounts, {"memory": "/svc", "cpu": "/svc"}


def test_cgroup2_with_delegated_controllers(tmp_path: Path) -> None:
    mounts, own = _v2(tmp_path, "cpuset cpu io memory pids")
    e = Enforcer("n1", mounts=mounts, own=own)
    assert e.mechanism == "cgroup2"
    lim = e.prepare("i1", Nutrients(250, 64))
    inst = tmp_path / "unified" / "svc" / "myco-n1" / "i1"
    assert lim.mechanism == "cgroup2"
    assert lim.cgroup_dirs == (str(inst),)
    assert (inst / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (inst / "cpu.max").read_text() == "25000 100000"
    assert (inst.parent / "cgroup.subtree_control").read_text() == "+memory +cpu"
    script = _shell_script(LaunchSpec("i1", "n1", ("app",), Path("/srv"), {}, Path("/l"), lim))
    assert f"echo 0 > {inst}/cgroup.procs" in script
    assert "ulimit" not in script


def test_cgroup2_without_controllers_falls_back_to_v1(tmp_path: Path) -> None:
    m2, own2 = _v2(tmp_path, "")  # like this host: a v2 mount with no controllers
    m1, own1 = _v1(tmp_path)
    e = Enforcer("n1", mounts=m2 + m1, own={**own2, **own1})
    assert e.mechanism == "cgroup1"
    lim = e.prepare("i1", Nutrients(100, 32))
    mem = tmp_path / "memory" / "svc" / "myco-n1" / "i1"
    cpu = tmp_path / "cpu" / "svc" / "myco-n1" / "i1"
    assert lim.cgroup_dirs == (str(mem), str(cpu))
    assert (mem / "memory.limit_in_bytes").read_text() == str(32 * 1024 * 1024)
    assert (cpu / "cpu.cfs_quota_us").read_text() == "10000"
    e.remove(lim)  # (regular files here: rmdir refuses, and that is tolerated)


def test_nothing_writable_means_rlimit_and_says_so(tmp_path: Path) -> None:
    e = Enforcer("n1", mounts=[], own={})
    assert e.mechanism == "rlimit"
    assert "CPU not capped" in e.reason
    lim = e.prepare("i1", Nutrients(100, 32))
    assert lim.mechanism == "rlimit"
    assert lim.cgroup_dirs == ()
    script = _shell_script(LaunchSpec("i1", "n1", ("app",), Path("/srv"), {}, Path("/l"), lim))
    assert f"ulimit -v {32 * 1024}" in script


def test_prefer_rlimit_skips_cgroups(tmp_path: Path) -> None:
    mounts, own = _v2(tmp_path, "cpu memory")
    assert Enforcer("n1", "rlimit", mounts=mounts, own=own).mechanism == "rlimit"


def test_restarted_agent_in_its_v2_leaf_uses_the_parent(tmp_path: Path) -> None:
    mounts, _ = _v2(tmp_path, "cpu memory")
    leaf = tmp_path / "unified" / "svc" / "myco-agent-n1"
    leaf.mkdir()
    (leaf / "cgroup.controllers").write_text("cpu memory")
    e = Enforcer("n1", mounts=mounts, own={"": "/svc/myco-agent-n1"})
    lim = e.prepare("i1", Nutrients(100, 32))
    assert lim.cgroup_dirs == (str(tmp_path / "unified" / "svc" / "myco-n1" / "i1"),)


def test_the_group_weighs_the_sum_of_the_cpu_budgets(tmp_path: Path) -> None:
    mounts, own = _v1(tmp_path)
    e = Enforcer("n1", mounts=mounts, own=own)
    group = tmp_path / "cpu" / "svc" / "myco-n1"
    a = e.prepare("a", Nutrients(100, 32))
    assert (group / "a" / "cpu.shares").read_text() == "102"
    e.prepare("b", Nutrients(250, 32))
    assert (group / "cpu.shares").read_text() == str(350 * 1024 // 1000)
    e.track("adopted", 1000)  # an instance re-adopted after an agent restart counts too
    assert (group / "cpu.shares").read_text() == str(1350 * 1024 // 1000)
    for f in (tmp_path / "cpu" / "svc" / "myco-n1" / "a").iterdir():
        f.unlink()  # (a real cgroup directory is empty once its processes are gone)
    for f in (tmp_path / "memory" / "svc" / "myco-n1" / "a").iterdir():
        f.unlink()
    e.remove(a)
    assert (group / "cpu.shares").read_text() == str(1250 * 1024 // 1000)


# --- clean-up: stale and exit sweeps ----------------------------------------------------


def _fake_rmdir(busy: dict[str, int] | None = None) -> Callable[[Path], None]:
    """rmdir as cgroupfs does it, on a tree of plain files: refused (EBUSY) while
    ``cgroup.procs`` lists a pid or a sub-cgroup exists; ``busy[name]`` more refusals
    for an empty one (its last process still exiting)."""
    pending = busy if busy is not None else {}

    def rmdir(d: Path) -> None:
        if not d.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such cgroup", str(d))
        procs = d / "cgroup.procs"
        subdirs = [c for c in d.iterdir() if c.is_dir()]
        if subdirs or (procs.is_file() and procs.read_text().split()):
            raise OSError(errno.EBUSY, "busy", str(d))
        if pending.get(d.name, 0) > 0:
            pending[d.name] -= 1
            raise OSError(errno.EBUSY, "busy", str(d))
        shutil.rmtree(d)

    return rmdir


def _fake_instance(e: Enforcer, iid: str, pids: str = "") -> Limits:
    lim = e.prepare(iid, Nutrients(100, 32))
    for d in lim.cgroup_dirs:
        (Path(d) / "cgroup.procs").write_text(pids)
    return lim


def test_sweep_removes_only_empty_unpersisted_cgroups(tmp_path: Path) -> None:
    mounts, own = _v1(tmp_path)
    e = Enforcer("n1", mounts=mounts, own=own, rmdir=_fake_rmdir())
    _fake_instance(e, "running", "4242\n")  # left running for the next agent to adopt
    _fake_instance(e, "persisted")  # empty, but its instance restarts in it
    _fake_instance(e, "stale")  # left by an agent killed with -9
    orphan = _fake_instance(e, "orphan", "777\n")  # holds processes, no state: untouched
    out = e.remove_stale({"running", "persisted"})
    assert out.removed == ["stale"]
    assert out.kept == ["persisted", "running"]
    assert out.in_use == ["orphan"]
    assert not out.agent_dir_removed
    for ctrl in ("memory", "cpu"):
        group = tmp_path / ctrl / "svc" / "myco-n1"
        assert sorted(c.name for c in group.iterdir() if c.is_dir()) == [
            "orphan",
            "persisted",
            "running",
        ]
    assert (Path(orphan.cgroup_dirs[0]) / "cgroup.procs").read_text() == "777\n"

    # everything gone and nothing persisted: the agent's own directories go too
    for iid in ("running", "orphan"):
        for ctrl in ("memory", "cpu"):
            (tmp_path / ctrl / "svc" / "myco-n1" / iid / "cgroup.procs").write_text("")
    out = e.cleanup(keep=())
    assert out.removed == ["orphan", "persisted", "running"]
    assert out.agent_dir_removed
    assert not (tmp_path / "memory" / "svc" / "myco-n1").exists()
    assert not (tmp_path / "cpu" / "svc" / "myco-n1").exists()
    assert (tmp_path / "cpu" / "svc").is_dir()  # never above the agent's own directory


async def test_exit_waits_for_a_cgroup_whose_last_process_is_exiting(tmp_path: Path) -> None:
    mounts, own = _v1(tmp_path)
    busy = {"gone": 3}
    e = Enforcer("n1", mounts=mounts, own=own, rmdir=_fake_rmdir(busy))
    _fake_instance(e, "gone")
    out = await e.cleanup_settled(keep=(), within_s=10)
    assert out.removed == ["gone"]
    assert out.agent_dir_removed
    assert busy == {"gone": 0}
    # a cgroup that holds a process is not waited for
    _fake_instance(e, "adopt-me", "99\n")
    out = await e.cleanup_settled(keep=(), within_s=10)
    assert out.in_use == ["adopt-me"]
    assert not out.agent_dir_removed


def test_on_the_hosts_cgroup_v1(tmp_path: Path) -> None:
    """The real hierarchy (root, cgroup1 writable): a stale cgroup goes, one with a live
    process stays with its process; once the process is gone everything goes."""
    node = f"sweep-{os.getpid()}-{tmp_path.name[-6:]}".replace("_", "-")
    e = Enforcer(node, prefer="cgroup1")
    if e.mechanism != "cgroup1":
        pytest.skip(f"cgroup v1 not usable here: {e.reason}")
    proc: subprocess.Popen[bytes] | None = None
    try:
        live = e.prepare("live", Nutrients(100, 32))
        e.prepare("stale", Nutrients(100, 32))
        e.prepare("kept", Nutrients(100, 32))
        join = "; ".join(f"echo 0 > {d}/cgroup.procs" for d in live.cgroup_dirs)
        proc = subprocess.Popen(["/bin/sh", "-c", f"{join}; exec sleep 60"])
        wait_for(lambda: proc.pid in cgroup_pids(live), what="the process in its cgroups")

        out = e.remove_stale({"kept"})
        assert out.removed == ["stale"]
        assert out.in_use == ["live"]
        assert proc.poll() is None  # untouched
        assert cgroup_pids(live) == {proc.pid}
        groups = e.agent_dirs()
        assert len(groups) == 2
        for g in groups:
            assert sorted(c.name for c in g.iterdir() if c.is_dir()) == ["kept", "live"]

        proc.kill()
        proc.wait()
        out = asyncio.run(e.cleanup_settled(keep=(), within_s=10))
        assert sorted(out.removed) == ["kept", "live"]
        assert out.agent_dir_removed
        assert not any(g.exists() for g in groups)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for g in e.agent_dirs():
            for c in g.glob("*/") if g.is_dir() else ():
                with contextlib.suppress(OSError):
                    os.rmdir(c)
            with contextlib.suppress(OSError):
                os.rmdir(g)


def _any_exists(paths: list[Path]) -> bool:
    return any(p.exists() for p in paths)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie counts: this test process is its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    gone = stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
    if gone:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    return gone


async def test_a_real_agent_cleans_its_cgroups_at_start_and_exit(tmp_path: Path) -> None:
    """Start: a stale cgroup (left by an agent killed with -9) goes. A clean exit leaving
    its instance running keeps that cgroup (the process stays in it); the next agent adopts
    the instance and, withering on exit, leaves no cgroup of this node behind."""
    node = f"cg-{os.getpid()}-{tmp_path.name[-6:]}".replace("_", "-")
    probe = Enforcer(node, prefer="cgroup1")
    if probe.mechanism != "cgroup1":
        pytest.skip(f"cgroup v1 not usable here: {probe.reason}")
    stale = probe.prepare("stale-1", Nutrients(100, 32))
    spore, digest, pub = make_spore(tmp_path)
    pid = 0
    cfg = AgentConfig(
        node=node,
        state_dir=tmp_path / "state",
        capacity=Nutrients(1000, 1024),
        enforcement="cgroup1",
        resync_s=0.2,
        drain_delay_s=0.05,
        drain_timeout_s=5.0,
    )

    async def run_agent(config: AgentConfig, rec: Fabric, until: Callable[[Agent], object]) -> None:
        async with open_fabric(node, seeds=[rec.addr], state_dir=tmp_path / "af") as fab:
            agent = Agent(config, fab, TrustPolicy.load([pub]))
            task = asyncio.ensure_future(agent.run())
            try:
                await async_wait_for(lambda: until(agent), within=30, what=f"{node} ready")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    try:
        async with (
            serve_repo(tmp_path / "repo") as (repo, url),
            open_fabric("reconciler", state_dir=tmp_path / "rf") as rec,
        ):
            await asyncio.to_thread(repo.put, spore)
            publish_intent(rec, node, 1, one("web-1", "web", digest, (url,)))

            def running(agent: Agent) -> bool:
                r = agent.records.get("web-1")
                return r is not None and r.phase == "ready"

            await run_agent(cfg, rec, running)
            assert not _any_exists([Path(d) for d in stale.cgroup_dirs])  # swept at start
            web = [g / "web-1" for g in probe.agent_dirs()]
            pids = set().union(*(cgroup_pids(Limits("cgroup1", (str(d),))) for d in web))
            assert len(pids) == 1  # left running, in its cgroups, for the next agent
            pid = pids.pop()
            assert not _gone(pid)

            await run_agent(replace(cfg, wither_on_exit=True), rec, running)  # adopts it
            assert not _any_exists(probe.agent_dirs())
            assert _gone(pid)
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for g in probe.agent_dirs():
            for c in g.glob("*/") if g.is_dir() else ():
                with contextlib.suppress(OSError):
                    os.rmdir(c)
            with contextlib.suppress(OSError):
                os.rmdir(g)
