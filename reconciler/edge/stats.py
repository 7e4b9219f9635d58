"""Per-app counters of the edge: requests, 5xx answers and latency quantiles (pure).

Latencies go into a fixed geometric histogram (5 % wide buckets from 10 µs to ~10 min),
so recording is O(1), memory is constant and a quantile is exact to within one bucket.

Two windows run side by side: the log window (:meth:`EdgeStats.roll`, every
``--stats-interval``) and the signal window (:meth:`EdgeStats.signal`, every
:data:`SIGNAL_INTERVAL_S`), whose figures are published as ``edge/stats`` for the
autoscaler: per app the arrival and completion rates, the requests in flight (now, and on
average over the window by Little's law), and latency quantiles. A record holds at most
:data:`MAX_SIGNAL_APPS` apps (the busiest), so its size is bounded.
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


#: How often the edge publishes its per-app signals (``edge/stats``), in seconds.
SIGNAL_INTERVAL_S = 1.0
#: At most this many apps in one ``edge/stats`` record: the busiest (the record stays small).
MAX_SIGNAL_APPS = 256


def bucket_of(ms: float) -> int:
    return 0 if ms <= _MIN_MS else min(int(math.log(ms / _MIN_MS) / _LOG_GROWTH) + 1, _BUCKETS - 1)


class LatencyHistogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.total = 0

    def add(self, ms: float) -> None:
        self.add_bucket(bucket_of(ms))

    def add_bucket(self, i: int) -> None:
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
    __slots__ = ("requests", "errors_5xx", "latency", "arrivals", "busy_s")

    def __init__(self) -> None:
        self.requests = 0
        self.errors_5xx = 0
        self.latency = LatencyHistogram()
        self.arrivals = 0  # requests begun in the window (signal window only)
        self.busy_s = 0.0  # summed latency of the requests finished in the window


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
    """Counters per app: the log window (:meth:`roll`) and the signal window (:meth:`signal`).

    :meth:`begin` counts a request's arrival and puts it in flight; :meth:`record` finishes
    it (a request recorded without ``begin``, as the HAProxy figures or a test do, leaves the
    in-flight count alone).
    """

    def __init__(self, started_at: float) -> None:
        self._apps: dict[str, AppCounters] = {}
        self._since = started_at
        self._sig: dict[str, AppCounters] = {}
        self._sig_since = started_at
        self.inflight: dict[str, int] = {}  # app -> requests in flight now
        self.held: dict[str, int] = {}  # app -> requests held while it wakes from zero
        self.held_rejected: dict[str, int] = {}  # app -> held requests refused (queue full)
        self.totals: dict[str, int] = {}  # app -> requests since start (never reset)
        self.lifetime = Lifetime()

    def begin(self, app: str) -> None:
        self.inflight[app] = self.inflight.get(app, 0) + 1
        c = self._sig.get(app)
        if c is None:
            c = self._sig[app] = AppCounters()
        c.arrivals += 1

    def record(self, app: str, status: int, latency_s: float) -> None:
        n = self.inflight.get(app, 0)
        if n > 0:
            self.inflight[app] = n - 1
        self.totals[app] = self.totals.get(app, 0) + 1
        i = bucket_of(latency_s * 1000.0)
        error = status >= 500
        for window in (self._apps, self._sig):
            c = window.get(app)
            if c is None:
                c = window[app] = AppCounters()
            c.requests += 1
            c.errors_5xx += error
            c.latency.add_bucket(i)
            c.busy_s += latency_s
        self.lifetime.add(app, status, latency_s)

    def roll(self, now: float) -> dict[str, dict[str, Any]]:
        """The log window's figures per app; resets it."""
        span = max(now - self._since, 1e-9)
        out: dict[str, dict[str, Any]] = {}
        for app, c in sorted(self._apps.items()):
            out[app] = _figures(app, c, span, self.totals)
        self._apps = {}
        self._since = now
        return out

    def signal(self, now: float, limit: int = MAX_SIGNAL_APPS) -> dict[str, dict[str, Any]]:
        """The signal window's figures per app (``EdgeStatsRecord.apps``); resets it.

        Apps with requests begun, finished or in flight; at most ``limit`` of them, the
        busiest first kept. Besides the log figures: ``arrival_rps`` (requests begun per
        second: what the app is asked for, even while it cannot keep up), ``inflight`` (now),
        ``inflight_avg`` (the window's average, by Little's law), ``p90_ms``, ``window_s``.
        """
        span = max(now - self._sig_since, 1e-9)
        for app, n in self.inflight.items():
            if n > 0 and app not in self._sig:
                self._sig[app] = AppCounters()
        busy = sorted(
            self._sig.items(),
            key=lambda kv: (
                -(kv[1].arrivals + kv[1].requests + self.inflight.get(kv[0], 0)),
                kv[0],
            ),
        )[: max(0, limit)]
        out: dict[str, dict[str, Any]] = {}
        for app, c in sorted(busy):
            figures = _figures(app, c, span, self.totals)
            figures["arrival_rps"] = round(c.arrivals / span, 3)
            figures["inflight"] = self.inflight.get(app, 0)
            figures["inflight_avg"] = round(c.busy_s / span, 3)
            figures["p90_ms"] = round(c.latency.quantile(0.90), 3)
            figures["window_s"] = round(span, 3)
            if self.held.get(app):
                figures["held"] = self.held[app]
            if self.held_rejected.get(app):
                figures["held_rejected"] = self.held_rejected.pop(app)
            out[app] = figures
        self._sig = {}
        self._sig_since = now
        return out


def _figures(app: str, c: AppCounters, span: float, totals: dict[str, int]) -> dict[str, Any]:
    return {
        "requests": c.requests,
        "errors_5xx": c.errors_5xx,
        "rps": round(c.requests / span, 3),
        "error_rate": round(c.errors_5xx / c.requests, 4) if c.requests else 0.0,
        "p50_ms": round(c.latency.quantile(0.50), 3),
        "p99_ms": round(c.latency.quantile(0.99), 3),
        "total_requests": totals.get(app, 0),
    }
