"""The simulator against real processes: the same scenario, within a factor of two.

32 member processes, each in its own network namespace on a bridge, 10% loss by nftables
on every veth (UDP and TCP); the same scenario in :class:`SimCluster` over 10 seeds
(``bench/simreal.py`` has the harness, the three loss levels and the 10-minute soak).
The bookkeeping both sides share (:class:`Timeline`) is checked on its own first.
"""

from __future__ import annotations

import math

import pytest

from bench import simreal
from bench.simreal import RealCluster, Scenario, Timeline

MEMBERS = 32
LOSS = 0.1
SEEDS = 10


# --- the shared bookkeeping (no processes) --------------------------------------------


def _timeline() -> Timeline:
    tl = Timeline(["a", "b", "c", "d"], victim="d", publishers={"bench/key0": "a"})
    for o in tl.names:
        for t in tl.names:
            tl.member(o, 0.0, t, "alive")
    tl.since = 1.0
    return tl


def test_timeline_measures_spread_from_the_publishers_own_change() -> None:
    tl = _timeline()
    assert tl.formed()
    tl.change("a", 10.0, "a", "bench/key0", False)
    tl.change("b", 10.2, "a", "bench/key0", False)
    tl.change("c", 10.4, "a", "bench/key0", False)
    assert not tl.spread("bench/key0")
    tl.change("d", 10.9, "a", "bench/key0", False)
    tl.change("d", 11.5, "a", "bench/key0", False)  # a later version: not a first sight
    tl.change("b", 10.1, "b", "bench/key0", False)  # another owner's key of that name
    assert tl.spread("bench/key0")
    f = tl.figures()
    assert (f["t_50_s"], f["t_99_s"], f["t_100_s"]) == (0.4, 0.9, 0.9)


def test_timeline_detection_and_false_positives() -> None:
    tl = _timeline()
    tl.member("a", 0.5, "b", "dead")  # before the measurement: forming, not counted
    tl.member("a", 2.0, "d", "dead")  # the victim, still alive: a false positive
    tl.member("b", 3.0, "c", "suspect")
    tl.killed_at = 5.0
    tl.member("b", 11.0, "d", "dead")
    assert not tl.detected()
    tl.member("c", 12.5, "d", "dead")
    tl.member("a", 14.0, "d", "dead")
    tl.member("d", 14.0, "d", "dead")  # about itself: ignored
    assert tl.detected()
    f = tl.figures()
    assert (f["detect_first_s"], f["detect_last_s"]) == (6.0, 9.0)
    assert (f["false_positives"], f["suspicions"]) == (1, 1)


def test_unfinished_runs_count_as_infinitely_slow_and_ratios_use_the_median() -> None:
    runs: list[dict[str, float | None]] = [{"t_99_s": 1.0}, {"t_99_s": 2.0}, {"t_99_s": None}]
    sim = simreal.summarize(runs)
    assert sim["t_99_s"] == {"median": 2.0, "worst": None, "best": 1.0}
    assert simreal.ratios({"t_99_s": 3.0, "t_100_s": None}, sim)["t_99_s"] == 1.5
    assert simreal.ratios({"t_99_s": 3.0}, sim)["t_100_s"] is None
    assert math.isclose((1 - simreal.per_interface_drop(0.3)) ** 2, 0.7)


# --- real processes -------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.slow
def test_simulator_within_a_factor_two_of_32_real_members_at_10pct_loss() -> None:
    reason = simreal.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    sc = Scenario(MEMBERS, LOSS, warmup_s=3.0)
    rc = RealCluster(MEMBERS, sc.profile)
    try:
        rc.setup()
        level = simreal.compare(rc, sc, SEEDS)
    finally:
        rc.close()
    assert rc.leftovers() == []
    report = "\n".join([simreal.HEADER, *simreal.level_rows(level)])
    lo, hi = simreal.RATIO_BOUNDS
    for name in simreal.COMPARED:
        ratio = level["ratio"][name]
        assert ratio is not None, f"{name}: no figure\n{report}"
        assert lo <= ratio <= hi, f"{name}: real/sim = {ratio}\n{report}"
