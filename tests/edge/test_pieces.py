"""Headers, stats and static routes: small pure pieces of the edge."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from reconciler.addr import parse_addr
from reconciler.edge.headers import (
    Rfc3339Clock,
    downstream_response_headers,
    is_websocket_upgrade,
    request_id,
    upstream_request_headers,
)
from reconciler.edge.source import parse_static_route, routes_from_view
from reconciler.edge.stats import EdgeStats, LatencyHistogram
from reconciler.errors import ConfigError
from reconciler.records import Backend, RouteRecord


def test_upstream_headers_drop_hop_by_hop_and_connection_tokens() -> None:
    h = CIMultiDict(
        [
            ("Host", "edge:8080"),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "1"),
            ("TE", "trailers"),
            ("Transfer-Encoding", "chunked"),
            ("Accept", "a"),
            ("Accept", "b"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("X-Forwarded-For", "2.2.2.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-Request-ID", "old"),
        ]
    )
    out = upstream_request_headers(h, client_ip="9.9.9.9", scheme="http", rid="r1", edge_time="T")
    assert out.getall("Accept") == ["a", "b"]
    for gone in ("Connection", "X-Hop", "TE", "Transfer-Encoding", "Host"):
        assert gone not in out
    assert out["X-Forwarded-For"] == "1.1.1.1, 2.2.2.2, 9.9.9.9"
    assert out.getall("X-Forwarded-Proto") == ["http"]
    assert out["X-Forwarded-Host"] == "edge:8080"
    assert out.getall("X-Request-ID") == ["r1"]
    assert out["X-Mycelium-Edge"] == "T"


def test_downstream_headers_keep_end_to_end_and_add_request_id() -> None:
    h = CIMultiDict(
        [
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Keep-Alive", "timeout=5"),
            ("Connection", "keep-alive"),
            ("Content-Encoding", "gzip"),
        ]
    )
    out = downstream_response_headers(h, rid="r9")
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    assert out["Content-Encoding"] == "gzip"
    assert "Keep-Alive" not in out
    assert "Connection" not in out
    assert out["X-Request-ID"] == "r9"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("x y", False),
        ("-x", False),
        ("ok.id:1/2+3=", True),
        (None, False),
        ("é", False),
    ],
)
def test_request_id_kept_only_when_well_formed(given: str | None, kept: bool) -> None:
    rid = request_id(given)
    assert (rid == given) is kept
    if not kept:
        assert len(rid) == 32


def test_websocket_upgrade_detection() -> None:
    yes = CIMultiDict([("Upgrade", "WebSocket"), ("Connection", "keep-alive, Upgrade")])
    assert is_websocket_upgrade(yes)
    assert not is_websocket_upgrade(CIMultiDict([("Upgrade", "websocket")]))


def test_rfc3339_clock() -> None:
    c = Rfc3339Clock()
    assert c.now(0.0) == "1970-01-01T00:00:00Z"
    assert c.now(86400.9) == "1970-01-02T00:00:00Z"


def test_histogram_quantiles_are_within_a_bucket() -> None:
    h = LatencyHistogram()
    assert h.quantile(0.5) == 0.0
    for ms in range(1, 1001):
        h.add(float(ms))
    assert h.quantile(0.5) == pytest.approx(500, rel=0.06)
    assert h.quantile(0.99) == pytest.approx(990, rel=0.06)
    h.add(0.0)
    h.add(10**9)
    assert h.total == 1002


def test_stats_roll_per_app_and_reset() -> None:
    s = EdgeStats(started_at=0.0)
    for _ in range(8):
        s.record("a", 200, 0.002)
    s.record("a", 502, 0.010)
    s.record("b", 200, 0.001)
    out = s.roll(now=2.0)
    assert out["a"]["requests"] == 9
    assert out["a"]["errors_5xx"] == 1
    assert out["a"]["rps"] == 4.5
    assert out["a"]["p50_ms"] == pytest.approx(2.0, rel=0.06)
    assert out["b"]["requests"] == 1
    assert s.roll(now=3.0) == {}
    s.record("a", 200, 0.001)
    assert s.roll(now=4.0)["a"]["total_requests"] == 10


def test_static_routes_and_addresses() -> None:
    r = parse_static_route("billing=127.0.0.1:1,127.0.0.1:2*3")
    assert r.prefix == "/billing"
    assert [(b.endpoint, b.weight) for b in r.backends] == [
        ("127.0.0.1:1", 1),
        ("127.0.0.1:2", 3),
    ]
    for bad in ("billing", "=h:1", "a=h:1*x"):
        with pytest.raises(ConfigError):
            parse_static_route(bad)
    assert parse_addr(":8080") == ("127.0.0.1", 8080)
    assert parse_addr("[::1]:80") == ("::1", 80)
    for bad in ("8080", "h:x", "h:99999"):
        with pytest.raises(ConfigError):
            parse_addr(bad)


def test_routes_from_view_skips_malformed_and_other_keys() -> None:
    good = RouteRecord("a", "/a", backends=(Backend("i", "h:1"),)).to_json()
    view = {
        ("r1", "routes/a"): good,
        ("r1", "routes/b"): "garbage",
        ("r1", "node"): {"x": 1},
        ("r2", "routes/c"): None,
    }
    assert routes_from_view(view) == [RouteRecord.from_json(good)]


def test_downstream_from_raw_matches_the_multidict_version() -> None:
    from reconciler.edge.headers import downstream_from_raw

    raw = [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Connection", b"close, X-Hop"),
           (b"X-Hop", b"1"), (b"Keep-Alive", b"timeout=5"), (b"Content-Length", b"3")]  # fmt: skip
    md = CIMultiDict((n.decode(), v.decode()) for n, v in raw)
    assert downstream_from_raw(raw, rid="r") == downstream_response_headers(md, rid="r")
    assert downstream_from_raw([(b"X-Request-ID", b"up")], rid="r").getall("X-Request-ID") == ["up"]
