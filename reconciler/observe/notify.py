"""Notifications: a generic JSON webhook on sync and health changes and rollout events.

:func:`status_events` is pure: it compares two :class:`MeshStatus` and says what changed.
:class:`WebhookNotifier` never blocks its caller: :meth:`~WebhookNotifier.notify` puts the
event on a bounded queue (dropping, and counting, when it is full) and :meth:`run`, owned
by the caller's TaskGroup, POSTs them one by one, retrying with exponential backoff and
jitter (tenacity) on connection errors, timeouts, 429 and 5xx. :func:`notify_from_fabric`
glues the two to a fabric member.

Payload (one event per POST, ``Content-Type: application/json``)::

    {"source": "myco", "kind": "sync" | "health" | "rollout", "app": "billing",
     "previous": "OutOfSync", "current": "Synced", "event": "" | "start" | "finish" | "revert",
     "reason": "...", "revision": "<garden revision>", "at": "2026-11-26T11:00:00Z"}
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from reconciler.clock import Clock, RealClock
from reconciler.errors import ConfigError, UnavailableError
from reconciler.fabric.api import FabricAPI
from reconciler.httpclient import one_attempt_session

from .feed import StatusFeed
from .status import NOT_IN_GARDEN, AppView, MeshStatus

log = logging.getLogger("myco.observe")

EventKind = Literal["sync", "health", "rollout"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    app: str
    previous: str
    current: str
    event: str = ""  # rollout: start | finish | revert
    reason: str = ""
    revision: str = ""
    at: str = ""  # RFC 3339, set when queued

    def to_json(self) -> dict[str, Any]:
        return {"source": "myco", **asdict(self)}


def status_events(old: MeshStatus | None, new: MeshStatus) -> list[Event]:
    """What changed between two statuses, per app; nothing for the first status seen."""
    if old is None:
        return []
    before = {a.name: a for a in old.apps if a.reason != NOT_IN_GARDEN}
    out: list[Event] = []
    for a in new.apps:
        if a.reason == NOT_IN_GARDEN:
            continue
        b = before.get(a.name)
        prev_sync, prev_health = (b.sync, b.health) if b else ("", "")
        rev = a.revision or new.revision
        if a.sync != prev_sync:
            out.append(Event("sync", a.name, prev_sync, a.sync, reason=a.reason, revision=rev))
        if a.health != prev_health:
            out.append(
                Event("health", a.name, prev_health, a.health, reason=a.reason, revision=rev)
            )
        ev = _rollout_event(b, a)
        if ev:
            out.append(
                Event(
                    "rollout", a.name, _phase(b), _phase(a), event=ev, reason=a.reason,
                    revision=rev,
                )
            )  # fmt: skip
    return out


def _phase(a: AppView | None) -> str:
    return (a.rollout or "idle") if a else "idle"


def _rollout_event(old: AppView | None, new: AppView) -> str:
    was, now = _phase(old), _phase(new)
    if was == "idle" and now != "idle":
        return "start"
    if was != "idle" and now == "idle":
        return "revert" if new.reason.startswith("reverted") else "finish"
    return ""


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 5.0
    attempts: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    queue_size: int = 1000

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook URL must be http(s)://..., got {self.url!r}")
        if self.attempts < 1 or self.queue_size < 1:
            raise ConfigError("webhook attempts and queue_size must be at least 1")


class _Retryable(UnavailableError):
    """A POST that may succeed later (connection error, timeout, 429, 5xx)."""


class WebhookNotifier:
    """Deliver events to one webhook; ``clock`` (default: real time) stamps events and
    times the retry backoff, so tests run it on a :class:`~reconciler.clock.VirtualClock`."""

    def __init__(self, config: WebhookConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else RealClock()
        self._queue: asyncio.Queue[Event] = asyncio.Queue(config.queue_size)
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def notify(self, event: Event) -> bool:
        """Queue ``event`` (stamped with the time); False if the queue is full (dropped)."""
        if not event.at:
            stamp = datetime.fromtimestamp(self.clock.wall(), UTC).isoformat(timespec="seconds")
            event = Event(**{**asdict(event), "at": stamp.replace("+00:00", "Z")})
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("webhook queue full: dropped %s event of %s", event.kind, event.app)
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Deliver queued events until cancelled (run it in the owner's TaskGroup)."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with one_attempt_session(timeout=timeout) as session:
            while True:
                event = await self._queue.get()
                try:
                    await self._deliver(session, event)
                except Exception:  # a bug must not stop later notifications
                    self.failed += 1
                    log.exception(
                        "webhook %s: %s event of %s", self.config.url, event.kind, event.app
                    )
                finally:
                    self._queue.task_done()

    async def join(self) -> None:
        """Wait until every queued event was delivered or given up on."""
        await self._queue.join()

    async def _deliver(self, session: aiohttp.ClientSession, event: Event) -> None:
        cfg = self.config
        retrying = AsyncRetrying(
            stop=stop_after_attempt(cfg.attempts),
            wait=wait_exponential(multiplier=cfg.backoff_initial_s, max=cfg.backoff_max_s)
            + wait_random(0, cfg.backoff_initial_s),
            retry=retry_if_exception_type(_Retryable),
            sleep=self.clock.sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._post(session, event)
        except RetryError as exc:
            self.failed += 1
            log.warning(
                "webhook %s: gave up on %s event of %s after %d attempts: %s",
                cfg.url, event.kind, event.app, cfg.attempts, exc.last_attempt.exception(),
            )  # fmt: skip
            return
        except ConfigError as exc:  # a permanent refusal (4xx): most likely a wrong URL
            self.failed += 1
            log.warning(
                "webhook %s refused %s event of %s: %s", cfg.url, event.kind, event.app, exc
            )
            return
        self.sent += 1

    async def _post(self, session: aiohttp.ClientSession, event: Event) -> None:
        try:
            async with session.post(
                self.config.url, json=event.to_json(), headers=dict(self.config.headers)
            ) as resp:
                await resp.read()
                if resp.status == 429 or resp.status >= 500:
                    raise _Retryable(f"HTTP {resp.status}")
                if resp.status >= 400:
                    raise ConfigError(f"HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc


async def notify_from_fabric(
    fabric: FabricAPI,
    notifier: WebhookNotifier,
    *,
    debounce_s: float = 0.2,
    started: asyncio.Event | None = None,
) -> None:
    """Turn status changes seen in ``fabric`` into events until the fabric stops.

    ``started`` is set once the first status (the baseline: no events) has been taken.
    """
    feed = StatusFeed(fabric, debounce_s=debounce_s)
    last: MeshStatus | None = None
    try:
        async for st in feed:
            for ev in status_events(last, st):
                notifier.notify(ev)
            if last is None and started is not None:
                started.set()
            last = st
    finally:
        await feed.aclose()
