"""Six hosts (network namespaces) running docs/deploy.md: formation, a Git push under load,
the active reconciler's host killed mid-rollout, an agent host killed (root; see
:mod:`bench.netmesh`).

    python -m bench.hosts --json

Figures (seconds; each ``*_failed_requests`` counts every failure, timeout and unfinished
request of a load generator sending one attempt per request through the edge):

* ``form_s``: six hosts started at once with wildcard binds -> every member sees every
  other alive;
* ``bump_s``: the commit pushed -> every edge response from the new version, minus the
  rollout's warmup;
* ``failover_s``: the active reconciler's host killed (every process, -9) in the middle of a
  blue-green rollout -> the rollout complete (every instance new and ready, no old left);
* ``host_death_replace_s``: an agent host killed -> its instances replaced and ready on the
  others.

Targets: ``form_s <= 3``, ``bump_s <= 1.5 + poll interval``, ``failover_s <= 10``,
``host_death_replace_s <= 5``, every ``*_failed_requests == 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from bench.loadgen import Load
from bench.netmesh import NetMesh, skip_reason

APP = "billing"


def settled(mesh: NetMesh, version: str, out: frozenset[str] = frozenset()) -> bool:
    status = mesh.status()
    if status is None:
        return False
    insts = [i for i in status.instances if i.app == APP]
    app = next((a for a in status.apps if a.name == APP), None)
    return (
        app is not None
        and app.health == "Healthy"
        and len(insts) == mesh.instances
        and all(i.version == version and i.phase == "ready" for i in insts)
        and not any(i.node in out for i in insts)
        and sum(len(p) for p in mesh.instance_pids(APP).values()) == mesh.instances
    )


def edge_only(mesh: NetMesh, version: str, tries: int = 10) -> bool:
    for _ in range(tries):
        status, body = mesh.edge_get()
        if status != 200 or not isinstance(body, dict) or body.get("version") != version:
            return False
    return True


def load(mesh: NetMesh, rps: float) -> Load:
    return Load(
        f"{mesh.edge_url}/{APP}/hello", rps=rps, timeout_s=5.0, connect=mesh.socket_factory()
    )


def describe(failed: list[Any]) -> list[str]:
    return [f"{o.status} {o.error[:100]}" for o in failed[:5]]


async def measure(mesh: NetMesh, rps: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    wait = mesh.wait

    # form: every host started at once
    mesh.setup()
    t0 = time.monotonic()
    mesh.start()
    await asyncio.to_thread(wait, mesh.formed, 60, "the cluster to form")
    out["form_s"] = round(time.monotonic() - t0, 3)
    await asyncio.to_thread(wait, lambda: settled(mesh, "1.0.0"), 90, "1.0.0 settled")

    # bump: a push under load
    async with load(mesh, rps) as gen:
        await asyncio.sleep(1.0)
        pushed = await asyncio.to_thread(mesh.bump, "2.0.0")
        await asyncio.to_thread(wait, lambda: settled(mesh, "2.0.0"), 60, "2.0.0 settled")
        await asyncio.to_thread(wait, lambda: edge_only(mesh, "2.0.0"), 20, "edge on 2.0.0")
        await asyncio.sleep(1.0)
    first = gen.result.first_time_all("2.0.0", since=pushed)
    out["bump_s"] = None if first is None else round(first - pushed - mesh.warmup_s, 3)
    out["bump_requests"] = gen.result.sent
    out["bump_failed_requests"] = len(gen.result.failed)
    out["bump_failures"] = describe(gen.result.failed)

    # failover: the active reconciler's host dies mid-rollout
    active = await asyncio.to_thread(
        mesh.wait_value, mesh.active_reconciler, 20, "an active reconciler"
    )
    async with load(mesh, rps) as gen:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(mesh.bump, "3.0.0")

        def mid() -> bool:
            status = mesh.status()
            return status is not None and {i.version for i in status.instances if i.app == APP} >= {
                "2.0.0",
                "3.0.0",
            }

        await asyncio.to_thread(wait, mid, 30, "the rollout to start")
        killed = time.monotonic()
        await asyncio.to_thread(mesh.kill_host, active)
        await asyncio.to_thread(wait, lambda: settled(mesh, "3.0.0"), 60, "3.0.0 settled")
        out["failover_s"] = round(time.monotonic() - killed, 3)
        await asyncio.sleep(0.5)
    out["failover_requests"] = gen.result.sent
    out["failover_failed_requests"] = len(gen.result.failed)
    out["failover_failures"] = describe(gen.result.failed)

    # host death: an agent host with an instance dies
    status = mesh.status()
    node = next(i.node for i in status.instances if i.app == APP)
    victim = mesh.host_of_node(node)
    out["host_death_placement_before"] = sorted(i.node for i in status.instances if i.app == APP)
    async with load(mesh, rps) as gen:
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        await asyncio.to_thread(mesh.kill_host, victim)
        await asyncio.to_thread(
            wait, lambda: settled(mesh, "3.0.0", frozenset({victim.name})), 60, "replaced"
        )
        out["host_death_replace_s"] = round(time.monotonic() - killed, 3)
        await asyncio.sleep(0.5)
    out["host_death_requests"] = gen.result.sent
    out["host_death_failed_requests"] = len(gen.result.failed)
    out["host_death_failures"] = describe(gen.result.failed)
    return out


def targets(r: dict[str, Any], poll: float) -> dict[str, bool]:
    def le(key: str, bound: float) -> bool:
        return r.get(key) is not None and r[key] <= bound

    return {
        "form_s <= 3": le("form_s", 3.0),
        f"bump_s <= 1.5 + poll interval ({1.5 + poll:g})": le("bump_s", 1.5 + poll),
        "failover_s <= 10": le("failover_s", 10.0),
        "host_death_replace_s <= 5": le("host_death_replace_s", 5.0),
        **{f"{k} == 0": r.get(k) == 0 for k in r if k.endswith("_failed_requests")},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hosts", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--poll-interval", type=float, default=1.0, help="reconciler Git poll (s)")
    p.add_argument("--warmup", type=float, default=0.5, help="blue-green warmup (s)")
    p.add_argument("--rps", type=float, default=40.0, help="load through the edge")
    args = p.parse_args(argv)
    reason = skip_reason()
    if reason is not None:
        print(f"bench.hosts: cannot run here: {reason}", file=sys.stderr)
        return 2
    mesh = NetMesh(poll_interval=args.poll_interval, warmup_s=args.warmup)
    result: dict[str, Any] = {
        "hosts": [f"{h.short}:{h.role}" for h in mesh.hosts],
        "profile": mesh.profile,
        "poll_interval_s": args.poll_interval,
        "warmup_s": args.warmup,
        "rps": args.rps,
    }
    error = None
    try:
        result.update(asyncio.run(measure(mesh, args.rps)))
    except AssertionError as exc:
        error = str(exc).splitlines()[0]
    finally:
        mesh.close()
    result["error"] = error
    result["targets"] = targets(result, args.poll_interval)
    result["all_targets_met"] = error is None and all(result["targets"].values())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0 if result["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
