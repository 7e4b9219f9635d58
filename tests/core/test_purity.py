"""The core stays pure: no I/O library, no clock, no randomness; the benchmark runs.

The rule itself (and the list of I/O libraries) lives with the other import rules in
``tests/test_layers.py`` (``PURE``); it also follows the core's imports into the package
(``records``, ``model``, ``errors``), so a helper the core uses cannot bring I/O in.
"""

from __future__ import annotations

from bench.plan import run
from tests.test_layers import PACKAGE_DIR, THE_CONTRACT, check


def test_core_imports_no_io_library() -> None:
    broken = [str(v) for v in check(PACKAGE_DIR, THE_CONTRACT).violations if "pure" in v.rule]
    assert not broken, "\n".join(broken)


def test_core_purity_covers_the_basics() -> None:
    forbidden = THE_CONTRACT.pure["core"]
    assert {"asyncio", "os", "time", "random", "socket", "aiohttp", "logging"} <= forbidden


def test_bench_small_run_is_consistent() -> None:
    result = run(apps=40, per_app=3, nodes=5)
    assert result["placed"] == 120
    assert result["converged_healthy"] == 40
    assert result["converged_plan_empty"] is True
    assert result["replan_one_intents"] >= 1
