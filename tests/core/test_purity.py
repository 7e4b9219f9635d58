"""The core stays pure: no I/O library, no clock, no randomness; the benchmark runs."""

from __future__ import annotations

import ast
from pathlib import Path

import reconciler.core
from bench.plan import run

FORBIDDEN = {
    "asyncio", "socket", "subprocess", "os", "time", "random", "datetime", "aiohttp",
    "yaml", "git", "watchdog", "psutil", "shutil", "tempfile", "io", "logging", "threading",
}  # fmt: skip


def test_core_imports_no_io_library() -> None:
    root = Path(reconciler.core.__file__).parent
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_bench_small_run_is_consistent() -> None:
    result = run(apps=40, per_app=3, nodes=5)
    assert result["placed"] == 120
    assert result["converged_healthy"] == 40
    assert result["converged_plan_empty"] is True
    assert result["replan_one_intents"] >= 1
