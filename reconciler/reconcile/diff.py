"""``myco diff`` / ``apply --dry-run``: what a garden would change in the running mesh.

The plan itself decides (a fresh planner over a snapshot of the fabric), so the diff shows
exactly what a reconciler would do; each changed app is then described in one line::

    + api: new, 1 instance(s) of 1.0.0
    ~ web: 1.0.0 -> 2.0.0 (spore 1a2b3c4d5e6f -> not built yet), instances 2 -> 3
    - old: pruned (2 instance(s))
    ! bad: invalid: garden/bad.yaml:3:5: unknown field 'replicas' (did you mean 'instances'?)
"""

from __future__ import annotations

from collections import Counter

from reconciler.core.model import Actual, Desired
from reconciler.core.plan import plan

UNBUILT = "unbuilt-"


def _current(actual: Actual) -> dict[str, Counter[tuple[str, str]]]:
    """app -> Counter of (digest, version) over the instances the intents place."""
    out: dict[str, Counter[tuple[str, str]]] = {}
    for node, rec in actual.intents.items():
        if node not in actual.nodes:
            continue
        for inst in rec.instances:
            out.setdefault(inst.app, Counter())[(inst.digest, inst.version)] += 1
    return out


def _short(digest: str) -> str:
    return "not built yet" if digest.startswith(UNBUILT) else digest[:12]


def diff_lines(desired: Desired, actual: Actual, now: float) -> list[str]:
    actions, statuses = plan(desired, actual, now)
    after = actual.apply(actions)
    before_apps = _current(actual)
    after_apps = _current(after)
    changed = {
        app
        for app in set(before_apps) | set(after_apps)
        if before_apps.get(app) != after_apps.get(app)
    }
    changed |= set(actions.routes)
    changed |= {a for a in desired.apps if a not in before_apps and a not in actual.routes}
    lines: list[str] = []
    for name, error in sorted(desired.invalid.items()):
        lines.append(f"! {name}: invalid: {error}")
    for app in sorted(changed - set(desired.invalid)):
        cur = before_apps.get(app, Counter())
        want = desired.apps.get(app)
        if want is None:
            if cur or app in actual.routes:
                lines.append(f"- {app}: pruned ({sum(cur.values())} instance(s))")
            continue
        spec = want.spec
        n = spec.deployment.instances
        if not cur:
            lines.append(f"+ {app}: new, {n} instance(s) of {spec.dna.version}")
            continue
        (digest, version), _ = cur.most_common(1)[0]
        parts = []
        if digest != want.digest:
            parts.append(
                f"{version or '?'} -> {spec.dna.version} "
                f"(spore {_short(digest)} -> {_short(want.digest)})"
            )
        if sum(cur.values()) != n:
            parts.append(f"instances {sum(cur.values())} -> {n}")
        status = statuses.get(app)
        if not parts and status is not None and status.reason:
            parts.append(status.reason)
        if not parts:
            parts.append("routes or placement")
        lines.append(f"~ {app}: " + ", ".join(parts))
    return lines
