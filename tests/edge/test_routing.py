"""The pure routing core: tables of cases on plain numbers, no I/O, no clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.edge.config import EjectionPolicy, RetryPolicy
from reconciler.edge.routing import (
    AppRoute,
    BackendState,
    Ejection,
    Outcome,
    RouteTable,
    prefix_segment,
    should_retry,
)
from reconciler.errors import EdgeError
from reconciler.records import Backend, RouteRecord

POLICY = EjectionPolicy(consecutive_5xx=3, consecutive_connect_failures=1, base_s=10, max_s=25)


def rr(
    app: str,
    *backends: tuple[str, int],
    draining: tuple[str, ...] = (),
    epoch: int = 0,
    prefix: str | None = None,
) -> RouteRecord:
    return RouteRecord(
        app=app,
        prefix=prefix if prefix is not None else "/" + app,
        epoch=epoch,
        backends=tuple(Backend(ep, ep, w) for ep, w in backends),
        draining=draining,
    )


def picks(table: RouteTable, path: str, n: int, now: float = 0.0) -> list[str]:
    m = table.match(path)
    assert m is not None
    out = []
    for _ in range(n):
        b = m[0].pick(now)
        out.append(b.endpoint if b else "-")
    return out


def route_of(
    weights: list[int], inflight: list[int] | None = None, seed: int = 0
) -> tuple[AppRoute, list[BackendState]]:
    """An app's route over ``h0:1, h1:1, ...`` with those weights and requests in flight."""
    t = RouteTable(POLICY, rng=random.Random(seed))
    t.update([rr("app", *((f"h{i}:1", w) for i, w in enumerate(weights)))])
    m = t.match("/app")
    assert m is not None
    states = list(m[0].backends)
    for b, n in zip(states, inflight or [], strict=False):
        b.inflight = n
    return m[0], states


def test_smooth_wrr_interleaves_like_nginx() -> None:
    t = RouteTable(POLICY)
    t.update([rr("app", ("a:1", 5), ("b:1", 1), ("c:1", 1))])
    assert picks(t, "/app/x", 7) == ["a:1", "a:1", "b:1", "a:1", "c:1", "a:1", "a:1"]


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6))
def test_each_cycle_gives_every_backend_exactly_its_weight(weights: list[int]) -> None:
    t = RouteTable(POLICY)
    t.update([rr("app", *((f"h{i}:1", w) for i, w in enumerate(weights)))])
    got = Counter(picks(t, "/app", sum(weights) * 3))
    assert got == {f"h{i}:1": 3 * w for i, w in enumerate(weights)}


@given(
    st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=50),
    st.integers(min_value=0, max_value=2**32),
)
def test_equally_loaded_backends_get_the_round_robin_sequence(
    weights: list[int], per_weight: int, seed: int
) -> None:
    """In flight in proportion to the weights (all idle included): a tie every time, so the
    first choice (the smooth round-robin's) wins and each cycle is exact, whatever the draws."""
    loaded, _ = route_of(weights, [per_weight * w for w in weights], seed)
    idle, _ = route_of(weights)
    n = sum(weights) * 3
    got = [loaded.pick(0.0) for _ in range(n)]
    assert [b.endpoint if b else "-" for b in got] == [
        b.endpoint if b else "-" for b in (idle.pick(0.0) for _ in range(n))
    ]
    assert Counter(b.endpoint for b in got if b) == {
        f"h{i}:1": 3 * w for i, w in enumerate(weights)
    }


@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=10), st.integers(min_value=0, max_value=30)),
        min_size=1,
        max_size=6,
    ),
    st.integers(min_value=0, max_value=2**32),
    st.sets(st.integers(min_value=0, max_value=5)),
    st.sets(st.integers(min_value=0, max_value=5)),
)
def test_the_pick_is_the_round_robins_or_a_less_loaded_one(
    backends: list[tuple[int, int]], seed: int, excluded: set[int], ejected: set[int]
) -> None:
    """Never a backend excluded (tried) or ejected; the round-robin's candidate (which moves
    as if nothing were loaded), or one that even with this request is less loaded per unit
    of weight."""
    weights = [w for w, _ in backends]
    loaded, states = route_of(weights, [n for _, n in backends], seed)
    idle, _ = route_of(weights)
    for i in ejected & set(range(len(states))):
        states[i].health.until = 100.0
        idle.backends[i].health.until = 100.0
    exclude = {f"h{i}:1" for i in excluded}
    for _ in range(sum(weights) * 2):
        got, rr_pick = loaded.pick(1.0, exclude), idle.pick(1.0, exclude)
        if rr_pick is None:
            assert got is None
            continue
        assert got is not None
        assert got.endpoint not in exclude
        assert not got.health.ejected(1.0)
        first = states[idle.backends.index(rr_pick)]
        assert got is first or (got.inflight + 1) * first.weight < first.inflight * got.weight


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_a_backend_with_a_backlog_gets_almost_nothing_new(n: int) -> None:
    """The issue's case: one instance hundreds of requests behind, n-1 fresh ones. Round
    robin gives it 1/n of new requests; here, when it is the first candidate, the second
    (always another one) wins: it gets nothing, and the others share evenly."""
    route, states = route_of([1] * n, [450] + [0] * (n - 1), seed=n)
    picks = 20_000
    got = Counter(route.pick(0.0).endpoint for _ in range(picks))  # type: ignore[union-attr]
    assert got["h0:1"] == 0
    for i in range(1, n):
        assert got[f"h{i}:1"] / picks == pytest.approx(1 / (n - 1), abs=0.02)


