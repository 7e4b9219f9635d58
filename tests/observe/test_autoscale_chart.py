"""The dashboard's charts: the timeline (pure), its event stream, and the chart in Chromium.

Per app: requests per second, p99 against the budget and instances over the last minutes,
with the autoscale and rollout events on the same time axis (docs/autoscale.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from reconciler.fabric import Fabric
from reconciler.httpclient import one_attempt_session
from reconciler.observe.feed import Timeline
from reconciler.observe.status import AppView, MeshStatus
from reconciler.observe.ui import UiConfig, ui_app
from reconciler.records import AppStatus, EdgeStatsRecord, instance_key

from .conftest import Mesh, garden, inst
from .test_ui import HAVE_CHROMIUM, _driver

# -- the timeline, pure ------------------------------------------------------------------


def scaled(
    desired: int, last: dict[str, Any] | None = None, budget: float | None = 100.0
) -> dict[str, Any]:
    """An autoscaled app's ``autoscale`` status block, as the reconciler writes it."""
    return {
        "current": desired, "desired": desired, "min": 1, "max": 10,
        "target": {"p99_ms": budget}, "budget_ms": budget, "last": last,
    }  # fmt: skip


def view(
    name: str, *, ready: int = 1, autoscale: dict[str, Any] | None = None, **kw: Any
) -> AppView:
    return AppView(
        name=name, desired=ready, phases={"ready": ready}, autoscale=autoscale or {}, **kw
    )


def edge(**apps: dict[str, float]) -> dict[str, Any]:
    return {"apps": {name: {"requests": 50, **fig} for name, fig in apps.items()}}


def test_a_sample_per_charted_app_with_the_edges_merged() -> None:
    tl = Timeline(window_s=60)
    status = MeshStatus(
        apps=(view("web", autoscale=scaled(2)), view("idle"), view("busy", ready=3))
    )
    edges = [
        edge(web={"arrival_rps": 30, "rps": 28, "p99_ms": 40}, busy={"rps": 5, "p99_ms": 9}),
        edge(web={"arrival_rps": 10, "rps": 12, "p99_ms": 95}),
    ]
    doc = tl.observe(status, edges, at=1000.0)
    # autoscaled apps always, others while they have requests; an idle one is not charted
    assert sorted(doc["apps"]) == ["busy", "web"]
    assert doc["apps"]["web"] == {
        "s": [40.0, 40.0, 95.0, 1, 2],
        "budget_ms": 100.0,
        "autoscale": True,
    }
    assert doc["apps"]["busy"] == {
        "s": [5.0, 5.0, 9.0, 3, 3],
        "budget_ms": None,
        "autoscale": False,
    }
    # nothing answered in a window: no p99 (a gap in the line, not a zero)
    doc = tl.observe(status, [edge(web={"arrival_rps": 3, "rps": 0, "requests": 0})], at=1001.0)
    assert doc["apps"]["web"]["s"][2] is None
    assert tl.to_json()["apps"]["web"]["samples"][0] == [1000.0, 40.0, 40.0, 95.0, 1, 2]


def test_the_window_is_kept_and_an_app_idle_for_all_of_it_leaves() -> None:
    tl = Timeline(window_s=10)
    status = MeshStatus(apps=(view("web", autoscale=scaled(1)), view("busy")))
    tl.observe(status, [edge(web={"rps": 1}, busy={"rps": 1})], at=0.0)
    for t in range(1, 25):
        doc = tl.observe(status, [], at=float(t))
    web = tl.to_json()["apps"]["web"]["samples"]
    assert [s[0] for s in web] == [float(t) for t in range(14, 25)]  # the last 10 s
    assert "busy" not in doc["apps"]  # no request for the whole window: off the chart
    assert "web" in doc["apps"]  # autoscaled: charted even while idle (it may be at zero)
    gone = tl.observe(MeshStatus(apps=()), [], at=25.0)
    assert gone["apps"] == {}  # left the garden


