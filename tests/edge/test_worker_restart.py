"""A crashed edge worker is restarted: ``myco edge --workers 2`` under a steady load (one
attempt per request on a connection of its own, bench.loadgen), one worker killed with -9.

What may fail is exactly what the killed worker held: requests sent before the kernel
closed its socket and not answered when it was killed (in its hands or in its accept
queue). Every request sent after that is answered by the other worker, and by both once the
supervisor has started a new one; the restart is logged with the running count.

A plain (sync) test running its own loop: the edge directory's conftest would otherwise run
it once per event loop, and this one is about processes, not loops.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil

from bench.loadgen import Load
from reconciler.edge.process import WorkerBackoff
from reconciler.httpclient import one_attempt_session
from tests.edge.backends import Backend
from tests.edge.conftest import EdgeProcess
from tests.helpers import async_wait_for

RPS = 200


def workers(edge: EdgeProcess) -> dict[int, psutil.Process]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    assert edge.proc is not None
    found = {}
    for kid in psutil.Process(edge.proc.pid).children():
        try:
            if "resource_tracker" not in " ".join(kid.cmdline()):
                found[kid.pid] = kid
        except psutil.Error:  # gone, or a zombie not reaped yet: not a worker any more
            pass
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def listening(pid: int, port: int) -> bool:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


async def scenario(edge: EdgeProcess) -> None:
    backend = await Backend("a").start()
    try:
        # (the backend's port is known only now: the edge's arguments are completed here)
        edge.args += ["--route", f"app={backend.endpoint}", "--workers", "2"]
        edge.start()
        async with one_attempt_session() as client:
            await edge.ready(client)
        before = workers(edge)
        assert len(before) == 2
        victim = min(before)
        await async_wait_for(
            lambda: all(listening(p, edge.port) for p in before), within=20, what="both listen"
        )
        async with Load(f"{edge.url}/app/x", rps=RPS, timeout_s=5.0) as load:
            outcomes = load.result.outcomes
            await async_wait_for(lambda: len(outcomes) >= RPS // 2, within=20, what="warm-up")
            t_kill = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            await async_wait_for(lambda: gone(victim), interval=0.002, what="the worker gone")
            t_gone = time.monotonic()

            def replaced() -> int:
                new = [p for p in workers(edge) if p not in before]
                return new[0] if new and listening(new[0], edge.port) else 0

            fresh = await async_wait_for(replaced, within=20, what="a new worker listening")
            t_back = time.monotonic()
            await async_wait_for(
                lambda: len(load.result.between(t_back)) >= RPS, within=20, what="load after"
            )
        result = load.result
        survivor = [p for p in before if p != victim]
        assert sorted(workers(edge)) == sorted([*survivor, fresh])

        failed = result.failed
        held = [o for o in result.outcomes if o.at < t_gone and o.done >= t_kill]
        print(
            f"sent {result.sent}, failed {len(failed)}; in flight or queued when the worker "
            f"was killed: {len(held)}; restart took {t_back - t_kill:.2f}s"
        )
        # Only what the killed worker held may fail: sent before its socket closed,
        # unanswered when it was killed.
        assert all(o.at < t_gone and o.done >= t_kill for o in failed), failed
        assert len(failed) <= len(held)
        # Everything sent afterwards was served: by the survivor, then by both.
        during, after = result.between(t_gone, t_back), result.between(t_back)
        assert during
        assert all(o.status == 200 for o in during)
        assert len(after) >= RPS
        assert all(o.status == 200 for o in after)
    finally:
        await backend.stop()


def test_a_killed_worker_is_restarted_and_only_its_requests_fail() -> None:
    edge = EdgeProcess()
    try:
        asyncio.run(scenario(edge))
        pids = set(workers(edge))
        code, err = edge.stop()
        assert code == 0, err
        assert not any(psutil.pid_exists(p) for p in pids)  # stopped and reaped
        assert "(1 worker restart(s) so far)" in err, err
        assert "was killed by SIGKILL after" in err, err
        assert "restarting it in 0.5s" in err, err
        assert "restarted (pid " in err, err
    finally:
        if edge.proc is not None and edge.proc.poll() is None:
            os.killpg(edge.proc.pid, signal.SIGKILL)
            edge.proc.communicate()


def test_a_worker_that_keeps_dying_is_restarted_ever_more_calmly() -> None:
    b = WorkerBackoff(initial_s=0.5, max_s=10.0, stable_after_s=30.0)
    assert [b.next_delay(1.0) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.next_delay(30.0) == 0.5  # it had stayed up: start over
    assert b.next_delay(0.1) == 1.0
