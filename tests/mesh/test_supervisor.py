"""The supervisor of `myco up` on tiny real child processes: restart with backoff, give up on
a crash loop, stop and kill everything it started."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from reconciler.mesh.supervisor import (
    Backoff,
    Child,
    ChildFailed,
    ChildSpec,
    RestartPolicy,
    Supervisor,
    describe_exit,
)
from tests.helpers import async_wait_for

pytestmark = pytest.mark.timeout(60)

FAST = RestartPolicy(initial_s=0.05, max_s=0.2, stable_after_s=30.0, max_failures=3)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _spec(tmp_path: Path, code: str, name: str = "child") -> ChildSpec:
    return ChildSpec(
        name=name,
        argv=[sys.executable, "-c", code],
        log_path=tmp_path / f"{name}.log",
        stop_grace_s=5.0,
    )


def test_backoff_doubles_to_the_cap_resets_when_stable_and_gives_up():
    b = Backoff(RestartPolicy(initial_s=0.5, max_s=10.0, stable_after_s=30.0, max_failures=7))
    assert [b.next_delay(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert b.next_delay(31.0) == 0.5  # it stayed up: start over
    b = Backoff(RestartPolicy(max_failures=2))
    assert b.next_delay(0.0) is not None
    assert b.next_delay(0.0) is not None
    assert b.next_delay(0.0) is None  # the third crash in a row: give up


def test_describe_exit():
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"


async def test_a_killed_child_is_restarted_and_reported(tmp_path):
    said: list[str] = []
    started: list[Child] = []
    async with Supervisor(FAST, said.append) as sup:
        first = await sup.start(_spec(tmp_path, "import time; time.sleep(60)"))
        watcher = asyncio.create_task(sup.supervise("child", started.append))
        os.kill(first.pid, signal.SIGKILL)
        await async_wait_for(lambda: started, 10, what="a restart")
        assert started[0].pid != first.pid
        assert sup.pids() == {"child": started[0].pid}
        assert _alive(started[0].pid)
        assert said[0] == "child exited (killed by SIGKILL); restarting in 0.05s"
        assert said[1] == f"child restarted (pid {started[0].pid})"
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
    assert not _alive(started[0].pid)


async def test_a_crash_loop_gives_up_with_a_clear_error(tmp_path):
    said: list[str] = []
    async with Supervisor(FAST, said.append) as sup:
        await sup.start(_spec(tmp_path, "import sys; sys.exit(3)"))
        with pytest.raises(ChildFailed) as info:
            await asyncio.wait_for(sup.supervise("child", lambda c: None), 20)
    message = str(info.value)
    assert message.startswith("child exited (exit code 3); it crashed 4 times in a row")
    assert "giving up" in message
    assert str(tmp_path / "child.log") in message
    restarts = [line for line in said if "restarting in" in line]
    assert [line.rsplit(" ", 1)[1] for line in restarts] == ["0.05s", "0.1s", "0.2s"]


async def test_a_restart_that_never_gets_ready_counts_as_a_crash(tmp_path):
    policy = RestartPolicy(initial_s=0.01, max_s=0.01, max_failures=1, ready_timeout_s=0.5)
    marker = tmp_path / "started-once"
    # Ready only the first time: later starts stay up but never become ready.
    code = f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"
    spec = ChildSpec(
        "child",
        [sys.executable, "-c", code],
        tmp_path / "child.log",
        ready=lambda: marker.exists() and not marker.with_suffix(".used").exists(),
    )
    async with Supervisor(policy, lambda msg: None) as sup:
        first = await sup.start(spec)
        marker.with_suffix(".used").touch()
        first.proc.kill()
        with pytest.raises(ChildFailed, match="not ready after 0s|not ready after 1s"):
            await asyncio.wait_for(sup.supervise("child", lambda c: None), 20)
        pids = [p for p in sup.pids().values()]
    assert not any(_alive(p) for p in pids)


async def test_kill_all_kills_every_group_at_once(tmp_path):
    sup = Supervisor(FAST)
    # A child that ignores SIGTERM and has a grandchild in its group.
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    a = await sup.start(_spec(tmp_path, code, "a"))
    b = await sup.start(_spec(tmp_path, code, "b"))
    await async_wait_for(lambda: (tmp_path / "a.log").read_text().strip(), 10)
    grandchild = int((tmp_path / "a.log").read_text().split()[0])
    sup.kill_all()
    await asyncio.wait_for(asyncio.gather(a.proc.wait(), b.proc.wait()), 5)
    await async_wait_for(lambda: not _alive(grandchild), 5, what="the grandchild killed")
    await sup.stop()
    with pytest.raises(ChildFailed, match="stopping"):
        await sup.start(_spec(tmp_path, "pass", "late"))


async def test_a_first_start_that_fails_is_tried_again_a_few_times(tmp_path):
    """A port taken for a moment must not fail `myco up`; a real error still fails fast."""
    said: list[str] = []
    tries = tmp_path / "tries"
    # Exits at once on its first two starts, then stays up.
    code = (
        f"import pathlib, sys, time; p = pathlib.Path({str(tries)!r}); "
        "n = len(p.read_text()) if p.exists() else 0; p.write_text('x' * (n + 1)); "
        "sys.exit(1) if n < 2 else time.sleep(60)"
    )
    spec = ChildSpec(
        name="child",
        argv=[sys.executable, "-c", code],
        log_path=tmp_path / "child.log",
        ready=lambda: tries.exists() and len(tries.read_text()) >= 3,
        stop_grace_s=5.0,
    )
    async with Supervisor(FAST, said.append) as sup:
        child = await sup.start_retrying(spec)
        assert _alive(child.pid)
    assert [line.rsplit(" ", 1)[1] for line in said] == ["0.05s", "0.1s"]
    assert all("child exited (exit code 1) while starting" in line for line in said)

    said.clear()
    bad = ChildSpec(
        name="bad",
        argv=[sys.executable, "-c", "import sys; sys.exit(2)"],
        log_path=tmp_path / "bad.log",
        ready=lambda: False,
    )
    async with Supervisor(FAST, said.append) as sup:
        with pytest.raises(ChildFailed, match="while starting"):
            await sup.start_retrying(bad)
    assert len(said) == 2  # three attempts in all, then the error
