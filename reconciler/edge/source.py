"""Where the route table comes from: the fabric's ``routes/`` keys, or a fixed list.

A :class:`RouteSource` calls ``apply`` with the whole set of routes each time it may have
changed (routes are level-triggered: the latest set is the whole truth), and sets
``ready`` once the first set was applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from reconciler.aio import wait_event
from reconciler.errors import ConfigError, FabricError
from reconciler.fabric.api import FabricAPI, JSONValue
from reconciler.records import (
    KEY_EDGE_ROUTES,
    PREFIX_ROUTES,
    Backend,
    EdgeRoutesRecord,
    RouteRecord,
)

log = logging.getLogger("myco.edge")

ApplyRoutes = Callable[[Sequence[RouteRecord]], None]


class RouteSource(Protocol):
    async def run(self, apply: ApplyRoutes, ready: asyncio.Event) -> None:
        """Feed ``apply`` until cancelled (or until the source ends)."""
        ...


def _owned(view: Mapping[tuple[str, str], JSONValue]) -> list[tuple[str, RouteRecord]]:
    out: list[tuple[str, RouteRecord]] = []
    for (owner, key), value in sorted(view.items()):
        if not key.startswith(PREFIX_ROUTES) or value is None:
            continue
        try:
            rec = RouteRecord.from_json(value)
            _check(rec)
        except (FabricError, TypeError, ValueError, KeyError, AttributeError) as exc:
            log.warning("ignoring route %s of %s: %s", key, owner, exc)
            continue
        out.append((owner, rec))
    return out


def _check(rec: RouteRecord) -> None:
    """What ``from_json`` does not check: the types inside (a bad record must never reach
    the route table, where it would stop the route source)."""
    if not isinstance(rec.app, str) or not isinstance(rec.prefix, str):
        raise ValueError("app and prefix are strings")
    if not isinstance(rec.epoch, int):
        raise ValueError("epoch is an integer")
    for b in rec.backends:
        if not isinstance(b, Backend) or not isinstance(b.endpoint, str):
            raise ValueError(f"a backend is not an object with an endpoint: {b!r}"[:200])
    if not all(isinstance(d, str) for d in rec.draining):
        raise ValueError("draining endpoints are strings")


def routes_from_view(view: Mapping[tuple[str, str], JSONValue]) -> list[RouteRecord]:
    """Every well-formed route record in a fabric view; a bad one is logged and skipped."""
    return [r for _, r in _owned(view)]


def serving_routes(
    live: Mapping[tuple[str, str], JSONValue], everyone: Mapping[tuple[str, str], JSONValue]
) -> list[RouteRecord]:
    """The routes to serve, one record per app: of every live owner's, plus those of owners
    that are gone (dead or left) whose lease epoch no live route has passed yet, the one
    with the highest ``(epoch, owner)`` — the order the lease rule picks its holder by
    (:func:`reconciler.core.lease.decide`), so when two reconcilers both held the lease
    for a moment (they started apart) the one that kept it wins at the edge too.

    Workloads keep serving while the control plane is down: when the active reconciler dies,
    its routes stay in force until a reconciler with a newer lease publishes its own (which
    also drops, by their older epoch, the routes of apps it pruned). Pure.
    """
    current = _owned(live)
    newest = max((r.epoch for _, r in current), default=-1)
    gone = {k: v for k, v in everyone.items() if k not in live}
    kept = [(o, r) for o, r in _owned(gone) if r.epoch >= newest]
    best: dict[str, tuple[int, str, RouteRecord]] = {}
    for owner, r in current + kept:
        held = best.get(r.app)
        if held is None or (r.epoch, owner) > (held[0], held[1]):
            best[r.app] = (r.epoch, owner, r)
    return [best[app][2] for app in sorted(best)]


def report_served(fabric: FabricAPI, routes: Sequence[RouteRecord]) -> None:
    """Publish the route generation this edge now serves, per app (``edge/routes``): the
    reconciler withers a draining instance only once every live edge has stopped sending
    it new requests. Call it after the table is in force, never before."""
    record = EdgeRoutesRecord(apps={r.app: r.generation for r in routes}).to_json()
    if fabric.get(fabric.name, KEY_EDGE_ROUTES) != record:
        fabric.publish(KEY_EDGE_ROUTES, record)


class FabricRouteSource:
    """Reads ``routes/<app>`` from the fabric: on every change, and every ``resync_s``.

    The periodic re-read makes the edge converge even if a change notification is missed
    (the view, not the stream of changes, is the truth). Routes of a reconciler that died
    stay in force until a newer lease replaces them (:func:`serving_routes`).
    """

    def __init__(self, fabric: FabricAPI, resync_s: float = 1.0, *, report: bool = True) -> None:
        self.fabric = fabric
        self.resync_s = resync_s
        #: ``apply`` puts the table in force before it returns: say so (:func:`report_served`);
        #: a data plane that applies later reports itself
        self.report = report

    async def run(self, apply: ApplyRoutes, ready: asyncio.Event) -> None:
        changed = asyncio.Event()
        changes = self.fabric.subscribe(PREFIX_ROUTES)  # before the first read: no gap

        async def watch() -> None:
            async for _change in changes:
                changed.set()

        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(watch())
            last: list[RouteRecord] | None = None
            try:
                while True:
                    changed.clear()
                    routes = serving_routes(
                        self.fabric.view(PREFIX_ROUTES),
                        self.fabric.view(PREFIX_ROUTES, include_gone=True),
                    )
                    if routes != last:
                        apply(routes)
                        last = routes
                        log.info("route table: %s", describe(routes))
                        if self.report:
                            report_served(self.fabric, routes)
                    ready.set()
                    await wait_event(changed, self.resync_s)
                    if watcher.done():
                        return  # the fabric stopped
            finally:
                watcher.cancel()


class StaticRouteSource:
    """A fixed set of routes (``myco edge --route``), for a mesh-less edge and benchmarks."""

    def __init__(self, routes: Iterable[RouteRecord]) -> None:
        self.routes = list(routes)

    async def run(self, apply: ApplyRoutes, ready: asyncio.Event) -> None:
        apply(self.routes)
        ready.set()
        await asyncio.Event().wait()  # until cancelled


def parse_static_route(spec: str) -> RouteRecord:
    """``app=host:port[*weight],host:port...`` → a route with prefix ``/app``."""
    app, sep, rest = spec.partition("=")
    if not sep or not app or not rest:
        raise ConfigError(f"bad --route {spec!r}: expected APP=HOST:PORT[,HOST:PORT...]")
    backends = []
    for i, part in enumerate(p for p in rest.split(",") if p):
        endpoint, star, weight = part.partition("*")
        try:
            w = int(weight) if star else 1
        except ValueError:
            raise ConfigError(f"bad --route {spec!r}: weight {weight!r} is not a number") from None
        backends.append(Backend(instance_id=f"{app}-static-{i}", endpoint=endpoint, weight=w))
    return RouteRecord(app=app, prefix="/" + app, backends=tuple(backends))


def describe(routes: Sequence[RouteRecord]) -> str:
    if not routes:
        return "empty"
    return "; ".join(
        f"{r.prefix} -> {','.join(f'{b.endpoint}*{b.weight}' for b in r.backends) or '-'}"
        + (f" (draining {','.join(r.draining)})" if r.draining else "")
        for r in routes
    )