@pytest.mark.parametrize(
    ("weights", "concurrency"),
    [
        ([9, 1], 1),
        ([9, 1], 2),
        ([9, 1], 5),
        ([9, 1], 50),
        ([5, 1, 1], 2),
        ([5, 1, 1], 50),
        ([3, 1], 20),
        ([1, 1, 1, 1], 8),
    ],
)
def test_canary_weights_split_traffic_in_proportion_under_equal_load(
    weights: list[int], concurrency: int
) -> None:
    """A closed loop (seeded): ``concurrency`` requests in flight, each as long on every
    backend (the one to finish is drawn uniformly among those in flight). Each backend's
    share of requests stays its share of the weights, within two points."""
    route, states = route_of(weights, seed=7)
    finish = random.Random(11)
    flying: list[BackendState] = []
    got: Counter[str] = Counter()
    picks = 20_000
    for _ in range(picks):
        while len(flying) >= concurrency:
            flying.pop(finish.randrange(len(flying))).inflight -= 1
        b = route.pick(0.0)
        assert b is not None
        b.inflight += 1
        flying.append(b)
        got[b.endpoint] += 1
    total = sum(weights)
    for i, w in enumerate(weights):
        assert got[f"h{i}:1"] / picks == pytest.approx(w / total, abs=0.02)


class _NoDraws(random.Random):
    def random(self) -> float:
        raise AssertionError("drew a second candidate where none was needed")


@pytest.mark.parametrize(
    ("weights", "inflight", "ejected", "expected"),
    [
        ([1], [99], set(), "h0:1"),  # one backend: it, however busy (no draw)
        ([1, 1], [99, 0], {1}, "h0:1"),  # the other one ejected: the busy one
        ([3, 1], [0, 40], set(), "h0:1"),  # the first candidate (weight 3) idle: no draw
    ],
)
def test_no_draw_when_the_first_candidate_cannot_be_beaten(
    weights: list[int], inflight: list[int], ejected: set[int], expected: str
) -> None:
    t = RouteTable(POLICY, rng=_NoDraws())
    t.update([rr("app", *((f"h{i}:1", w) for i, w in enumerate(weights)))])
    m = t.match("/app")
    assert m is not None
    for b, n in zip(m[0].backends, inflight, strict=True):
        b.inflight = n
    for i in ejected:
        m[0].backends[i].health.until = 10.0
    got = m[0].pick(1.0)
    assert got is not None
    assert got.endpoint == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/billing/hello", ("billing", "/hello")),
        ("/billing", ("billing", "/")),
        ("/billing/", ("billing", "/")),
        ("/billing/a/b%20c", ("billing", "/a/b%20c")),
        ("/billingx/hello", None),
        ("/", None),
        ("", None),
        ("/other/x", None),
    ],
)
def test_match_uses_the_first_segment_and_strips_it(
    path: str, expected: tuple[str, str] | None
) -> None:
    t = RouteTable(POLICY)
    t.update([rr("billing", ("a:1", 1))])
    m = t.match(path)
    assert (None if m is None else (m[0].app, m[1])) == expected


def test_custom_prefix_and_bad_prefixes() -> None:
    t = RouteTable(POLICY)
    t.update([rr("billing", ("a:1", 1), prefix="/pay"), rr("bad", ("b:1", 1), prefix="/x/y")])
    m = t.match("/pay/z")
    assert m is not None
    assert m[0].app == "billing"
    assert m[1] == "/z"
    assert t.match("/billing/z") is None
    assert t.match("/x/y/z") is None
    assert prefix_segment("/a/") == "a"
    assert prefix_segment("/") is None


def test_higher_epoch_wins_a_prefix() -> None:
    t = RouteTable(POLICY)
    t.update([rr("app", ("new:1", 1), epoch=2), rr("app", ("old:1", 1), epoch=1)])
    assert picks(t, "/app", 2) == ["new:1", "new:1"]


def test_draining_zero_weight_and_malformed_endpoints_get_nothing() -> None:
    t = RouteTable(POLICY)
    t.update([rr("app", ("a:1", 1), ("b:1", 1), ("c:1", 0), ("nope", 1), draining=("a:1",))])
    assert set(picks(t, "/app", 6)) == {"b:1"}


