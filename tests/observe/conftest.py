"""Shared data for the observe tests: records as the agent, reconciler and edge write them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from reconciler.clock import RealClock
from reconciler.fabric import Fabric, MemoryNetwork, open_memory_fabric
from reconciler.fabric.api import JSONValue, Member
from reconciler.observe.snapshot import Entry, FabricSnapshot
from reconciler.records import (
    AppStatus,
    Backend,
    EdgeStatsRecord,
    GardenRevisionRecord,
    InstanceRecord,
    NodeRecord,
    Nutrients,
    RouteRecord,
    instance_key,
    routes_key,
)
from tests.helpers import async_wait_for

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def node(name: str, api_url: str = "", free_cpu: int = 1500) -> dict[str, JSONValue]:
    return NodeRecord(
        node_id=name,
        gossip_addr=f"{name}:7946",
        api_url=api_url,
        capacity=Nutrients(2000, 4096),
        free=Nutrients(free_cpu, 3072),
    ).to_json()


def inst(
    iid: str, app: str, node_name: str, phase: str = "ready", restarts: int = 0
) -> dict[str, JSONValue]:
    return InstanceRecord(
        instance_id=iid,
        app=app,
        digest="sha256:" + "ab" * 32,
        version="1.0.0",
        node=node_name,
        phase=phase,  # type: ignore[arg-type]
        endpoint="127.0.0.1:9000" if phase == "ready" else None,
        restarts=restarts,
        healthy=phase == "ready",
    ).to_json()


def garden(apps: dict[str, AppStatus], epoch: int = 1) -> dict[str, JSONValue]:
    rec = GardenRevisionRecord(
        revision=COMMIT, source="file:///garden", commit=COMMIT,
        apps={k: v.to_json() for k, v in apps.items()},
    ).to_json()  # fmt: skip
    rec["epoch"] = epoch
    rec["problems"] = []
    return rec


def route(app: str, n: int) -> dict[str, JSONValue]:
    return RouteRecord(
        app=app, prefix=f"/{app}", epoch=1,
        backends=tuple(Backend(f"{app}-{i}", f"127.0.0.1:{9000 + i}") for i in range(n)),
    ).to_json()  # fmt: skip


BILLING = AppStatus(sync="Synced", health="Healthy", desired=2, ready=2, rollout="idle")
SHOP = AppStatus(
    sync="OutOfSync", health="Progressing", reason="starting the new set", desired=2, ready=1,
    rollout="starting",
)  # fmt: skip


def sample_snapshot() -> FabricSnapshot:
    """Two agents, a reconciler and an edge; billing is healthy, shop is rolling out."""
    e = [
        Entry("n1", "node", node("n1", "http://127.0.0.1:1"), 3),
        Entry("n1", instance_key("billing-a"), inst("billing-a", "billing", "n1"), 4),
        Entry("n1", instance_key("shop-a"), inst("shop-a", "shop", "n1", "starting", 2), 5),
        Entry("n2", "node", node("n2", "http://127.0.0.1:2", free_cpu=500), 1),
        Entry("n2", instance_key("billing-b"), inst("billing-b", "billing", "n2"), 2),
        Entry("n2", instance_key("shop-b"), inst("shop-b", "shop", "n2"), 2),
        Entry("rec", "garden", garden({"billing": BILLING, "shop": SHOP}), 7),
        Entry("rec", routes_key("billing"), route("billing", 2), 8),
        Entry(
            "edge",
            "edge/stats",
            EdgeStatsRecord(
                apps={
                    "billing": {
                        "requests": 10,
                        "errors_5xx": 1,
                        "rps": 2.5,
                        "p50_ms": 1.0,
                        "p99_ms": 9.5,
                    }
                }
            ).to_json(),
            3,
        ),  # fmt: skip
    ]
    members = (
        Member("edge", "10.0.0.4:1", "alive", 1),
        Member("n1", "10.0.0.1:1", "alive", 1),
        Member("n2", "10.0.0.2:1", "suspect", 1),
        Member("rec", "10.0.0.3:1", "alive", 1),
    )
    return FabricSnapshot(members, tuple(e))


@dataclass
class Mesh:
    """An observer member and a second member that publishes the records."""

    observer: Fabric
    writer: Fabric


async def publish_sample(writer: Fabric, api_url: str = "") -> None:
    writer.publish("node", node(writer.name, api_url))
    writer.publish(instance_key("billing-a"), inst("billing-a", "billing", writer.name))
    writer.publish(instance_key("billing-b"), inst("billing-b", "billing", writer.name))
    writer.publish("garden", garden({"billing": BILLING, "shop": SHOP}))
    writer.publish(routes_key("billing"), route("billing", 2))
    stats = {"requests": 250, "errors_5xx": 1, "rps": 12.5, "p50_ms": 1.2, "p99_ms": 8.4}
    writer.publish("edge/stats", EdgeStatsRecord(apps={"billing": stats}).to_json())


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    net = MemoryNetwork(RealClock())
    async with open_memory_fabric("observer", net) as obs:
        async with open_memory_fabric("n1", net, seeds=[obs.addr]) as writer:
            await publish_sample(writer)
            await async_wait_for(lambda: len(obs.view()) == len(writer.view()), what="records")
            yield Mesh(obs, writer)
