"""Prometheus ``/metrics`` for the agent, the edge and the reconciler.

Each component makes one :class:`Metrics` (its own ``CollectorRegistry``, so two
components in one process or one test never share series) and serves it with
:func:`metrics_handler`. Figures come from three places:

- the fabric view, read at scrape time (:class:`MeshCollector`): app sync / health /
  rollout phase, instances by phase, restarts, node capacity and free credits;
- the fabric member itself (:class:`FabricCollector`): members by state, packets and bytes,
  packets dropped by reason, records of others refused by reason (signed records);
- the component's own instruments: :class:`ReconcileMetrics` (duration histogram, errors)
  and :class:`EdgeMetrics` (requests by app and code, latency histogram), and callbacks
  (:meth:`Metrics.gauge_callback`, :meth:`Metrics.counter_callback`).

Names follow the Prometheus conventions: ``myco_`` prefix, base units in the name
(``_seconds``, ``_bytes``, ``_cores``), ``_total`` on counters, state sets as a 0/1 gauge
with a ``status``/``phase`` label (as kube-state-metrics does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from reconciler import __version__
from reconciler.fabric.api import FabricAPI

from .snapshot import FabricSnapshot, snapshot_of
from .status import build_status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

SYNC_STATES = ("Synced", "OutOfSync", "InvalidSpec", "Unknown")
HEALTH_STATES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
ROLLOUT_PHASES = ("idle", "starting", "warming", "rolling", "canary", "promoting")
MEMBER_STATES = ("alive", "suspect", "dead", "left")
UNKNOWN_APP = "_unknown"  # label for requests that matched no app (not a valid app name)

# Request latency buckets: 1 ms .. 10 s, denser where web requests usually fall.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECONCILE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Samples = float | Mapping[tuple[str, ...], float]


class MeshCollector(Collector):
    """Series built from the fabric view at scrape time.

    ``owner=None`` (the reconciler): the whole mesh, apps included. ``owner=NAME`` (an
    agent): only that member's instances and node, and no app-level series, so that
    summing over agents never counts an instance twice.
    """

    def __init__(self, snapshot: Callable[[], FabricSnapshot], owner: str | None = None) -> None:
        self._snapshot = snapshot
        self._owner = owner

    def describe(self) -> list[Metric]:
        return []  # built at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        st = build_status(self._snapshot())
        own = self._owner
        instances = [i for i in st.instances if own is None or i.node == own]
        nodes = [n for n in st.nodes if own is None or n.name == own]
        if own is None:
            sync = GaugeMetricFamily(
                "myco_app_sync_status",
                "1 for the app's current sync status",
                labels=["app", "status"],
            )
            health = GaugeMetricFamily(
                "myco_app_health_status", "1 for the app's current health", labels=["app", "status"]
            )
            rollout = GaugeMetricFamily(
                "myco_app_rollout_phase", "1 for the app's current rollout phase",
                labels=["app", "phase"],
            )  # fmt: skip
            desired = GaugeMetricFamily(
                "myco_app_instances_desired", "Instances the garden asks for", labels=["app"]
            )
            ready = GaugeMetricFamily(
                "myco_app_instances_ready", "Instances ready to serve", labels=["app"]
            )
            for a in st.apps:
                for s in _states(SYNC_STATES, a.sync):
                    sync.add_metric([a.name, s], 1.0 if s == a.sync else 0.0)
                for s in _states(HEALTH_STATES, a.health):
                    health.add_metric([a.name, s], 1.0 if s == a.health else 0.0)
                phase = a.rollout or "idle"
                for s in _states(ROLLOUT_PHASES, phase):
                    rollout.add_metric([a.name, s], 1.0 if s == phase else 0.0)
                desired.add_metric([a.name], float(a.desired))
                ready.add_metric([a.name], float(a.ready))
            yield from (sync, health, rollout, desired, ready)
            info = GaugeMetricFamily(
                "myco_garden_revision_info", "The garden revision in force",
                labels=["revision", "source"],
            )  # fmt: skip
            if st.revision:
                info.add_metric([st.revision, st.source], 1.0)
            yield info
        by_phase = GaugeMetricFamily(
            "myco_instances", "Instances by app and phase", labels=["app", "phase"]
        )
        counts: dict[tuple[str, str], int] = {}
        for i in instances:
            counts[(i.app, i.phase)] = counts.get((i.app, i.phase), 0) + 1
        for (app, phase), count in sorted(counts.items()):
            by_phase.add_metric([app, phase], float(count))
        yield by_phase
        restarts = CounterMetricFamily(
            "myco_instance_restarts",
            "Restarts of each instance",
            labels=["app", "instance", "node"],
        )
        for i in instances:
            restarts.add_metric([i.app, i.instance_id, i.node], float(i.restarts))
        yield restarts
        fams = {
            "capacity_cpu": GaugeMetricFamily(
                "myco_node_capacity_cpu_cores", "CPU the node offers", labels=["node"]
            ),
            "free_cpu": GaugeMetricFamily(
                "myco_node_free_cpu_cores", "CPU credits not yet given out", labels=["node"]
            ),
            "capacity_mem": GaugeMetricFamily(
                "myco_node_capacity_memory_bytes", "Memory the node offers", labels=["node"]
            ),
            "free_mem": GaugeMetricFamily(
                "myco_node_free_memory_bytes", "Memory credits not yet given out", labels=["node"]
            ),
        }
        for n in nodes:
            if not n.cpu_milli and not n.memory_mb:
                continue  # a member that is not an agent (edge, reconciler)
            fams["capacity_cpu"].add_metric([n.name], n.cpu_milli / 1000.0)
            fams["free_cpu"].add_metric([n.name], n.free_cpu_milli / 1000.0)
            fams["capacity_mem"].add_metric([n.name], n.memory_mb * 1048576.0)
            fams["free_mem"].add_metric([n.name], n.free_memory_mb * 1048576.0)
        yield from fams.values()


def _states(known: tuple[str, ...], current: str) -> tuple[str, ...]:
    return known if current in known else (*known, current)


class FabricCollector(Collector):
    """Membership as this member sees it, and its packet counters (``Fabric.stats``)."""

    def __init__(self, fabric: FabricAPI) -> None:
        self._fabric = fabric

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        members = GaugeMetricFamily(
            "myco_gossip_members", "Fabric members by state, as seen here", labels=["state"]
        )
        counts = dict.fromkeys(MEMBER_STATES, 0)
        for m in self._fabric.members():
            counts[m.state] = counts.get(m.state, 0) + 1
        for state, n in counts.items():
            members.add_metric([state], float(n))
        yield members
        refused_records = getattr(self._fabric, "refused_records", None)
        if callable(refused_records):  # a fabric with signed records (a record guard)
            refused = CounterMetricFamily(
                "myco_fabric_records_refused",
                "Fabric records of others refused (signature, certificate, authorization...)",
                labels=["reason"],
            )
            for reason, n in sorted(refused_records().items()):
                refused.add_metric([reason], float(n))
            yield refused
        stats = getattr(self._fabric, "stats", None)
        if stats is None:
            return
        dropped = CounterMetricFamily(
            "myco_gossip_packets_dropped", "Packets dropped unparsed, by reason", labels=["reason"]
        )
        dropped.add_metric(["auth"], float(getattr(stats, "dropped_auth", 0)))
        dropped.add_metric(["malformed"], float(getattr(stats, "dropped_malformed", 0)))
        yield dropped
        packets = CounterMetricFamily(
            "myco_gossip_packets", "Packets sent and received", labels=["direction"]
        )
        packets.add_metric(["in"], float(getattr(stats, "packets_in", 0)))
        packets.add_metric(["out"], float(getattr(stats, "packets_out", 0)))
        yield packets
        sent = CounterMetricFamily(
            "myco_gossip_bytes", "Bytes sent and received", labels=["direction"]
        )
        sent.add_metric(["in"], float(getattr(stats, "bytes_in", 0)))
        sent.add_metric(["out"], float(getattr(stats, "bytes_out", 0)))
        yield sent


class _CallbackCollector(Collector):
    def __init__(
        self,
        name: str,
        doc: str,
        fn: Callable[[], Samples],
        labels: tuple[str, ...],
        kind: Literal["gauge", "counter"],
    ) -> None:
        self._args = (name, doc, fn, labels, kind)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        name, doc, fn, labels, kind = self._args
        cls = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
        fam = cls(name, doc, labels=list(labels))
        value = fn()
        if isinstance(value, int | float):
            fam.add_metric([], float(value))
        else:
            for label_values, v in sorted(value.items()):
                fam.add_metric(list(label_values), float(v))
        yield fam


class ReconcileMetrics:
    """The reconciler's own instruments."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "myco_reconcile_duration_seconds",
            "Time of one plan-and-publish pass",
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "myco_reconcile_errors", "Failed reconcile passes, by kind", ["kind"],
            registry=registry,
        )  # fmt: skip
        self.rollouts = Counter(
            "myco_rollout_events", "Rollouts started, finished and reverted", ["app", "event"],
            registry=registry,
        )  # fmt: skip

    def observe(self, seconds: float, error: str | None = None) -> None:
        self.duration.observe(seconds)
        if error is not None:
            self.errors.labels(kind=error).inc()

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Time the block; an exception counts as an error of its type (and propagates)."""
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self.observe(time.perf_counter() - start, type(exc).__name__)
            raise
        self.observe(time.perf_counter() - start)

    def rollout(self, app: str, event: Literal["start", "finish", "revert"]) -> None:
        self.rollouts.labels(app=app, event=event).inc()


class EdgeMetrics:
    """The edge's instruments: call :meth:`observe` once per proxied request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "myco_edge_requests", "Requests by app and HTTP status code", ["app", "code"],
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "myco_edge_request_duration_seconds",
            "Time from request to the end of the response head, by app",
            ["app"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, app: str | None, code: int, seconds: float) -> None:
        label = app or UNKNOWN_APP
        self.requests.labels(app=label, code=str(code)).inc()
        self.latency.labels(app=label).observe(seconds)