def test_update_keeps_state_of_surviving_backends() -> None:
    t = RouteTable(POLICY)
    t.update([rr("app", ("a:1", 1), ("b:1", 1))])
    a = t.backend("app", "a:1")
    assert a is not None
    a.health.record(Outcome.CONNECT_FAILURE, now=0.0)
    t.update([rr("app", ("a:1", 3), ("b:1", 1), ("c:1", 1))])
    assert t.backend("app", "a:1") is a
    assert a.weight == 3
    assert a.health.ejected(1.0)
    assert set(picks(t, "/app", 4, now=1.0)) == {"b:1", "c:1"}
    t.update([rr("app", ("b:1", 1))])
    assert t.backend("app", "a:1") is None


def test_pick_skips_excluded_and_reports_recovery() -> None:
    t = RouteTable(POLICY)
    t.update([rr("app", ("a:1", 1), ("b:1", 1))])
    m = t.match("/app")
    assert m is not None
    route = m[0]
    assert route.pick(0.0, {"a:1"}).endpoint == "b:1"  # type: ignore[union-attr]
    assert route.pick(0.0, {"a:1", "b:1"}) is None
    assert not route.has_candidate(0.0, {"a:1", "b:1"})
    for b in route.backends:
        b.health.record(Outcome.CONNECT_FAILURE, now=0.0)
    assert route.pick(5.0) is None
    assert route.next_recovery(5.0) == pytest.approx(5.0)
    assert route.pick(10.0) is not None


# (outcomes, time of each, expected ejected-after flags)
@pytest.mark.parametrize(
    ("events", "ejected_at"),
    [
        ([("5xx", 0), ("5xx", 1)], []),
        ([("5xx", 0), ("5xx", 1), ("5xx", 2)], [2]),
        ([("5xx", 0), ("5xx", 1), ("ok", 2), ("5xx", 3), ("5xx", 4)], []),
        ([("conn", 0)], [0]),
        ([("conn", 0), ("conn", 5)], [0]),  # already ejected: not again, no longer
        ([("conn", 0), ("conn", 10)], [0, 10]),  # back, fails again: ejected for longer
    ],
)
def test_ejection_state_machine(events: list[tuple[str, float]], ejected_at: list[float]) -> None:
    e = Ejection(POLICY)
    kinds = {"5xx": Outcome.SERVER_ERROR, "conn": Outcome.CONNECT_FAILURE, "ok": Outcome.SUCCESS}
    got = [t for kind, t in events if e.record(kinds[kind], t)]
    assert got == ejected_at


def test_ejection_time_grows_then_is_capped_and_forgiven() -> None:
    e = Ejection(POLICY)
    assert e.record(Outcome.CONNECT_FAILURE, 0.0)
    assert e.until == 10.0
    assert e.record(Outcome.CONNECT_FAILURE, 10.0)
    assert e.until == 30.0
    assert e.record(Outcome.CONNECT_FAILURE, 30.0)
    assert e.until == 55.0
    assert e.available(55.0)
    assert not e.available(54.9)
    e.record(Outcome.SUCCESS, 55.0)
    assert e.times == 0
    assert e.record(Outcome.CONNECT_FAILURE, 56.0)
    assert e.until == 66.0


R = RetryPolicy(max_attempts=3)


@pytest.mark.parametrize(
    ("method", "attempts", "kw", "expected"),
    [
        ("GET", 1, {"connect_failed": True}, True),
        ("POST", 1, {"connect_failed": True}, True),  # nothing was sent
        ("POST", 1, {"connect_failed": True, "body_sent": True}, False),
        ("GET", 3, {"connect_failed": True}, False),  # out of attempts
        ("GET", 1, {"status": 503}, True),
        ("get", 2, {"status": 502}, True),
        ("HEAD", 1, {"status": 504}, True),
        ("PUT", 1, {"status": 503}, True),
        ("PUT", 1, {"status": 503, "body_sent": True}, False),
        ("POST", 1, {"status": 503}, False),
        ("PATCH", 1, {"status": 502}, False),
        ("GET", 1, {"status": 500}, False),
        ("GET", 1, {"status": 200}, False),
        ("GET", 1, {}, False),
    ],
)
def test_retry_decision(method: str, attempts: int, kw: dict[str, object], expected: bool) -> None:
    assert should_retry(R, method, attempts, **kw) is expected  # type: ignore[arg-type]


def test_split_endpoint_refuses_garbage() -> None:
    from reconciler.edge.routing import split_endpoint

    assert split_endpoint("[::1]:80") == ("::1", 80)
    for bad in ("nope", ":80", "h:0", "h:x", "h:70000"):
        with pytest.raises(EdgeError):
            split_endpoint(bad)