def test_each_autoscale_decision_is_one_event_at_its_own_time() -> None:
    tl = Timeline(window_s=300)
    old = {"at": 500.0, "previous": 4, "desired": 2, "direction": "down", "reason": "calm"}
    # a decision from before the window is not drawn
    assert (
        tl.observe(MeshStatus(apps=(view("web", autoscale=scaled(2, old)),)), [], 1000.0)["events"]
        == []
    )
    last = {"at": 990.0, "previous": 1, "desired": 5, "direction": "up", "reason": "p99 900 ms"}
    st = MeshStatus(apps=(view("web", autoscale=scaled(5, last)),))
    doc = tl.observe(st, [], at=1001.0)
    assert doc["events"] == [
        {"app": "web", "at": 990.0, "kind": "autoscale", "direction": "up", "label": "▲5",
         "text": "up 1→5: p99 900 ms"},
    ]  # fmt: skip
    assert tl.observe(st, [], at=1002.0)["events"] == []  # the same decision: no new event
    assert len(tl.to_json()["apps"]["web"]["events"]) == 1


def test_rollout_phases_are_events_and_one_under_way_is_noted_when_first_seen() -> None:
    tl = Timeline(window_s=300)

    def at(rollout: str, t: float, reason: str = "") -> list[dict[str, Any]]:
        app = view("web", autoscale=scaled(2), rollout=rollout, reason=reason)
        events: list[dict[str, Any]] = tl.observe(MeshStatus(apps=(app,)), [], t)["events"]
        return [(e["text"], e["at"]) for e in events]  # type: ignore[misc]

    assert at("warming", 1.0) == [("rollout: warming", 1.0)]
    assert at("warming", 2.0) == []
    assert at("idle", 3.0) == [("rollout done", 3.0)]
    assert at("starting", 4.0) == [("rollout: starting", 4.0)]
    assert at("idle", 5.0, "reverted: health failed") == [
        ("rollout reverted: reverted: health failed", 5.0)
    ]
    fresh = Timeline(window_s=300)
    assert (
        fresh.observe(MeshStatus(apps=(view("web", autoscale=scaled(2)),)), [], 1.0)["events"] == []
    )  # idle when first seen: nothing happened


def test_at_most_max_apps_are_charted_autoscaled_first_then_the_busiest() -> None:
    tl = Timeline(window_s=60, max_apps=2)
    apps = (view("a"), view("b"), view("z", autoscale=scaled(1)))
    doc = tl.observe(MeshStatus(apps=apps), [edge(a={"arrival_rps": 1}, b={"arrival_rps": 9})], 1.0)
    assert sorted(doc["apps"]) == ["b", "z"]


# -- the stream ------------------------------------------------------------------------------


def paced_garden(desired: int, last: dict[str, Any] | None = None) -> dict[str, Any]:
    status = AppStatus(
        sync="Synced", health="Healthy", desired=desired, ready=desired, rollout="idle",
        autoscale=scaled(desired, last),
    )  # fmt: skip
    return garden({"paced": status})


def paced_stats(arrivals: float, answered: float, p99: float) -> dict[str, Any]:
    fig = {"arrival_rps": arrivals, "rps": answered, "requests": int(answered), "p99_ms": p99}
    return EdgeStatsRecord(apps={"paced": fig}, at=time.time()).to_json()


def publish_paced(writer: Fabric, ready: int) -> None:
    for i in range(ready):
        writer.publish(instance_key(f"paced-{i}"), inst(f"paced-{i}", "paced", writer.name))


