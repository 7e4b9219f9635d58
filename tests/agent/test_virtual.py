"""The supervisor on virtual time with the scripted runner: exact backoff, no real waiting."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

from reconciler.agent.fake import FakeRunner, Script
from reconciler.agent.nutrients import Enforcer, Limits
from reconciler.agent.policy import backoff_delay
from reconciler.agent.runner import LaunchSpec
from reconciler.agent.state import InstanceConfig, PersistedInstance, StateDir
from reconciler.agent.supervisor import Supervisor, SupervisorSettings
from reconciler.clock import VirtualClock
from reconciler.httpclient import one_attempt_session
from reconciler.model import Health, RestartPolicy
from reconciler.records import InstanceRecord, Nutrients
from tests.helpers import async_wait_for, free_port

POLICY = RestartPolicy(backoff_initial_s=1.0, backoff_max_s=30.0, max_failures=4, window_s=600)

Until = Callable[[list[InstanceRecord], FakeRunner], bool]


def _persisted(enforcer: Enforcer, policy: RestartPolicy) -> PersistedInstance:
    cfg = InstanceConfig(
        instance_id="v-1",
        app="demo",
        digest="d",
        node="vnode",
        argv=("never-run",),
        cwd="/",
        nutrients=Nutrients(100, 64),
        health=Health(interval_s=5.0, grace_s=3600.0),
        restart=policy,
    )
    return PersistedInstance(cfg, free_port(), enforcer.prepare("v-1", cfg.nutrients))


async def _drive(
    tmp_path: Path, runs: list[Script], policy: RestartPolicy, until: Until, seed: int = 42
) -> tuple[list[InstanceRecord], VirtualClock, FakeRunner]:
    """Run one supervisor on virtual time until ``until`` holds, then wither it."""
    clock = VirtualClock(start=1000.0)
    runner = FakeRunner(clock, runs)
    enforcer = Enforcer("vnode", prefer="rlimit")  # nothing touches the host's cgroups
    reports: list[InstanceRecord] = []
    async with one_attempt_session() as session:
        sup = Supervisor(
            _persisted(enforcer, policy),
            runner=runner,
            enforcer=enforcer,
            state=StateDir(tmp_path / "state"),
            session=session,
            settings=SupervisorSettings(node="vnode", drain_delay_s=0.0),
            report=reports.append,
            routed=lambda ep: False,
            clock=clock,
            rng=random.Random(seed),
        )
        task = asyncio.ensure_future(sup.lifecycle())
        try:
            await async_wait_for(lambda: until(reports, runner), within=10, interval=0)
            sup.request_wither()
            await asyncio.wait_for(task, 10)
        finally:
            task.cancel()
    return reports, clock, runner


def _settled(reports: list[InstanceRecord], runner: FakeRunner) -> bool:
    return bool(reports) and reports[-1].phase in ("failed", "exited")


async def test_crash_loop_backoff_is_exact_on_virtual_time(tmp_path: Path) -> None:
    started = time.monotonic()
    reports, clock, runner = await _drive(tmp_path, [Script(7)] * 10, POLICY, _settled)
    rng = random.Random(42)
    expected = [backoff_delay(POLICY, n, rng) for n in (1, 2, 3)]
    restart_sleeps = [s for s in clock.sleeps if s >= 0.5]
    assert restart_sleeps == expected
    assert 0.5 <= expected[0] <= 1.0
    assert 1.0 <= expected[1] <= 2.0
    assert 2.0 <= expected[2] <= 4.0
    assert len(runner.started) == 4
    failed = [r for r in reports if r.phase == "failed"][-1]
    assert failed.last_exit_code == 7
    assert failed.restarts == 3
    assert "crash loop: 4 failures within 600s" in failed.message
    assert reports[-1].phase == "exited"  # withered afterwards
    assert time.monotonic() - started < 5  # seconds of backoff took no real time


async def test_a_long_lived_run_between_crashes_is_no_loop(tmp_path: Path) -> None:
    policy = RestartPolicy(backoff_initial_s=1.0, max_failures=3, window_s=60)
    runs = [Script(1), Script(1, lifetime_s=120.0), Script(1), Script(0, 1e9)]
    reports, _, runner = await _drive(
        tmp_path, runs, policy, lambda _, r: len(r.started) >= 4, seed=1
    )
    assert len(runner.started) == 4
    assert all(r.phase != "failed" for r in reports)


async def test_fake_processes_end_on_the_clock_or_when_killed(tmp_path: Path) -> None:
    clock = VirtualClock(start=1000.0)
    runner = FakeRunner(clock, [Script(3, lifetime_s=5.0), Script(0, float("inf"))])
    limits = Limits(mechanism="rlimit")

    def spec(name: str) -> LaunchSpec:
        return LaunchSpec(name, "n", ("x",), tmp_path, {}, tmp_path / f"{name}.log", limits)

    short, forever = runner.start(spec("a")), runner.start(spec("b"))
    waits = [asyncio.ensure_future(runner.wait(p)) for p in (short, forever)]
    await clock.sleep(4.0)
    assert not any(w.done() for w in waits)
    await clock.sleep(1.0)
    assert await asyncio.wait_for(waits[0], 5) == 3
    assert not waits[1].done()
    runner.signal(forever, "b", "n", limits, 9)  # no time passes: the kill alone wakes it
    assert await asyncio.wait_for(waits[1], 5) == -9
    assert not runner.adopt(forever)
