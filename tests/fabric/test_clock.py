"""The one clock: virtual timers fire in order, sleep jumps forward, real timers are guarded."""

from __future__ import annotations

import asyncio
import logging

import pytest

from reconciler.clock import Clock, RealClock, VirtualClock


def test_virtual_timers_fire_in_order_at_their_time() -> None:
    clock = VirtualClock(start=10.0, wall_start=5000.0)
    fired: list[tuple[str, float]] = []
    clock.call_later(2.0, lambda: fired.append(("b", clock.now())))
    clock.call_later(1.0, lambda: fired.append(("a", clock.now())))
    clock.call_later(2.0, lambda: fired.append(("c", clock.now())))  # ties: order set
    gone = clock.call_later(1.5, lambda: fired.append(("cancelled", clock.now())))
    gone.cancel()
    assert not clock.advance(1.9)
    assert fired == [("a", 11.0)]
    assert clock.now() == pytest.approx(11.9)
    assert clock.wall() == pytest.approx(5001.9)
    clock.run_until(12.0)
    assert fired == [("a", 11.0), ("b", 12.0), ("c", 12.0)]
    clock.shift_wall(-100.0)
    assert clock.now() == 12.0
    assert clock.wall() == pytest.approx(4902.0)


def test_run_until_stops_early_and_keeps_the_rest() -> None:
    clock = VirtualClock()
    hits: list[float] = []
    for t in (1.0, 2.0, 3.0):
        clock.call_at(t, lambda: hits.append(clock.now()))
    assert clock.run_until(10.0, stop=lambda: len(hits) == 2)
    assert hits == [1.0, 2.0]
    assert clock.now() == 2.0  # stopped at the timer that satisfied the test
    assert clock.pending == 1
    clock.advance(1.0)
    assert hits == [1.0, 2.0, 3.0]


def test_a_timer_set_by_a_timer_fires_in_the_same_run() -> None:
    clock = VirtualClock()
    hits: list[float] = []
    clock.call_later(1.0, lambda: clock.call_later(0.5, lambda: hits.append(clock.now())))
    clock.call_later(0.0, lambda: hits.append(clock.now()))  # due now: fires on the next run
    clock.advance(2.0)
    assert hits == [0.0, 1.5]
    assert clock.now() == 2.0


async def test_virtual_sleep_jumps_forward_and_fires_due_timers() -> None:
    clock = VirtualClock(start=100.0)
    woke = asyncio.Event()
    clock.call_later(30.0, woke.set)
    await clock.sleep(29.0)
    assert not woke.is_set()
    await clock.sleep(1.0)
    assert woke.is_set()
    assert clock.now() == 130.0
    assert clock.sleeps == [29.0, 1.0]


async def test_real_clock_timers_run_on_the_loop_and_survive_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock: Clock = RealClock()
    done = asyncio.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    start = clock.now()
    clock.call_later(0.0, boom)
    clock.call_later(0.01, done.set)
    cancelled = clock.call_later(0.0, lambda: pytest.fail("a cancelled timer fired"))
    cancelled.cancel()
    with caplog.at_level(logging.ERROR, logger="myco.clock"):
        await asyncio.wait_for(done.wait(), 5)
    assert clock.now() - start >= 0.0
    assert "timer failed" in caplog.text
    assert abs(clock.wall() - asyncio.get_running_loop().time()) > 1e6  # epoch, not loop
