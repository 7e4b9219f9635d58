"""Per-app counters of the edge: requests, 5xx answers and latency quantiles (pure).

Latencies go into a fixed geometric histogram (5 % wide buckets from 10 µs to ~10 min),
so recording is O(1), memory is constant and a quantile is exact to within one bucket.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any

#: Upper bounds (seconds) of the cumulative latency histogram exported to Prometheus.
EXPORT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_MIN_MS = 0.01
_GROWTH = 1.05
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = int(math.log(600_000 / _MIN_MS) / _LOG_GROWTH) + 2


class LatencyHistogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.total = 0

    def add(self, ms: float) -> None:
        i = 0 if ms <= _MIN_MS else min(int(math.log(ms / _MIN_MS) / _LOG_GROWTH) + 1, _BUCKETS - 1)
        self.counts[i] += 1
        self.total += 1

    def quantile(self, q: float) -> float:
        """The upper edge (ms) of the bucket holding the ``q`` quantile; 0 when empty."""
        if self.total == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return _MIN_MS * _GROWTH**i
        return _MIN_MS * _GROWTH ** (_BUCKETS - 1)


class AppCounters:
    __slots__ = ("requests", "errors_5xx", "latency")

    def __init__(self) -> None:
        self.requests = 0
        self.errors_5xx = 0
        self.latency = LatencyHistogram()


class Lifetime:
    """Counters since the edge started, never reset: what ``/metrics`` exports.

    ``codes`` counts answers by (app, status); ``buckets[app][i]`` counts latencies that fell
    in ``EXPORT_BUCKETS_S[i]`` (the last slot is above every bound).
    """

    __slots__ = ("codes", "buckets", "sums", "bounds")

    def __init__(self, bounds: tuple[float, ...] = EXPORT_BUCKETS_S) -> None:
        self.bounds = bounds
        self.codes: dict[tuple[str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def add(self, app: str, status: int, latency_s: float) -> None:
        key = (app, status)
        self.codes[key] = self.codes.get(key, 0) + 1
        counts = self.buckets.get(app)
        if counts is None:
            counts = self.buckets[app] = [0] * (len(self.bounds) + 1)
            self.sums[app] = 0.0
        counts[bisect_left(self.bounds, latency_s)] += 1
        self.sums[app] += latency_s


class EdgeStats:
    """Counters per app for the current interval; ``roll`` hands them out and starts anew."""

    def __init__(self, started_at: float) -> None:
        self._apps: dict[str, AppCounters] = {}
        self._since = started_at
        self.totals: dict[str, int] = {}  # app -> requests since start (never reset)
        self.lifetime = Lifetime()

    def record(self, app: str, status: int, latency_s: float) -> None:
        c = self._apps.get(app)
        if c is None:
            c = self._apps[app] = AppCounters()
        c.requests += 1
        if status >= 500:
            c.errors_5xx += 1
        c.latency.add(latency_s * 1000.0)
        self.lifetime.add(app, status, latency_s)

    def roll(self, now: float) -> dict[str, dict[str, Any]]:
        """The interval's figures per app (the ``EdgeStatsRecord.apps`` shape); resets."""
        span = max(now - self._since, 1e-9)
        out: dict[str, dict[str, Any]] = {}
        for app, c in sorted(self._apps.items()):
            self.totals[app] = self.totals.get(app, 0) + c.requests
            out[app] = {
                "requests": c.requests,
                "errors_5xx": c.errors_5xx,
                "rps": round(c.requests / span, 3),
                "error_rate": round(c.errors_5xx / c.requests, 4) if c.requests else 0.0,
                "p50_ms": round(c.latency.quantile(0.50), 3),
                "p99_ms": round(c.latency.quantile(0.99), 3),
                "total_requests": self.totals[app],
            }
        self._apps = {}
        self._since = now
        return out
