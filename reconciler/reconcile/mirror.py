"""Read the fabric into the core's :class:`~reconciler.core.model.Actual`.

The fabric returns the stored JSON value of a key as the same object while it is
unchanged, so parsed records are cached by the identity of that value: an unchanged
record comes back as the same frozen object, which is what lets the planner re-plan only
what changed.

Whose intents and routes count: when a reconciler becomes active it *adopts* the records
with the highest epoch for every node and app, from any owner, the gone ones included (a
killed predecessor's records survive it); after its first publish it reads back only its
own records, so that its deletions are not undone by a predecessor's stale copies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from reconciler.core.model import Actual, RolloutState, parse_route
from reconciler.errors import MycoError
from reconciler.fabric.api import FabricAPI, JSONValue
from reconciler.records import (
    KEY_EDGE_ROUTES,
    KEY_NODE,
    PREFIX_INSTANCE,
    PREFIX_INTENTS,
    PREFIX_ROUTES,
    EdgeRoutesRecord,
    InstanceRecord,
    IntentRecord,
    NodeRecord,
    RouteRecord,
)

log = logging.getLogger("myco.reconciler")

T = TypeVar("T")


class FabricMirror:
    def __init__(self, fabric: FabricAPI) -> None:
        self.fabric = fabric
        self._cache: dict[tuple[str, str], tuple[JSONValue, object]] = {}
        self.bad: dict[tuple[str, str], str] = {}

    def _parse(
        self, owner: str, key: str, value: JSONValue, parse: Callable[[JSONValue], T]
    ) -> T | None:
        hit = self._cache.get((owner, key))
        if hit is not None and hit[0] is value:
            return hit[1]  # type: ignore[return-value]
        try:
            parsed = parse(value)
        except MycoError as exc:
            if self.bad.get((owner, key)) != str(exc):
                log.warning("ignoring malformed %s from %s: %s", key, owner, exc)
            self.bad[(owner, key)] = str(exc)
            return None
        self._cache[(owner, key)] = (value, parsed)
        return parsed

    def nodes(self) -> dict[str, NodeRecord]:
        out: dict[str, NodeRecord] = {}
        for (owner, key), value in self.fabric.view(KEY_NODE).items():
            if key == KEY_NODE and value is not None:
                rec = self._parse(owner, key, value, NodeRecord.from_json)
                if rec is not None and rec.node_id == owner:
                    out[owner] = rec
        return out

    def instances(self) -> dict[str, InstanceRecord]:
        out: dict[str, InstanceRecord] = {}
        for (owner, key), value in self.fabric.view(PREFIX_INSTANCE).items():
            if value is None:
                continue
            rec = self._parse(owner, key, value, InstanceRecord.from_json)
            if rec is not None:
                out[rec.instance_id] = rec
        return out

    def intents(self, adopt: bool) -> dict[str, IntentRecord]:
        out: dict[str, IntentRecord] = {}
        me = self.fabric.name
        for (owner, key), value in self.fabric.view(PREFIX_INTENTS, include_gone=adopt).items():
            if value is None or (not adopt and owner != me):
                continue
            rec = self._parse(owner, key, value, IntentRecord.from_json)
            if rec is None:
                continue
            old = out.get(rec.node)
            if old is None or rec.epoch > old.epoch:
                out[rec.node] = rec
        return out

    def routes(self, adopt: bool) -> tuple[dict[str, RouteRecord], dict[str, RolloutState]]:
        routes: dict[str, RouteRecord] = {}
        states: dict[str, RolloutState] = {}
        me = self.fabric.name
        for (owner, key), value in self.fabric.view(PREFIX_ROUTES, include_gone=adopt).items():
            if value is None or (not adopt and owner != me):
                continue
            parsed = self._parse(owner, key, value, parse_route)
            if parsed is None:
                continue
            route, state = parsed
            old = routes.get(route.app)
            if old is None or route.epoch > old.epoch:
                routes[route.app] = route
                if state is not None:
                    states[route.app] = state
                else:
                    states.pop(route.app, None)
        return routes, states

    def edge_routes(self) -> dict[str, dict[str, int]]:
        """Live edge member -> app -> the route generation it serves."""
        out: dict[str, dict[str, int]] = {}
        for (owner, key), value in self.fabric.view(KEY_EDGE_ROUTES).items():
            if key != KEY_EDGE_ROUTES or value is None:
                continue
            rec = self._parse(owner, key, value, EdgeRoutesRecord.from_json)
            if rec is not None:
                out[owner] = {
                    str(app): gen for app, gen in rec.apps.items() if isinstance(gen, int)
                }
        return out

    def actual(self, epoch: int, adopt: bool) -> Actual:
        routes, states = self.routes(adopt)
        return Actual(
            nodes=self.nodes(),
            instances=self.instances(),
            intents=self.intents(adopt),
            routes=routes,
            rollouts=states,
            epoch=epoch,
            edge_routes=self.edge_routes(),
        )