class LifetimeCounters(Protocol):
    """What :class:`EdgeStatsCollector` reads: the edge's ``reconciler.edge.stats.Lifetime``.

    Stated here so that observe (below the services) does not import the edge.
    """

    @property
    def codes(self) -> Mapping[tuple[str, int], int]:
        """Answers by (app, HTTP status)."""

    @property
    def buckets(self) -> Mapping[str, Sequence[int]]:
        """Per app, latencies counted per bound of ``bounds`` (the last slot: above all)."""

    @property
    def sums(self) -> Mapping[str, float]:
        """Per app, the sum of latencies in seconds."""

    @property
    def bounds(self) -> tuple[float, ...]:
        """The histogram's upper bounds in seconds, ascending."""


class EdgeStatsCollector(Collector):
    """The edge's own never-reset counters (:class:`LifetimeCounters`), read at scrape
    time: the hot path only bumps integers, it never calls prometheus_client."""

    def __init__(self, lifetime: LifetimeCounters) -> None:
        self._lifetime = lifetime

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        life = self._lifetime
        requests = CounterMetricFamily(
            "myco_edge_requests", "Requests by app and HTTP status code", labels=["app", "code"]
        )
        for (app, code), n in sorted(life.codes.items()):
            requests.add_metric([app, str(code)], float(n))
        yield requests
        latency = HistogramMetricFamily(
            "myco_edge_request_duration_seconds",
            "Time from request to the end of the response, by app",
            labels=["app"],
        )
        for app, counts in sorted(life.buckets.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*life.bounds, float("inf")), counts, strict=True):
                cumulative += n
                buckets.append(
                    ("+Inf" if bound == float("inf") else repr(bound), float(cumulative))
                )
            latency.add_metric([app], buckets, life.sums[app])
        yield latency


