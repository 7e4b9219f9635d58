"""Per-app counters of the edge: requests, 5xx answers and latency quantiles (pure).

Latencies go into a fixed geometric histogram (5 % wide buckets from 10 µs to ~10 min),
so recording is O(1), memory is constant and a quantile is exact to within one bucket.

Two windows run side by side: the log window (:meth:`EdgeStats.roll`, every
``--stats-interval``) and the signal window (:meth:`EdgeStats.signal`, every
:data:`SIGNAL_INTERVAL_S`), whose figures are published as ``edge/stats`` for the
autoscaler: per app the arrival and completion rates, the requests in flight (now, and on
average over the window by Little's law), and latency quantiles. A record holds at most
:data:`MAX_SIGNAL_APPS` apps (the busiest), so its size is bounded.

The signal window also judges the requests *sent* in it (``p99_sent_ms``): those answered
within it at their latency, those still in flight at its end at their age so far (a lower
bound, to :data:`SLICE_S`). Answers to requests sent before the window (a backlog being
drained) are counted apart (``stale``): they say the app was short of capacity, not that
it is now. Telling them apart needs the time at an answer: the injected ``clock``, the
proxy's (monotonic seconds, as ``now`` and ``started_at``).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable
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
#: Requests in flight are kept by when they were sent, in slices this long (their age at
#: the window's end is known to within one slice).
SLICE_S = 0.01
#: ... and in at most this many slices (a window longer than that puts its latest requests in
#: the last one, which only makes their age a lower bound still)
MAX_SLICES = 400


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
    __slots__ = ("requests", "errors_5xx", "latency", "arrivals", "busy_s", "sent", "open", "stale")

    def __init__(self) -> None:
        self.requests = 0
        self.errors_5xx = 0
        self.latency = LatencyHistogram()
        self.arrivals = 0  # requests begun in the window (signal window only)
        self.busy_s = 0.0  # summed latency of the requests finished in the window
        # signal window only: latencies of the requests begun in it and answered in it;
        # those begun in it still in flight, per SLICE_S of when they began; answers to
        # requests begun before it
        self.sent: LatencyHistogram | None = None
        self.open: list[int] = []
        self.stale = 0

    def sent_hist(self) -> LatencyHistogram:
        if self.sent is None:
            self.sent = LatencyHistogram()
        return self.sent


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

    def __init__(self, started_at: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
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
        k = min(max(0, int((self._clock() - self._sig_since) / SLICE_S)), MAX_SLICES - 1)
        if k >= len(c.open):
            c.open.extend([0] * (k + 1 - len(c.open)))
        c.open[k] += 1

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
        self._answered(self._sig[app], i, latency_s)
        self.lifetime.add(app, status, latency_s)

    def _answered(self, c: AppCounters, bucket: int, latency_s: float) -> None:
        """An answer in the signal window: to a request sent in it (its slice leaves the
        open ones), else to one sent before it (``stale``). The slice is found from the
        answer's latency, give or take one (the proxy's start and :meth:`begin` read the
        clock a moment apart; a request begun a moment before the window may have been
        counted in it)."""
        k = int((self._clock() - latency_s - self._sig_since) / SLICE_S)
        if k < -1 or not c.open:  # sent before the window, or none of it is open
            c.stale += 1
            return
        k = min(k, MAX_SLICES - 1)
        for j in (k, k - 1, k + 1):
            if 0 <= j < len(c.open) and c.open[j] > 0:
                c.open[j] -= 1
                c.sent_hist().add_bucket(bucket)
                return
        c.stale += 1

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
        ``inflight_avg`` (the window's average, by Little's law), ``p90_ms``, ``window_s``,
        ``sent`` (requests begun in the window), ``p99_sent_ms`` (the p99 of those: their
        latency if answered, else their age at ``now``; 0 when none) and ``stale`` (answers
        to requests begun before the window).
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
            figures["sent"] = c.arrivals
            figures["p99_sent_ms"] = round(_sent_p99(c, now - self._sig_since), 3)
            figures["stale"] = c.stale
            if self.held.get(app):
                figures["held"] = self.held[app]
            if self.held_rejected.get(app):
                figures["held_rejected"] = self.held_rejected.pop(app)
            out[app] = figures
        self._sig = {}
        self._sig_since = now
        return out


def _sent_p99(c: AppCounters, span: float) -> float:
    """The p99 (ms) of the requests begun in the window: answered ones at their latency,
    open ones at their age at its end (``span`` after it began; the end of their slice)."""
    if not c.open and c.sent is None:
        return 0.0
    h = LatencyHistogram()
    if c.sent is not None:
        h.counts[:] = c.sent.counts
        h.total = c.sent.total
    for k, n in enumerate(c.open):
        if n > 0:
            age_ms = max(0.0, span - (k + 1) * SLICE_S) * 1000.0
            h.counts[bucket_of(age_ms)] += n
            h.total += n
    return h.quantile(0.99)


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
