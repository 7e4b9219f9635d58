"""The reconcile loop scales an app with ``autoscale`` from the edges' ``edge/stats``.

A real reconcile loop on an in-memory fabric: two nodes publish their records, an "edge"
member publishes the figures an edge would, and the loop's intents and garden record are
read back from the fabric, as agents and ``myco status`` read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from reconciler.clock import RealClock
from reconciler.fabric import MemoryNetwork, open_memory_fabric
from reconciler.fabric.api import FabricAPI
from reconciler.garden import read_garden
from reconciler.reconcile.builder import Overrides
from reconciler.reconcile.lease import LeaseConfig
from reconciler.reconcile.loop import ReconcileLoop, ReconcileSettings
from reconciler.reconcile.source import StaticSource
from reconciler.records import (
    KEY_EDGE_STATS,
    KEY_GARDEN,
    KEY_NODE,
    EdgeStatsRecord,
    IntentRecord,
    NodeRecord,
    Nutrients,
)
from tests.helpers import async_wait_for

DIGEST = "sha256:" + "ab" * 32


def garden(tmp: Path, autoscale: str) -> StaticSource:
    (tmp / "src").mkdir(exist_ok=True)
    (tmp / "web.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: myco/v1
            kind: Spore
            metadata: {name: web}
            spec:
              version: "1"
              source: ./src
              command: [python3, app.py]
              nutrients: {cpu_milli: 100, memory_mb: 64}
              instances: 2
            """
        )
        + textwrap.indent(textwrap.dedent(autoscale), "  ")
    )
    result = read_garden(tmp)
    assert result.ok, result.problems
    return StaticSource(result)


def placed(fabric: FabricAPI, app: str) -> int:
    n = 0
    for (_owner, key), value in fabric.view("intents/").items():
        if key.startswith("intents/") and isinstance(value, dict):
            n += sum(1 for i in IntentRecord.from_json(value).instances if i.app == app)
    return n


def status(fabric: FabricAPI, app: str) -> dict[str, Any]:
    for (_owner, key), value in fabric.view(KEY_GARDEN).items():
        apps = value.get("apps") if key == KEY_GARDEN and isinstance(value, dict) else None
        if isinstance(apps, dict):
            st = apps.get(app)
            if isinstance(st, dict):
                return st
    return {}


@contextlib.asynccontextmanager
async def mesh(tmp: Path, autoscale: str) -> AsyncIterator[tuple[FabricAPI, FabricAPI]]:
    """(the edge member, a node member); the reconcile loop runs meanwhile."""
    net = MemoryNetwork(RealClock())
    async with (
        open_memory_fabric("r0", net) as r0,
        open_memory_fabric("n1", net, seeds=[r0.addr]) as n1,
        open_memory_fabric("n2", net, seeds=[r0.addr]) as n2,
        open_memory_fabric("edge", net, seeds=[r0.addr]) as edge,
    ):
        for fab in (n1, n2):
            cap = Nutrients(1000, 4096)  # 10 instances of 100m per node
            fab.publish(KEY_NODE, NodeRecord(fab.name, capacity=cap, free=cap).to_json())
        settings = ReconcileSettings(
            resync_s=0.2, lease=LeaseConfig(ttl_s=1.5, renew_s=0.3, settle_s=0.2)
        )
        rec = ReconcileLoop(
            r0,
            garden(tmp, autoscale),
            None,
            settings,
            overrides=Overrides(pins={"web": DIGEST}),  # a spore "built" already
        )
        task = asyncio.create_task(rec.run())
        try:
            await async_wait_for(
                lambda: {"n1", "n2"} <= {o for o, _ in r0.view(KEY_NODE)}, what="nodes seen"
            )
            yield edge, n1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def load(edge: FabricAPI, rps: float) -> None:
    figures = {"arrival_rps": rps, "rps": rps, "requests": int(rps), "p99_ms": 5.0}
    edge.publish(KEY_EDGE_STATS, EdgeStatsRecord(apps={"web": figures}).to_json())