class Metrics:
    """One component's registry: ``Metrics("agent", fabric)``, then serve ``handler``.

    ``scope="mesh"`` (the reconciler) exports app-level series for the whole mesh;
    ``scope="own"`` (agents) exports this member's instances and node only; ``scope="none"``
    (the edge) exports only membership and packets from the fabric.
    """

    def __init__(
        self,
        component: str,
        fabric: FabricAPI | None = None,
        *,
        scope: Literal["mesh", "own", "none"] = "own",
    ) -> None:
        self.component = component
        self.registry = CollectorRegistry(auto_describe=False)
        self._reconcile: ReconcileMetrics | None = None
        self._edge: EdgeMetrics | None = None
        info = GaugeMetricFamily(
            "myco_build_info", "Version of the component", labels=["component", "version"]
        )
        info.add_metric([component, __version__], 1.0)
        self.registry.register(_Fixed(info))
        if fabric is not None:
            self.registry.register(FabricCollector(fabric))
            if scope != "none":
                owner = None if scope == "mesh" else fabric.name
                self.registry.register(MeshCollector(lambda: snapshot_of(fabric), owner))

    @property
    def reconcile(self) -> ReconcileMetrics:
        if self._reconcile is None:
            self._reconcile = ReconcileMetrics(self.registry)
        return self._reconcile

    @property
    def edge(self) -> EdgeMetrics:
        if self._edge is None:
            self._edge = EdgeMetrics(self.registry)
        return self._edge

    def add_edge_stats(self, lifetime: LifetimeCounters) -> None:
        """Export the edge's lifetime counters (requests by app and code, latency)."""
        self.registry.register(EdgeStatsCollector(lifetime))

    def add_http_auth(self, refused: Mapping[str, int]) -> None:
        """Export an HTTP server's authentication refusals by reason (``no-credentials``,
        ``expired``, ``revoked``, ``wrong-ca``, ``forbidden``...), read at scrape time."""
        self.counter_callback(
            "myco_http_auth_refused",
            "HTTP requests refused by authentication (401) or authorization (403), by reason",
            lambda: {(reason,): n for reason, n in refused.items()},
            ("reason",),
        )

    def gauge_callback(
        self, name: str, doc: str, fn: Callable[[], Samples], labels: tuple[str, ...] = ()
    ) -> None:
        """A gauge read from ``fn()`` at scrape time: a number, or {label values: number}."""
        self.registry.register(_CallbackCollector(name, doc, fn, labels, "gauge"))

    def counter_callback(
        self, name: str, doc: str, fn: Callable[[], Samples], labels: tuple[str, ...] = ()
    ) -> None:
        """A counter read from ``fn()``; ``name`` without ``_total`` (it is added)."""
        self.registry.register(_CallbackCollector(name, doc, fn, labels, "counter"))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def handler(self, request: web.Request) -> web.Response:
        """``GET /metrics``: add with ``app.router.add_get("/metrics", metrics.handler)``."""
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE})


class _Fixed(Collector):
    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield self._metric
