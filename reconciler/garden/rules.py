"""Rules a JSON Schema cannot say. Across documents: unique names and route prefixes,
``depends_on`` targets that exist and form no cycle. Within one schema-valid document
(:func:`check_spec`): ``spec.autoscale``'s bounds and target. Pure: documents in, problems
out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.garden.loader import Document, Mark, Pointer
from reconciler.garden.schema import Problem


@dataclass(frozen=True)
class Entry:
    """A document with a readable name, as the cross-document rules see it."""

    name: str
    doc: Document
    valid: bool  # passed the schema and the per-document checks


def _at(doc: Document, mark: Mark) -> str:
    return f"{doc.path}:{mark.line}"


def check_spec(doc: Document) -> list[Problem]:
    """The checks of one schema-valid document that relate several of its fields."""
    out: list[Problem] = []
    spec = doc.value.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("autoscale"), dict):
        return out
    auto: dict[str, Any] = spec["autoscale"]

    def add(ptr: Pointer, message: str) -> None:
        mark = doc.value_mark(ptr)
        out.append(Problem(doc.path, mark.line, mark.col, message))

    lo, hi = auto.get("min", 1), auto["max"]
    if lo > hi:
        add(("spec", "autoscale", "min"), f"spec.autoscale: min {lo} is greater than max {hi}")
    elif "instances" in spec and not lo <= spec["instances"] <= hi:
        add(
            ("spec", "instances"),
            f"spec.instances: {spec['instances']} is outside spec.autoscale's range {lo}..{hi}"
            " (with autoscale, instances is the starting count)",
        )
    if not auto.get("target") and not (spec.get("slo") or {}).get("p99_budget_ms"):
        mark = doc.key_mark(("spec", "autoscale"))
        out.append(
            Problem(
                doc.path,
                mark.line,
                mark.col,
                "spec.autoscale: no target: set autoscale.target (p99_ms, rps_per_instance or "
                "inflight_per_instance) or slo.p99_budget_ms",
            )
        )
    return out


def check_garden(entries: Sequence[Entry]) -> dict[str, list[Problem]]:
    """Problems per app name (an app with any problem here is invalid)."""
    out: dict[str, list[Problem]] = defaultdict(list)

    def add(entry: Entry, mark: Mark, message: str) -> None:
        out[entry.name].append(Problem(entry.doc.path, mark.line, mark.col, message))

    by_name: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_name[e.name].append(e)
    for name, group in by_name.items():
        if len(group) < 2:
            continue
        for e in group:
            others = ", ".join(
                _at(o.doc, o.doc.value_mark(("metadata", "name"))) for o in group if o is not e
            )
            add(
                e,
                e.doc.value_mark(("metadata", "name")),
                f"metadata.name: duplicate app name '{name}' (also at {others})",
            )

    valid = [e for e in entries if e.valid and len(by_name[e.name]) == 1]
    by_prefix: dict[str, list[Entry]] = defaultdict(list)
    for e in valid:
        route = e.doc.value["spec"].get("route", {})
        by_prefix[route.get("prefix", f"/{e.name}")].append(e)
    for prefix, group in by_prefix.items():
        if len(group) < 2:
            continue
        for e in group:
            ptr: Pointer = ("spec", "route", "prefix")
            if ptr not in e.doc.values:
                ptr = ("metadata", "name")
            others = ", ".join(f"'{o.name}'" for o in group if o is not e)
            add(
                e,
                e.doc.value_mark(ptr),
                f"route prefix {prefix!r} is also used by {others}",
            )

    deps: dict[str, list[str]] = {}
    for e in valid:
        targets = e.doc.value["spec"].get("depends_on", [])
        deps[e.name] = list(targets)
        for i, target in enumerate(targets):
            if target not in by_name:
                add(
                    e,
                    e.doc.value_mark(("spec", "depends_on", i)),
                    f"spec.depends_on[{i}]: no app named '{target}' in the garden",
                )
    for cycle in _cycles(deps):
        text = " -> ".join([*cycle, cycle[0]])
        for name in cycle:
            e = by_name[name][0]
            add(
                e,
                e.doc.key_mark(("spec", "depends_on")),
                f"spec.depends_on: dependency cycle {text}",
            )
    return dict(out)


def _cycles(deps: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components that are cycles (Tarjan), each in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(root: str) -> None:
        nonlocal counter
        # Iterative DFS so a long dependency chain cannot hit the recursion limit.
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            succ = [d for d in deps.get(node, []) if d in deps]
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1 or node in deps.get(node, []):
                    found.append(_order(comp, deps))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])

    for name in sorted(deps):
        if name not in index:
            visit(name)
    return found


def _order(comp: list[str], deps: dict[str, list[str]]) -> list[str]:
    """Walk the cycle from its smallest name following dependencies inside it."""
    members = set(comp)
    start = min(comp)
    path = [start]
    seen = {start}
    node = start
    while True:
        nxt = next((d for d in deps[node] if d in members and d not in seen), None)
        if nxt is None:
            break
        path.append(nxt)
        seen.add(nxt)
        node = nxt
    path += sorted(members - seen)
    return path