RPS_TARGET = """\
autoscale:
  min: 1
  max: 30
  target: {rps_per_instance: 100}
  down: {stabilize_s: 0}
"""


async def test_counts_follow_the_edges_load(tmp_path: Path) -> None:
    async with mesh(tmp_path, RPS_TARGET) as (edge, node):
        # no edge yet: the garden's instances run, and the status says why nothing scales
        await async_wait_for(lambda: placed(node, "web") == 2, what="2 instances (the start)")
        await async_wait_for(
            lambda: "no edge" in status(node, "web").get("autoscale", {}).get("blocked", ""),
            what="why nothing scales",
        )
        load(edge, 500.0)
        await async_wait_for(lambda: placed(node, "web") == 5, what="scaled up to 5")
        auto = await async_wait_for(
            lambda: status(node, "web").get("autoscale", {}).get("last"), what="decision"
        )
        assert auto["direction"] == "up"
        assert (auto["previous"], auto["desired"]) == (2, 5)
        block = status(node, "web")["autoscale"]
        assert (block["min"], block["max"], block["target"]) == (1, 30, {"rps_per_instance": 100})
        load(edge, 90.0)
        await async_wait_for(lambda: placed(node, "web") == 1, what="scaled down to 1")


async def test_credits_cap_the_count_and_say_so(tmp_path: Path) -> None:
    async with mesh(tmp_path, RPS_TARGET) as (edge, node):
        await async_wait_for(lambda: placed(node, "web") == 2, what="2 instances")
        load(edge, 2500.0)  # wants 25; the two nodes hold 20
        await async_wait_for(lambda: placed(node, "web") == 20, what="as many as fit")
        st = await async_wait_for(
            lambda: (s := status(node, "web")).get("autoscale", {}).get("desired") == 20 and s,
            what="status",
        )
        assert st["autoscale"]["pending"].startswith("Pending: no credits: wants 25")
        assert (
            "autoscale.max 30 is beyond the mesh's credits: 20 instance(s)"
            in (st["autoscale"]["warning"])
        )
        assert "web.yaml:" in st["autoscale"]["warning"]  # with the line of max


def route_hold(fabric: FabricAPI, app: str) -> float:
    for (_owner, _key), value in fabric.view(f"routes/{app}").items():
        hold = value.get("hold_s") if isinstance(value, dict) else None
        if isinstance(hold, int | float):
            return float(hold)
    return -1.0


TO_ZERO = """\
autoscale:
  max: 4
  target: {rps_per_instance: 100}
  down: {stabilize_s: 0}
  to_zero_after_s: 0.5
"""


async def test_an_idle_app_goes_to_zero_and_a_held_request_wakes_it(tmp_path: Path) -> None:
    async with mesh(tmp_path, TO_ZERO) as (edge, node):
        load(edge, 50.0)
        await async_wait_for(lambda: placed(node, "web") == 1, what="1 instance for 50 rps")
        assert route_hold(node, "web") == 30.0  # the edge may hold its requests
        edge.publish(KEY_EDGE_STATS, EdgeStatsRecord(apps={}).to_json())
        await async_wait_for(lambda: placed(node, "web") == 0, what="scaled to zero")
        # the garden record may still be the one published before the scale to zero
        st = await async_wait_for(
            lambda: (
                (status(node, "web").get("autoscale") or {}).get("last", {}).get("desired") == 0
                and status(node, "web")
            ),
            what="the status of the scale to zero",
        )
        assert st["autoscale"]["last"]["reason"].startswith("no request for 0.5s")
        held = {"held": 1, "inflight": 1, "arrival_rps": 1.0, "requests": 0}
        edge.publish(KEY_EDGE_STATS, EdgeStatsRecord(apps={"web": held}).to_json())
        await async_wait_for(lambda: placed(node, "web") == 1, what="woken")
