"""Benchmark of the pure plan: ``python -m bench.plan [--json]``.

1,000 apps × 10 instances on 100 nodes. Reports:

* ``plan_s`` — a full plan from scratch (a fresh planner, nothing placed yet: 10,000
  placements on the nutrient ledger);
* ``plan_converged_s`` — a full plan of the converged mesh (nothing to do);
* ``replan_one_s`` — one app's version bumped, re-planned by the planner that planned the
  converged mesh (incremental: it finds the changed app by record identity).

Targets: plan_s < 1 s, replan_one_s < 50 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from reconciler.core.model import Actual
from reconciler.core.plan import Planner
from reconciler.core.sim import agents_step, make_app, make_desired, make_nodes
from reconciler.records import Nutrients

APPS, PER_APP, NODES = 1000, 10, 100


def run(apps: int = APPS, per_app: int = PER_APP, nodes: int = NODES) -> dict[str, float]:
    desired = make_desired(
        *(make_app(f"app{i:04d}", per_app, nutrients=Nutrients(10, 16)) for i in range(apps))
    )
    actual = Actual(nodes=make_nodes(nodes, 64000, 262144), epoch=1)

    t0 = time.perf_counter()
    actions, _ = Planner().plan(desired, actual, 0.0, full=True)
    plan_s = time.perf_counter() - t0
    placed = sum(len(r.instances) for r in actions.intents.values() if r is not None)

    planner = Planner()
    now = 0.0
    for _ in range(6):
        actions, _ = planner.plan(desired, actual, now)
        actual = agents_step(actual.apply(actions), now)
        now += 1.0
    t0 = time.perf_counter()
    converged, statuses = Planner().plan(desired, actual, now, full=True)
    plan_converged_s = time.perf_counter() - t0
    healthy = sum(1 for s in statuses.values() if s.health == "Healthy")

    planner.plan(desired, actual, now)  # warm
    bumped = make_app("app0500", per_app, version="2", nutrients=Nutrients(10, 16))
    desired2 = replace(desired, apps={**desired.apps, "app0500": bumped})
    t0 = time.perf_counter()
    one, _ = planner.plan(desired2, actual, now)
    replan_one_s = time.perf_counter() - t0
    return {
        "apps": apps,
        "instances": apps * per_app,
        "nodes": nodes,
        "placed": placed,
        "plan_s": round(plan_s, 4),
        "plan_converged_s": round(plan_converged_s, 4),
        "converged_healthy": healthy,
        "converged_plan_empty": converged.empty,
        "replan_one_s": round(replan_one_s, 4),
        "replan_one_intents": len(one.intents),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plan", description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    result = run()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:22} {value}")
    ok = result["plan_s"] < 1.0 and result["replan_one_s"] < 0.05
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
