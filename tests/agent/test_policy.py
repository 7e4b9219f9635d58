"""Restart backoff and crash-loop detection on virtual time (injected clock and rng)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.agent.policy import RestartTracker, backoff_delay
from reconciler.model import RestartPolicy

POLICY = RestartPolicy(backoff_initial_s=0.5, backoff_max_s=8.0, max_failures=5, window_s=60)


class MaxRng(random.Random):
    """Jitter at its top: the delay is exactly the exponential value."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (50, 8.0)],
)
def test_backoff_doubles_up_to_the_cap(failures: int, expected: float) -> None:
    assert backoff_delay(POLICY, failures, MaxRng()) == expected


@given(st.integers(1, 100), st.integers(0, 2**32))
def test_jitter_stays_between_half_and_full(failures: int, seed: int) -> None:
    d = backoff_delay(POLICY, failures, random.Random(seed))
    full = min(8.0, 0.5 * 2 ** (failures - 1))
    assert full / 2 <= d <= full


def test_jitter_spreads_a_fleet() -> None:
    delays = {backoff_delay(POLICY, 3, random.Random(seed)) for seed in range(20)}
    assert len(delays) > 10


def test_crash_loop_after_max_failures_within_the_window() -> None:
    t = RestartTracker(POLICY, MaxRng())
    now = 1000.0
    delays = []
    for _ in range(4):
        v = t.record_failure(now, 1, False)
        assert v.restart
        assert not v.crash_loop
        delays.append(v.delay_s)
        now += v.delay_s + 1.0  # virtual time: ran for a second, then crashed
    assert delays == [0.5, 1.0, 2.0, 4.0]
    v = t.record_failure(now, 1, False)
    assert v.crash_loop
    assert not v.restart
    assert "5 failures within 60s" in v.reason
    assert t.restarts == 4


def test_failures_spread_wider_than_the_window_are_no_loop() -> None:
    t = RestartTracker(POLICY, MaxRng())
    now = 0.0
    for _ in range(20):
        v = t.record_failure(now, 1, False)
        assert v.restart
        now += 20.0  # three failures per window at most
    assert t.restarts == 20


@pytest.mark.parametrize(
    ("policy", "exit_code", "unhealthy", "restart"),
    [
        ("always", 0, False, True),
        ("always", 1, False, True),
        ("on-failure", 0, False, False),
        ("on-failure", 2, False, True),
        ("on-failure", 0, True, True),
        ("on-failure", None, False, True),
        ("never", 1, False, False),
    ],
)
def test_restart_policy(policy: str, exit_code: int | None, unhealthy: bool, restart: bool) -> None:
    t = RestartTracker(RestartPolicy(policy=policy), random.Random(1))  # type: ignore[arg-type]
    assert t.record_failure(0.0, exit_code, unhealthy).restart is restart