@pytest.fixture
async def charts(mesh: Mesh) -> AsyncIterator[str]:
    mesh.writer.publish("garden", paced_garden(1))
    publish_paced(mesh.writer, 1)
    mesh.writer.publish("edge/stats", paced_stats(20, 20, 12))
    app = ui_app(mesh.observer, UiConfig(debounce_s=0.05, refresh_s=1.0, sample_s=0.1))
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def next_event(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    event, data = "", ""
    async with asyncio.timeout(30):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                doc: dict[str, Any] = json.loads(data)
                return event, doc


async def test_the_stream_sends_the_timeline_then_every_sample(charts: str, mesh: Mesh) -> None:
    async with one_attempt_session() as session:
        async with session.get(f"{charts}/ui/events", params={"charts": "1"}) as resp:
            kinds: dict[str, list[dict[str, Any]]] = {}
            while "timeline" not in kinds or len(kinds.get("sample", [])) < 2:
                kind, doc = await next_event(resp)
                kinds.setdefault(kind, []).append(doc)
            assert "status" in kinds  # the page's statuses still come on the same stream
            timeline = kinds["timeline"][0]
            assert timeline["window_s"] == 900.0
            after = [s for s in kinds["sample"] if s["seq"] > timeline["seq"]]
            assert after, "samples after the timeline continue it"
            assert after[0]["seq"] == timeline["seq"] + 1
            assert after[-1]["apps"]["paced"]["s"][0] == 20.0
            mesh.writer.publish("edge/stats", paced_stats(400, 100, 900))
            while True:
                kind, doc = await next_event(resp)
                if kind == "sample" and doc["apps"]["paced"]["s"][2] == 900.0:
                    break
        # without ?charts=1 the stream is the statuses alone, as before (samples are
        # taken ten times a second meanwhile: one would come before the next status)
        async with session.get(f"{charts}/ui/events") as resp:
            assert (await next_event(resp))[0] == "status"
            publish_paced(mesh.writer, 2)
            assert (await next_event(resp))[0] == "status"


# -- the chart in a real browser -------------------------------------------------------------


def _text(driver: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.CSS_SELECTOR, css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _attr(driver: Any, css: str, name: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.CSS_SELECTOR, css).get_attribute(name) or "")
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _count(driver: Any, css: str) -> int:
    from selenium.webdriver.common.by import By

    return len(driver.find_elements(By.CSS_SELECTOR, css))


async def _until(driver: Any, cond: Any, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def wait() -> Any:
        return WebDriverWait(driver, 30, poll_frequency=0.05).until(cond)

    try:
        return await asyncio.to_thread(wait)
    except TimeoutException as exc:
        raise AssertionError(f"the page never showed {what}") from exc


CHART = 'figure.chart[data-app="paced"]'


async def test_the_chart_updates_as_data_arrives(charts: str, mesh: Mesh, tmp_path: Path) -> None:
    if not HAVE_CHROMIUM:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install them)")
    pytest.importorskip("selenium", reason="selenium is not installed")
    driver = await asyncio.to_thread(_driver, tmp_path / "chromium-profile")
    try:
        await asyncio.to_thread(driver.get, f"{charts}/ui/")
        await _until(driver, lambda d: _text(d, f"{CHART} .now-rps") == "20 req/s", "20 req/s")
        assert _text(driver, f"{CHART} .now-p99") == "p99 12 ms"
        assert "within" in _attr(driver, f"{CHART} .now-p99", "class")
        assert _text(driver, f"{CHART} .budget") == "budget 100 ms"
        assert _text(driver, f"{CHART} .now-instances") == "1 instance"
        # the chart grows by itself as samples arrive (the edge's figures unchanged)
        first = int(_attr(driver, CHART, "data-samples"))
        await _until(
            driver, lambda d: int(_attr(d, CHART, "data-samples") or 0) >= first + 5, "more samples"
        )
        assert _attr(driver, f"{CHART} path.rps", "d").count("L") >= first + 3

        # the step: 400 requests/s arrive, 100 answered, p99 far over the budget
        mesh.writer.publish("edge/stats", paced_stats(400, 100, 900))
        await _until(driver, lambda d: _text(d, f"{CHART} .now-p99") == "p99 900 ms", "p99 900 ms")
        assert "over" in _attr(driver, f"{CHART} .now-p99", "class")
        assert _text(driver, f"{CHART} .now-rps") == "400 req/s"

        # the autoscaler's decision: an event on the timeline, and the instances follow
        last = {"at": time.time(), "previous": 1, "desired": 5, "direction": "up",
                "reason": "p99 900 ms over the 100 ms budget at 400 rps (panic)"}  # fmt: skip
        mesh.writer.publish("garden", paced_garden(5, last))
        await _until(driver, lambda d: _count(d, f"{CHART} g.ev.autoscale.up") == 1, "the event")
        assert _text(driver, f"{CHART} g.ev.autoscale text") == "▲5"
        assert "up 1→5: p99 900 ms" in _text(driver, f"{CHART} ol.events li.up")
        await _until(driver, lambda d: "(→ 5)" in _text(d, f"{CHART} .now-instances"), "→ 5")
        publish_paced(mesh.writer, 5)
        mesh.writer.publish("edge/stats", paced_stats(400, 400, 45))
        await _until(driver, lambda d: _text(d, f"{CHART} .now-instances") == "5 instances", "5")
        await _until(driver, lambda d: "within" in _attr(d, f"{CHART} .now-p99", "class"), "p99 ok")
        assert _text(driver, f"{CHART} .now-p99") == "p99 45 ms"
        shot = os.environ.get("MYCO_AUTOSCALE_CHART_PNG")
        if shot:
            from selenium.webdriver.common.by import By

            el = driver.find_element(By.CSS_SELECTOR, CHART)
            assert await asyncio.to_thread(el.screenshot, shot)
    finally:
        await asyncio.to_thread(driver.quit)
