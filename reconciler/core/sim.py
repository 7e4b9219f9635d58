"""A pure stand-in for the agents, to drive the plan in tests and benchmarks.

:func:`agents_step` does what agents would do with the intents between two plans: an
instance an agent is asked to run appears (``starting``) and, on the next step, is
``ready`` with an endpoint; an instance no longer asked for disappears. ``fail`` names
digests whose instances crash instead of becoming ready.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from zlib import crc32

from reconciler.addr import format_addr
from reconciler.core.model import Actual, Desired, DesiredApp
from reconciler.model import AppSpec, Deployment, Dna, Rollout
from reconciler.records import InstanceRecord, NodeRecord, Nutrients


def make_nodes(
    count: int, cpu_milli: int = 4000, memory_mb: int = 8192, platforms: tuple[str, ...] = ()
) -> dict[str, NodeRecord]:
    cap = Nutrients(cpu_milli, memory_mb)
    return {
        f"node-{i:03d}": NodeRecord(
            node_id=f"node-{i:03d}", capacity=cap, free=cap, platforms=platforms
        )
        for i in range(count)
    }


def make_app(
    name: str,
    instances: int = 1,
    version: str = "1",
    digest: str | None = None,
    rollout: Rollout | None = None,
    nutrients: Nutrients | None = None,
    depends_on: tuple[str, ...] = (),
    suspend: bool = False,
    platform: str = "",
) -> DesiredApp:
    dna = Dna(
        name=name,
        version=version,
        source=Path(f"/garden/{name}"),
        command=("python3", "app.py"),
        nutrients=nutrients or Nutrients(100, 64),
    )
    spec = AppSpec(
        name=name,
        dna=dna,
        deployment=Deployment(
            instances=instances,
            rollout=rollout or Rollout(),
            depends_on=depends_on,
            suspend=suspend,
        ),
    )
    return DesiredApp(
        spec=spec,
        digest=f"{name}{version}".ljust(16, "0") if digest is None else digest,
        platform=platform,
    )


def make_desired(*apps: DesiredApp, revision: str = "r1", **kw: object) -> Desired:
    return Desired(
        apps={a.spec.name: a for a in apps},
        revision=revision,
        **kw,  # type: ignore[arg-type]
    )


def agents_step(
    actual: Actual,
    now: float,
    fail: Collection[str] = (),
    stall: Collection[str] = (),
    ports: Mapping[str, int] | None = None,
) -> Actual:
    """One round of agent work: start what is asked, report ready, forget what is not."""
    wanted = {
        inst.instance_id: (node, inst)
        for node, rec in actual.intents.items()
        if node in actual.nodes
        for inst in rec.instances
    }
    instances: dict[str, InstanceRecord] = {}
    for iid, (node, inst) in wanted.items():
        old = actual.instances.get(iid)
        if old is None:
            instances[iid] = InstanceRecord(
                instance_id=iid,
                app=inst.app,
                digest=inst.digest,
                version=inst.version,
                node=node,
                phase="starting",
                started_at=now,
                updated_at=now,
            )
        elif inst.digest in fail:
            instances[iid] = replace(
                old, phase="failed", restarts=old.restarts + 1, message="exit 1", updated_at=now
            )
        elif old.phase == "starting" and inst.digest not in stall:
            port = (ports or {}).get(iid, 10000 + crc32(iid.encode()) % 50000)
            instances[iid] = replace(
                old,
                phase="ready",
                healthy=True,
                endpoint=format_addr("127.0.0.1", port),
                updated_at=now,
            )
        else:
            instances[iid] = old
    return replace(actual, instances=instances)
