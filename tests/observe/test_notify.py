"""Webhook notifications: pure event detection, and delivery to a real loopback receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web

from reconciler.clock import VirtualClock
from reconciler.errors import ConfigError
from reconciler.observe.notify import (
    Event,
    WebhookConfig,
    WebhookNotifier,
    notify_from_fabric,
    status_events,
)
from reconciler.observe.status import AppView, MeshStatus
from reconciler.records import AppStatus
from tests.helpers import async_wait_for, free_port

from .conftest import BILLING, SHOP, Mesh, garden


def mesh_of(*apps: AppView) -> MeshStatus:
    return MeshStatus(revision="r2", apps=apps)


A = AppView("a", sync="Synced", health="Healthy", revision="r1")


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (A, A, []),
        (A, replace(A, sync="OutOfSync"), [("sync", "Synced", "OutOfSync", "")]),
        (A, replace(A, health="Degraded"), [("health", "Healthy", "Degraded", "")]),
        (A, replace(A, rollout="starting"), [("rollout", "idle", "starting", "start")]),
        (replace(A, rollout="warming"), A, [("rollout", "warming", "idle", "finish")]),
        (
            replace(A, rollout="canary"),
            replace(A, reason="reverted: p99 over budget", health="Degraded"),
            [("health", "Healthy", "Degraded", ""), ("rollout", "canary", "idle", "revert")],
        ),
        (replace(A, rollout="starting"), replace(A, rollout="warming"), []),
        (None, A, [("sync", "", "Synced", ""), ("health", "", "Healthy", "")]),
    ],
)
def test_status_events(
    before: AppView | None, after: AppView, expected: list[tuple[str, str, str, str]]
) -> None:
    old = mesh_of(before) if before else mesh_of()
    got = status_events(old, mesh_of(after))
    assert [(e.kind, e.previous, e.current, e.event) for e in got] == expected
    assert all(e.app == "a" and e.revision == "r1" for e in got)


def test_no_events_for_the_first_status_or_apps_not_in_the_garden() -> None:
    assert status_events(None, mesh_of(A)) == []
    gone = AppView("old", reason="not in the garden")
    assert status_events(mesh_of(), mesh_of(gone)) == []


@dataclass
class Receiver:
    url: str = ""
    replies: list[int] = field(default_factory=list)  # statuses to answer, then 200
    got: list[dict[str, Any]] = field(default_factory=list)
    hits: int = 0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def hook(request: web.Request) -> web.Response:
        rec.hits += 1
        status = rec.replies.pop(0) if rec.replies else 200
        if status == 200:
            rec.got.append(await request.json())
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    try:
        yield rec
    finally:
        await runner.cleanup()


def fast(url: str, **kw: Any) -> WebhookConfig:
    return WebhookConfig(url, backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=5, **kw)


async def deliver(notifier: WebhookNotifier, *events: Event) -> None:
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(notifier.run())
        for ev in events:
            assert notifier.notify(ev)
        async with asyncio.timeout(30):
            await notifier.join()
        task.cancel()


EV = Event("health", "billing", "Healthy", "Degraded", reason="2 of 3 failed", revision="r1")


async def test_delivers_json_after_retrying_5xx_and_429(receiver: Receiver) -> None:
    receiver.replies = [503, 429, 500]
    n = WebhookNotifier(fast(receiver.url, headers={"X-Token": "t"}))
    await deliver(n, EV)
    assert (n.sent, n.failed, receiver.hits) == (1, 0, 4)
    (body,) = receiver.got
    assert body["at"].endswith("Z")
    assert {k: v for k, v in body.items() if k != "at"} == {
        "source": "myco", "kind": "health", "app": "billing", "previous": "Healthy",
        "current": "Degraded", "event": "", "reason": "2 of 3 failed", "revision": "r1",
    }  # fmt: skip


async def test_the_clock_stamps_events_and_times_the_backoff(receiver: Receiver) -> None:
    receiver.replies = [503, 503]
    clock = VirtualClock(wall_start=1_800_000_000.0)
    config = WebhookConfig(receiver.url, backoff_initial_s=60.0, backoff_max_s=600.0)
    n = WebhookNotifier(config, clock=clock)
    await deliver(n, EV)  # two minutes and more of backoff, in no real time
    assert (n.sent, n.failed, receiver.hits) == (1, 0, 3)
    assert receiver.got[0]["at"] == "2027-01-15T08:00:00Z"
    assert len(clock.sleeps) == 2
    assert all(s >= 60.0 for s in clock.sleeps)


async def test_gives_up_after_the_attempts_and_goes_on(receiver: Receiver) -> None:
    receiver.replies = [500, 500, 500]
    n = WebhookNotifier(fast(receiver.url, attempts=3))
    await deliver(n, EV, replace(EV, app="shop"))
    assert (n.sent, n.failed, receiver.hits) == (1, 1, 4)
    assert [b["app"] for b in receiver.got] == ["shop"]


async def test_a_4xx_is_not_retried(receiver: Receiver) -> None:
    receiver.replies = [404]
    n = WebhookNotifier(fast(receiver.url))
    await deliver(n, EV)
    assert (n.sent, n.failed, receiver.hits) == (0, 1, 1)


async def test_an_unreachable_receiver_is_retried_then_given_up() -> None:
    n = WebhookNotifier(fast(f"http://127.0.0.1:{free_port()}/hook", attempts=2))
    await deliver(n, EV)
    assert (n.sent, n.failed) == (0, 1)


def test_notify_never_blocks_and_drops_when_full() -> None:
    n = WebhookNotifier(fast("http://127.0.0.1:1/hook", queue_size=2))
    assert [n.notify(EV) for _ in range(3)] == [True, True, False]
    assert (n.pending, n.dropped) == (2, 1)


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError):
        WebhookConfig("ftp://x")
    with pytest.raises(ConfigError):
        WebhookConfig("http://x", attempts=0)


async def test_status_changes_in_the_fabric_become_webhooks(mesh: Mesh, receiver: Receiver) -> None:
    n = WebhookNotifier(fast(receiver.url))
    async with asyncio.TaskGroup() as tg:
        started = asyncio.Event()
        tasks = [
            tg.create_task(n.run()),
            tg.create_task(notify_from_fabric(mesh.observer, n, debounce_s=0.05, started=started)),
        ]
        async with asyncio.timeout(30):
            await started.wait()  # the baseline status is taken: changes from here on count
        degraded = AppStatus(sync="Synced", health="Degraded", reason="1 failed", desired=2)
        mesh.writer.publish("garden", garden({"billing": degraded, "shop": SHOP}))
        await async_wait_for(
            lambda: any(b["kind"] == "health" and b["app"] == "billing" for b in receiver.got),
            within=30, what="health webhook",
        )  # fmt: skip
        mesh.writer.publish(
            "garden", garden({"billing": BILLING, "shop": replace(SHOP, rollout="")})
        )
        await async_wait_for(
            lambda: any(b["kind"] == "rollout" for b in receiver.got), within=30,
            what="rollout webhook",
        )  # fmt: skip
        for t in tasks:
            t.cancel()
    health = [b for b in receiver.got if b["kind"] == "health"]
    assert [(b["previous"], b["current"]) for b in health] == [
        ("Healthy", "Degraded"), ("Degraded", "Healthy"),
    ]  # fmt: skip
    (rollout,) = [b for b in receiver.got if b["kind"] == "rollout"]
    assert (rollout["app"], rollout["event"]) == ("shop", "finish")
