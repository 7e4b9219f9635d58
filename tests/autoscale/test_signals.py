"""The edge's per-app signals: what ``edge/stats`` carries every second (docs/autoscale.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reconciler.edge.config import EdgeConfig
from reconciler.edge.server import running_edge
from reconciler.edge.stats import EdgeStats
from reconciler.httpclient import one_attempt_session
from reconciler.records import Backend as BackendRecord
from reconciler.records import RouteRecord
from tests.edge.backends import Backend
from tests.helpers import async_wait_for


def test_signal_window_counts_arrivals_in_flight_and_quantiles() -> None:
    s = EdgeStats(started_at=0.0)
    for _ in range(4):
        s.begin("a")
    s.record("a", 200, 0.100)
    s.record("a", 503, 0.300)
    s.begin("b")
    out = s.signal(now=2.0)
    a = out["a"]
    assert (a["requests"], a["errors_5xx"], a["inflight"]) == (2, 1, 2)
    assert a["arrival_rps"] == 2.0  # 4 begun in 2 s
    assert a["rps"] == 1.0  # 2 answered in 2 s
    assert a["inflight_avg"] == pytest.approx(0.2)  # 0.4 s of work in 2 s (Little)
    assert a["p99_ms"] == pytest.approx(300, rel=0.06)
    assert a["p90_ms"] == pytest.approx(300, rel=0.06)
    assert a["window_s"] == 2.0
    assert out["b"]["inflight"] == 1  # in flight, nothing answered yet: still reported
    assert out["b"]["requests"] == 0
    # the window starts anew; requests still in flight keep their apps in the record
    again = s.signal(now=3.0)
    assert set(again) == {"a", "b"}
    assert again["a"]["requests"] == 0
    assert again["a"]["arrival_rps"] == 0.0
    s.record("a", 200, 0.01)
    s.record("a", 200, 0.01)
    s.record("b", 200, 0.01)
    assert s.signal(now=4.0)["a"]["inflight"] == 0
    assert s.signal(now=5.0) == {}  # idle: nothing to say
    # the log window is separate and still has everything since it started
    assert s.roll(now=5.0)["a"]["requests"] == 4


def test_signal_record_is_bounded_to_the_busiest_apps() -> None:
    s = EdgeStats(started_at=0.0)
    for i in range(50):
        for _ in range(i):
            s.begin(f"app{i:02d}")
            s.record(f"app{i:02d}", 200, 0.001)
    out = s.signal(now=1.0, limit=10)
    assert sorted(out) == [f"app{i}" for i in range(40, 50)]


async def test_a_real_edge_publishes_signals_every_interval() -> None:
    backend = await Backend("b1").start()
    published: list[dict[str, Any]] = []
    cfg = EdgeConfig(port=0, stats_interval_s=0.2, shutdown_grace_s=1.0)
    try:
        async with (
            running_edge(cfg, stats_sink=lambda apps, at: published.append(apps)) as edge,
            one_attempt_session() as client,
        ):
            edge.set_routes(
                [RouteRecord("web", "/web", backends=(BackendRecord("i1", backend.endpoint),))]
            )
            pending = [asyncio.create_task(client.get(f"{edge.url}/web/gate")) for _ in range(5)]
            seen = await async_wait_for(
                lambda: next(
                    (p["web"] for p in published if p.get("web", {}).get("inflight") == 5), None
                ),
                what="5 requests in flight in a record",
            )
            assert seen["arrival_rps"] > 0
            backend.gate.set()
            for resp in await asyncio.gather(*pending):
                assert resp.status == 200
                resp.release()
            done = await async_wait_for(
                lambda: next(
                    (
                        p["web"]
                        for p in published
                        if p.get("web", {}).get("requests", 0) > 0 and p["web"]["inflight"] == 0
                    ),
                    None,
                ),
                what="the answers in a record",
            )
            assert done["p99_ms"] > 0
            await async_wait_for(lambda: published[-1] == {}, what="an empty record once idle")
    finally:
        await backend.stop()
