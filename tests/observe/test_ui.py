"""The dashboard: its event stream over HTTP, and the page in a real headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from reconciler.httpclient import one_attempt_session
from reconciler.observe.ui import UiConfig, ui_app
from reconciler.records import instance_key

from .conftest import Mesh, inst

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_CHROMIUM = os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


@pytest.fixture
async def ui(mesh: Mesh) -> AsyncIterator[str]:
    runner = web.AppRunner(ui_app(mesh.observer, UiConfig(debounce_s=0.05)), shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def next_status(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """Read one ``event: status`` message of the SSE stream."""
    event, data = "", ""
    async with asyncio.timeout(30):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                assert event == "status"
                doc: dict[str, Any] = json.loads(data)
                return doc


async def test_event_stream_pushes_the_status_and_its_changes(ui: str, mesh: Mesh) -> None:
    async with one_attempt_session() as session:
        async with session.get(f"{ui}/ui/events") as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            first = await next_status(resp)
            assert [a["name"] for a in first["apps"]] == ["billing", "shop"]
            assert first["apps"][0]["instances"] == 2
            mesh.writer.publish(instance_key("billing-c"), inst("billing-c", "billing", "n1"))
            second = await next_status(resp)
            assert second["apps"][0]["instances"] == 3
        async with session.get(f"{ui}/ui", allow_redirects=False) as resp:
            assert (resp.status, resp.headers["Location"]) == (302, "/ui/")
        async with session.get(f"{ui}/ui/") as resp:
            assert "static/app.js" in await resp.text()
        for name in ("app.js", "style.css"):
            async with session.get(f"{ui}/ui/static/{name}") as resp:
                assert resp.status == 200
        async with session.get(f"{ui}/ui/static/../ui.py") as resp:
            assert resp.status == 404
        async with session.get(f"{ui}/ui/status") as resp:
            assert (await resp.json())["summary"]["instances"] == 3


async def test_an_open_stream_does_not_hold_up_shutdown(mesh: Mesh) -> None:
    runner = web.AppRunner(ui_app(mesh.observer), shutdown_timeout=60)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with one_attempt_session() as session:
        async with session.get(f"http://127.0.0.1:{port}/ui/events") as resp:
            await next_status(resp)
            async with asyncio.timeout(30):  # far below the 60 s shutdown timeout
                await runner.cleanup()
            assert await resp.content.read() == b""  # the stream ended cleanly


def _driver(user_data: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={user_data}", "--window-size=1280,900",
    ):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


def _wait(driver: Any, cond: Callable[[Any], Any]) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 30, poll_frequency=0.05).until(cond)


def _cell(driver: Any, app: str, cls: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        el = driver.find_element(By.CSS_SELECTOR, f'#apps tr[data-app="{app}"] td.{cls}')
        return str(el.text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


async def test_dashboard_in_headless_chromium(ui: str, mesh: Mesh, tmp_path: Path) -> None:
    if not HAVE_CHROMIUM:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install them)")
    pytest.importorskip("selenium", reason="selenium is not installed")
    driver = await asyncio.to_thread(_driver, tmp_path / "chromium-profile")
    try:
        await asyncio.to_thread(driver.get, f"{ui}/ui")
        await asyncio.to_thread(_wait, driver, lambda d: _cell(d, "billing", "instances") == "2")
        assert await asyncio.to_thread(_cell, driver, "billing", "sync") == "Synced"
        assert await asyncio.to_thread(_cell, driver, "shop", "health") == "Progressing"
        revision = await asyncio.to_thread(lambda: driver.find_element("id", "revision").text)
        assert revision == "0123456789ab"
        mesh.writer.publish(instance_key("billing-c"), inst("billing-c", "billing", "n1"))
        await asyncio.to_thread(_wait, driver, lambda d: _cell(d, "billing", "instances") == "3")
        assert await asyncio.to_thread(lambda: driver.find_element("id", "conn").text) == "live"
        shot = Path(os.environ.get("MYCO_DASHBOARD_PNG", tmp_path / "dashboard.png"))
        assert await asyncio.to_thread(driver.save_screenshot, str(shot))
    finally:
        await asyncio.to_thread(driver.quit)
