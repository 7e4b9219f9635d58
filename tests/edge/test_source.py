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


def test_two_live_reconcilers_with_one_epoch_the_lease_winner_serves() -> None:
    """Two reconcilers that started apart both held epoch 1 for a moment; once they meet,
    the lease rule keeps the higher (epoch, holder): the edge serves that one's routes."""
    loser = RouteRecord(app="billing", prefix="/billing", backends=(), epoch=1).to_json()
    live = {
        ("rec-a#1", "routes/billing"): loser,
        ("rec-b#2", "routes/billing"): _route("billing", 1),
    }
    routes = serving_routes(live, live)
    assert len(routes) == 1
    assert routes[0].backends  # rec-b#2's, not rec-a#1's empty record


def test_a_newer_epoch_wins_whoever_owns_it() -> None:
    live = {
        ("rec-z", "routes/billing"): _route("billing", 1),
        ("rec-a", "routes/billing"): _route("billing", 2),
    }
    assert _served(live, {}) == {("billing", 2)}


def test_a_malformed_route_is_skipped_not_fatal() -> None:
    live: View = {
        ("rec-a", "routes/billing"): {"app": "billing", "prefix": "/billing", "backends": ["x:1"]},
        ("rec-a", "routes/frontend"): _route("frontend", 1),
    }
    assert _served(live, {}) == {("frontend", 1)}
