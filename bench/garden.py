"""Garden validation benchmark: ``python -m bench.garden [--json] [--apps N]``.

Generates a garden of N apps (default 1,000; one file each, every one with its own source
folder, some depends_on edges) and measures:

* ``validate_s`` — a cold read and full validation of the whole garden (new reader);
* ``revalidate_one_s`` — the same reader again after one file changed (only that file is
  parsed again; the cross-document rules and source checks run over all apps).

Targets: validate_s < 1 s, revalidate_one_s < 50 ms. Reports the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from reconciler.garden import GardenReader

TEMPLATE = """\
# app {i}
apiVersion: myco/v1
kind: Spore
metadata:
  name: {name}
  labels:
    team: team-{team}
spec:
  version: "1.{i}.0"
  source: ../../apps/{name}
  command: [python3, app.py, --port, "{port}"]
  env:
    LOG_LEVEL: info
    APP_INDEX: "{i}"
  nutrients: {{cpu_milli: 100, memory_mb: 64}}
  health: {{path: /health, interval_s: 1, timeout_s: 1}}
  instances: {instances}
  rollout: {{strategy: blue-green, warmup_s: 2}}
  route: {{prefix: /{name}}}
{deps}"""


def generate(root: Path, n: int) -> Path:
    (root / ".git").mkdir()  # the repository root for source resolution
    garden = root / "garden"
    for i in range(n):
        name = f"app-{i:04d}"
        (root / "apps" / name).mkdir(parents=True)
        deps = f"  depends_on: [app-{i - 1:04d}]\n" if i % 10 else ""
        sub = garden / f"team-{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{name}.yaml").write_text(
            TEMPLATE.format(i=i, name=name, team=i % 20, port=8000 + i, instances=i % 4, deps=deps)
        )
    return garden


def run(n: int, repeat: int) -> dict[str, float | int]:
    best_full = best_one = float("inf")
    with tempfile.TemporaryDirectory(prefix="myco-bench-garden-") as tmp:
        garden = generate(Path(tmp), n)
        target = garden / "team-07" / "app-0007.yaml"
        apps = 0
        for r in range(repeat):
            start = time.perf_counter()
            reader = GardenReader(garden)
            result = reader.read()
            best_full = min(best_full, time.perf_counter() - start)
            if result.problems:
                raise SystemExit(f"generated garden is invalid: {result.problems[0]}")
            apps = len(result.garden.apps)
            target.write_text(re.sub(r"instances: \d+", f"instances: {r + 5}", target.read_text()))
            st = target.stat()
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse clocks
            start = time.perf_counter()
            again = reader.read()
            best_one = min(best_one, time.perf_counter() - start)
            changed = {a.name: a for a in again.garden.apps}["app-0007"]
            if changed.deployment.instances != r + 5 or again.problems:
                raise SystemExit("re-validation did not see the change")
    return {"apps": apps, "validate_s": round(best_full, 4), "revalidate_one_s": round(best_one, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.garden", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    figures = run(args.apps, args.repeat)
    ok = figures["validate_s"] < 1.0 and figures["revalidate_one_s"] < 0.05
    if args.json:
        print(json.dumps({**figures, "targets_met": ok}))
    else:
        print(
            f"{figures['apps']} apps: validate {figures['validate_s'] * 1000:.0f} ms "
            f"(target < 1000), re-validate after one change "
            f"{figures['revalidate_one_s'] * 1000:.1f} ms (target < 50)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
