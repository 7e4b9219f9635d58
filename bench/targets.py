"""One way for a benchmark to evaluate its own targets in its JSON output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: name -> (operator, target): "<=", ">=" or "=="
Targets = Mapping[str, tuple[str, float]]


def evaluate(targets: Targets, result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with its value and whether it is met (a missing figure is not met)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (op, target) in targets.items():
        value = result.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            met = False
        elif op == "<=":
            met = value <= target
        elif op == ">=":
            met = value >= target
        else:
            met = value == target
        out[name] = {"value": value, "target": f"{op} {target:g}", "met": met}
    return out
