"""Which enforcement is chosen and what it writes, on a fake cgroup tree (tmp files).

The host's own mechanism is exercised by the real-process tests; this covers the
branches the host may not offer (cgroup v2 with controllers, v1, none).
"""

from __future__ import annotations

from pathlib import Path

from reconciler.agent.nutrients import Enforcer
from reconciler.agent.runner import LaunchSpec, _shell_script
from reconciler.records import Nutrients


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
