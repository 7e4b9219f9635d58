"""Which routes the edge serves when their writer is gone (pure: serving_routes)."""

from __future__ import annotations

import pytest

from reconciler.edge.source import serving_routes
from reconciler.fabric.api import JSONValue
from reconciler.records import Backend, RouteRecord

View = dict[tuple[str, str], JSONValue]


def _route(app: str, epoch: int) -> JSONValue:
    rec = RouteRecord(
        app=app, prefix=f"/{app}", backends=(Backend(f"{app}-0", "127.0.0.1:9000"),), epoch=epoch
    )
    return rec.to_json()


def _served(live: View, gone: View) -> set[tuple[str, int]]:
    everyone = {**live, **gone}
    return {(r.app, r.epoch) for r in serving_routes(live, everyone)}


def test_live_routes_are_served() -> None:
    live = {("rec-a", "routes/billing"): _route("billing", 3)}
    assert _served(live, {}) == {("billing", 3)}


def test_a_dead_reconcilers_routes_stay_until_a_newer_lease_publishes() -> None:
    gone = {
        ("rec-a", "routes/billing"): _route("billing", 3),
        ("rec-a", "routes/frontend"): _route("frontend", 3),
    }
    assert _served({}, gone) == {("billing", 3), ("frontend", 3)}


def test_a_newer_lease_replaces_the_dead_reconcilers_routes() -> None:
    gone = {
        ("rec-a", "routes/billing"): _route("billing", 3),
        ("rec-a", "routes/pruned"): _route("pruned", 3),  # the new holder pruned this app
    }
    live = {("rec-b", "routes/billing"): _route("billing", 4)}
    assert _served(live, gone) == {("billing", 4)}


@pytest.mark.parametrize(("live_epoch", "kept"), [(2, True), (3, True), (4, False)])
def test_gone_routes_are_kept_only_while_no_newer_epoch_is_live(
    live_epoch: int, kept: bool
) -> None:
    gone = {("rec-a", "routes/frontend"): _route("frontend", 3)}
    live = {("rec-b", "routes/billing"): _route("billing", live_epoch)}
    assert (("frontend", 3) in _served(live, gone)) is kept
