"""Convergence of a real 3-node local mesh (`myco up`), measured end to end.

    python -m bench.converge [--json]

* ``bump_s``: the garden file is written with a new version → every edge answer comes from
  it, minus the configured ``warmup_s`` (blue-green waits that long on purpose).
* ``scale_s``: instances 0 → 10, all ready and routed.
* ``node_death_failed_requests`` / ``node_death_replace_s``: under load, a node dies (its
  agent and all its instances are killed) → replacements ready and routed.
* ``workload_boot_s``: the workload's own exec → first healthy ``/health``, in the same run,
  so the figures above can be read against what the workload itself costs.

Load runs are :class:`bench.loadgen.Load` (one attempt per request, a deadline each,
unfinished requests failed); their failures are counted by kind (``*_failures_by_kind``).
``bump_s`` is ``None`` with a ``bump_s_reason`` when the load did not see the switch (no
answer from the old version: every request failed; or none from the new one after it).
``targets`` evaluates every target (:data:`TARGETS`) in the output; the exit status is 1
when one is not met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.loadgen import Load, LoadResult
from bench.localmesh import ROOT, LocalMesh, billing_manifest, free_port, start_mesh, wait_serving
from bench.targets import evaluate as evaluate_targets
from reconciler.client import fetch_snapshot
from reconciler.httpclient import one_attempt_session
from reconciler.observe.status import build_status

WARMUP_S = 0.5

TARGETS: dict[str, tuple[str, float]] = {
    "bump_s": ("<=", 1.5),
    "bump_failed_requests": ("==", 0),
    "scale_s": ("<=", 2.0),
    "node_death_failed_requests": ("==", 0),
    "node_death_replace_s": ("<=", 5.0),
}


def bump_seconds(result: LoadResult, t0: float, new: str) -> tuple[float | None, str]:
    """From writing version ``new`` at ``t0`` until every answer is from it (the send time
    of its first answer after the last answer from an older one), minus the warm-up; or
    ``(None, reason)`` when the load did not see that switch (no old answer: every request
    failed; or no new answer after the last old one)."""
    ok = [o for o in result.outcomes if o.status == 200]
    old = [o.at for o in ok if o.version != new]
    if not old:
        return None, (
            f"no answer from the old version among {result.sent} requests "
            f"({len(result.failed)} failed): no switch observed"
        )
    after = [o.at for o in ok if o.version == new and o.at > max(old)]
    if not after:
        return None, f"no answer from {new} after the last answer from an older version"
    return round(max(0.0, min(after) - t0 - WARMUP_S), 3), ""


def samples(result: LoadResult, n: int = 5) -> list[str]:
    """The first ``n`` failures, as ``"<status> <error>"``, to say what failed."""
    return [f"{o.status} {o.error[:100]}" for o in result.failed[:n]]


def evaluate(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with its value and whether it is met (a missing figure is not met)."""
    return evaluate_targets(TARGETS, result)


def workload_boot_s(runs: int = 5) -> float:
    """Median time from exec of the example workload to its first healthy answer."""
    times = []
    for _ in range(runs):
        port = free_port()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "server.py"],
            cwd=ROOT / "workloads" / "billing",
            env={"PORT": str(port), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = t0 + 30
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:  # noqa: S310
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.005)
            times.append(time.monotonic() - t0)
        finally:
            proc.terminate()
            proc.wait(10)
    return sorted(times)[len(times) // 2]


async def ready_and_routed(session: aiohttp.ClientSession, mesh: LocalMesh, n: int) -> bool:
    try:
        status = build_status(await fetch_snapshot(session, str(mesh.record()["agent_api"])))
    except Exception:  # noqa: BLE001 - an agent may be briefly unreachable; keep polling
        return False
    app = next((a for a in status.apps if a.name == "billing"), None)
    return app is not None and app.ready == n and app.backends == n


async def wait_until(cond, within: float) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if await cond():
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not reached")


async def measure(tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    mesh = start_mesh(tmp, nodes=3, manifest=billing_manifest(instances=2, warmup_s=WARMUP_S))
    try:
        await asyncio.to_thread(wait_serving, mesh, 2)
        url = f"{mesh.url}/billing/hello"
        async with one_attempt_session(timeout=aiohttp.ClientTimeout(total=2)) as session:
            # bump: new version written → every answer from it
            async with Load(url, rps=200) as load:
                await asyncio.sleep(0.5)
                t0 = time.monotonic()
                mesh.write_app(billing_manifest("2.0.0", instances=2, warmup_s=WARMUP_S))
                await asyncio.to_thread(wait_serving, mesh, 2, "2.0.0", 60)
                await asyncio.sleep(1.0)
            out["bump_s"], reason = bump_seconds(load.result, t0, "2.0.0")
            if reason:
                out["bump_s_reason"] = reason
            out["bump_requests"] = load.result.sent
            out["bump_failed_requests"] = len(load.result.failed)
            out["bump_failures_by_kind"] = load.result.failures_by_kind()
            out["bump_failure_samples"] = samples(load.result)

            # scale: 0 → 10
            mesh.write_app(billing_manifest("2.0.0", instances=0, warmup_s=WARMUP_S))
            await wait_until(lambda: ready_and_routed(session, mesh, 0), 60)
            t0 = time.monotonic()
            mesh.write_app(billing_manifest("2.0.0", instances=10, warmup_s=WARMUP_S))
            t1 = await wait_until(lambda: ready_and_routed(session, mesh, 10), 120)
            out["scale_s"] = round(t1 - t0, 3)

            # node death under load
            mesh.write_app(billing_manifest("2.0.0", instances=3, warmup_s=WARMUP_S))
            await wait_until(lambda: ready_and_routed(session, mesh, 3), 60)
            node = "node-2"
            agent_pid = int(mesh.record()["children"][node])  # type: ignore[index]
            victims = [psutil.Process(agent_pid)]
            for p in mesh.processes():
                try:
                    if p.environ().get("MYCO_NODE") == node:
                        victims.append(p)
                except psutil.Error:
                    continue
            async with Load(url, rps=200) as load:
                await asyncio.sleep(0.5)
                t0 = time.monotonic()
                # The agent is frozen, not killed: `myco up` would restart a killed one.
                victims[0].suspend()
                for p in victims[1:]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.kill()

                async def replaced() -> bool:
                    if not await ready_and_routed(session, mesh, 3):
                        return False
                    status = build_status(
                        await fetch_snapshot(session, str(mesh.record()["agent_api"]))
                    )
                    return all(i.node != node for i in status.instances if i.app == "billing")

                try:
                    t1 = await wait_until(replaced, 60)
                    await asyncio.sleep(0.5)
                finally:
                    victims[0].resume()
            out["node_death_replace_s"] = round(t1 - t0, 3)
            out["node_death_failed_requests"] = len(load.result.failed)
            out["node_death_requests"] = load.result.sent
            out["node_death_failures_by_kind"] = load.result.failures_by_kind()
            out["node_death_failure_samples"] = samples(load.result)
    finally:
        mesh.stop()
    out["workload_boot_s"] = round(workload_boot_s(), 3)
    out["warmup_s"] = WARMUP_S
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.converge", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="myco-converge-") as tmp:
        result = asyncio.run(measure(Path(tmp)))
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = evaluate(result)
    result["all_targets_met"] = all(t["met"] for t in result["targets"].values())
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            if k != "targets":
                print(f"{k:28} {v}")
        for name, t in result["targets"].items():
            print(f"target {name} {t['target']}: {t['value']} {'met' if t['met'] else 'NOT met'}")
    return 0 if result["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
