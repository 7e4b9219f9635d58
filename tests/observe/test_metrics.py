"""``/metrics``: Prometheus text that promtool (or prometheus_client's parser) accepts."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from reconciler import __version__
from reconciler.errors import PlanError
from reconciler.httpclient import one_attempt_session
from reconciler.observe.metrics import Metrics
from reconciler.records import instance_key
from tests.helpers import async_wait_for

from .conftest import Mesh, inst

PROMTOOL = shutil.which("promtool")


def check(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Validate ``text`` and return ``(sample name, sorted labels) -> value``."""
    if PROMTOOL:
        res = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
        )
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    else:
        print("promtool not installed: checking with prometheus_client's parser only")
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_reconciler_scope_covers_apps_instances_nodes_and_gossip(mesh: Mesh) -> None:
    mesh.writer.publish(instance_key("shop-a"), inst("shop-a", "shop", "n1", "failed", 3))
    m = Metrics("reconciler", mesh.observer, scope="mesh")

    def restarts_seen() -> bool:
        return (
            check(m.render().decode()).get(
                (
                    "myco_instance_restarts_total",
                    (("app", "shop"), ("instance", "shop-a"), ("node", "n1")),
                )
            )
            == 3
        )

    await async_wait_for(restarts_seen, what="shop-a in the view")
    m.reconcile.observe(0.02)
    with pytest.raises(PlanError), m.reconcile.timed():
        raise PlanError("boom")
    m.reconcile.rollout("shop", "start")
    s = check(m.render().decode())
    assert s[("myco_build_info", (("component", "reconciler"), ("version", __version__)))] == 1
    assert s[("myco_app_sync_status", (("app", "billing"), ("status", "Synced")))] == 1
    assert s[("myco_app_sync_status", (("app", "billing"), ("status", "OutOfSync")))] == 0
    assert s[("myco_app_health_status", (("app", "shop"), ("status", "Progressing")))] == 1
    assert s[("myco_app_rollout_phase", (("app", "shop"), ("phase", "starting")))] == 1
    assert s[("myco_app_instances_ready", (("app", "shop"),))] == 1
    assert s[("myco_instances", (("app", "billing"), ("phase", "ready")))] == 2
    assert s[("myco_instances", (("app", "shop"), ("phase", "failed")))] == 1
    assert s[("myco_node_free_cpu_cores", (("node", "n1"),))] == 1.5
    assert s[("myco_node_capacity_memory_bytes", (("node", "n1"),))] == 4096 * 1048576
    assert s[("myco_gossip_members", (("state", "alive"),))] == 2
    assert s[("myco_gossip_packets_dropped_total", (("reason", "auth"),))] == 0
    assert s[("myco_reconcile_duration_seconds_count", ())] == 2
    assert s[("myco_reconcile_errors_total", (("kind", "PlanError"),))] == 1
    assert s[("myco_rollout_events_total", (("app", "shop"), ("event", "start")))] == 1
    assert any(k[0] == "myco_garden_revision_info" for k in s)


async def test_agent_scope_only_counts_its_own_instances(mesh: Mesh) -> None:
    m = Metrics("agent", mesh.observer, scope="own")  # the observer runs no instance
    s = check(m.render().decode())
    assert not any(k[0].startswith(("myco_app_", "myco_instances")) for k in s if s[k])
    w = check(Metrics("agent", mesh.writer, scope="own").render().decode())
    assert w[("myco_instances", (("app", "billing"), ("phase", "ready")))] == 2
    assert not any(k[0].startswith("myco_app_") for k in w)


async def test_edge_instruments_and_callbacks_served_over_http(mesh: Mesh) -> None:
    m = Metrics("edge", mesh.observer, scope="none")
    for code, secs in ((200, 0.003), (200, 0.2), (502, 0.04)):
        m.edge.observe("billing", code, secs)
    m.edge.observe(None, 404, 0.0005)
    m.gauge_callback("myco_edge_routes", "Routes the edge knows", lambda: 2)
    m.counter_callback(
        "myco_edge_retries",
        "Requests retried on another backend",
        lambda: {("billing",): 4},
        ("app",),
    )
    app = web.Application()
    app.router.add_get("/metrics", m.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with one_attempt_session() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await resp.text()
    finally:
        await runner.cleanup()
    s = check(text)
    assert s[("myco_edge_requests_total", (("app", "billing"), ("code", "200")))] == 2
    assert s[("myco_edge_requests_total", (("app", "billing"), ("code", "502")))] == 1
    assert s[("myco_edge_requests_total", (("app", "_unknown"), ("code", "404")))] == 1
    bucket = ("myco_edge_request_duration_seconds_bucket", (("app", "billing"), ("le", "0.05")))
    assert s[bucket] == 2
    assert s[("myco_edge_request_duration_seconds_count", (("app", "billing"),))] == 3
    assert s[("myco_edge_routes", ())] == 2
    assert s[("myco_edge_retries_total", (("app", "billing"),))] == 4
    assert not any(k[0].startswith("myco_app_") for k in s)


def test_metrics_without_a_fabric() -> None:
    s = check(Metrics("cli").render().decode())
    assert list(s) == [("myco_build_info", (("component", "cli"), ("version", __version__)))]
