"""Records that cross the control fabric (docs/fabric.md): the contract between the parts.

Every record is a frozen dataclass that turns into plain JSON (``to_json``) and back
(``from_json``). Each is published by its owner under a fixed key:

=====================  ==============  ==========================================
key                    owner           record
=====================  ==============  ==========================================
``node``               agent           :class:`NodeRecord`
``inst/<instance>``    agent           :class:`InstanceRecord`
``garden``             reconciler      :class:`GardenRevisionRecord`
``lease``              reconciler      :class:`LeaseRecord`
``intents/<node>``     active reconc.  :class:`IntentRecord`
``routes/<app>``       active reconc.  :class:`RouteRecord`
``edge/stats``         edge            :class:`EdgeStatsRecord`
``edge/routes``        edge            :class:`EdgeRoutesRecord`
=====================  ==============  ==========================================

Intents and routes are level-triggered: the latest value is the whole truth, so a member
that missed an update converges at the next anti-entropy round.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar

from reconciler.errors import FabricError

KEY_NODE = "node"
KEY_GARDEN = "garden"
KEY_LEASE = "lease"
KEY_EDGE_STATS = "edge/stats"
KEY_EDGE_ROUTES = "edge/routes"
KEY_BUILD = "build"
PREFIX_INSTANCE = "inst/"
PREFIX_INTENTS = "intents/"
PREFIX_ROUTES = "routes/"

Phase = Literal["fetching", "starting", "ready", "draining", "failed", "exited"]
PHASES: tuple[Phase, ...] = ("fetching", "starting", "ready", "draining", "failed", "exited")

T = TypeVar("T", bound="_Record")


def instance_key(instance_id: str) -> str:
    return PREFIX_INSTANCE + instance_id


def intents_key(node_id: str) -> str:
    return PREFIX_INTENTS + node_id


def routes_key(app: str) -> str:
    return PREFIX_ROUTES + app


@dataclass(frozen=True)
class Nutrients:
    """CPU in thousandths of a core and memory in MiB: both a budget and a capacity."""

    cpu_milli: int = 0
    memory_mb: int = 0

    def fits_in(self, other: Nutrients) -> bool:
        return self.cpu_milli <= other.cpu_milli and self.memory_mb <= other.memory_mb

    def __add__(self, other: Nutrients) -> Nutrients:
        return Nutrients(self.cpu_milli + other.cpu_milli, self.memory_mb + other.memory_mb)

    def __sub__(self, other: Nutrients) -> Nutrients:
        return Nutrients(self.cpu_milli - other.cpu_milli, self.memory_mb - other.memory_mb)


def plain(value: Any) -> Any:
    """``value`` as plain JSON: lists (not the tuples ``dataclasses.asdict`` leaves), str keys."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class _Record:
    """JSON round-trip for the frozen dataclasses below (nested dataclasses included)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = plain(dataclasses.asdict(self))  # type: ignore[call-overload]
        return out

    @classmethod
    def from_json(cls, data: object) -> Self:
        if not isinstance(data, dict):
            raise FabricError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        try:
            built: Self = _build(cls, data)
            return built
        except (TypeError, ValueError) as exc:
            raise FabricError(f"{cls.__name__}: {exc}") from exc


def _build(cls: type[Any], data: dict[str, Any]) -> Any:
    hints = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = hints.get(name)
        if f is None:
            continue  # newer writers may add fields; readers ignore what they do not know
        target = _NESTED.get((cls.__name__, name))
        if target is not None and isinstance(value, dict):
            value = _build(target, value)
        elif target is not None and isinstance(value, list | tuple):
            value = tuple(_build(target, v) if isinstance(v, dict) else v for v in value)
        elif isinstance(value, list | tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class NodeRecord(_Record):
    node_id: str
    gossip_addr: str = ""
    api_url: str = ""
    roles: tuple[str, ...] = ("agent",)
    capacity: Nutrients = field(default_factory=Nutrients)
    free: Nutrients = field(default_factory=Nutrients)
    labels: dict[str, str] = field(default_factory=dict)
    draining: bool = False
    #: started with --insecure: gossip and/or its HTTP listeners in plaintext off loopback
    insecure: bool = False
    #: digests of the verified spores this agent holds and serves to peers
    spores: tuple[str, ...] = ()
    #: platform tags this host runs (e.g. "cp311-manylinux_x86_64", "node20-linux_x64");
    #: a spore built for a platform is placed only on nodes listing it ("any" runs anywhere)
    platforms: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstanceRecord(_Record):
    instance_id: str
    app: str
    digest: str
    version: str = ""
    node: str = ""
    phase: Phase = "fetching"
    endpoint: str | None = None  # "host:port" once listening
    pid: int | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    healthy: bool = False
    enforcement: str = ""  # "cgroup2" | "cgroup1" | "rlimit"
    message: str = ""
    started_at: float = 0.0
    updated_at: float = 0.0
    rss_mb: float = 0.0
    cpu_percent: float = 0.0


@dataclass(frozen=True)
class IntentInstance(_Record):
    """One instance a node should run."""

    instance_id: str
    app: str
    digest: str
    version: str = ""
    nutrients: Nutrients = field(default_factory=Nutrients)
    fetch_urls: tuple[str, ...] = ()  # base URLs serving GET {url}/spores/{digest}


@dataclass(frozen=True)
class IntentRecord(_Record):
    """Everything one node should run, from the active reconciler (lease ``epoch``)."""

    node: str
    epoch: int
    revision: str = ""
    instances: tuple[IntentInstance, ...] = ()


@dataclass(frozen=True)
class Backend(_Record):
    instance_id: str
    endpoint: str  # "host:port"
    weight: int = 1


@dataclass(frozen=True)
class RouteRecord(_Record):
    """Where the edge sends ``{prefix}/...``; ``draining`` endpoints get no new requests."""

    app: str
    prefix: str
    epoch: int = 0
    backends: tuple[Backend, ...] = ()
    draining: tuple[str, ...] = ()
    revision: str = ""
    rollout: dict[str, Any] = field(default_factory=dict)  # the app's rollout state (core)
    #: an app that may be at zero (``autoscale.to_zero_after_s``): with no backend the edge
    #: holds a request up to this long while the app wakes, instead of answering 503
    hold_s: float = 0.0
    #: grows by one each time the route's content changes; an edge reports the generation
    #: it serves (:class:`EdgeRoutesRecord`), so that a draining instance is withered only
    #: once every live edge has stopped sending it new requests
    generation: int = 0


@dataclass(frozen=True)
class AppStatus(_Record):
    sync: str = "OutOfSync"  # Synced | OutOfSync | InvalidSpec
    health: str = "Missing"  # Healthy | Progressing | Degraded | Suspended | Missing
    reason: str = ""
    spec_digest: str = ""
    desired: int = 0
    ready: int = 0
    rollout: str = ""
    revision: str = ""  # the garden revision (Git commit) this status refers to
    #: apps with ``autoscale``: {current, desired, min, max, target, panic, last: the last
    #: decision {at, previous, desired, want, direction, reason}, pending, warning}
    autoscale: dict[str, Any] = field(default_factory=dict)
    #: a failed dependency build: the installer's last lines (at most 20 lines, 4 KB)
    build_log: str = ""


@dataclass(frozen=True)
class BuildProgressRecord(_Record):
    """A reconciler's dependency builds under way (``build``), per app: ``step`` (the
    current step, one line), ``packages`` (when known), ``elapsed_s`` (since that build
    began, at ``at``); ``{}`` when none runs."""

    apps: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0


@dataclass(frozen=True)
class GardenRevisionRecord(_Record):
    revision: str
    source: str = ""
    commit: str = ""
    apps: dict[str, Any] = field(default_factory=dict)  # name -> AppStatus.to_json()
    problems: tuple[Any, ...] = ()  # validation problems of the garden, as JSON objects
    overrides: dict[str, Any] = field(default_factory=dict)  # suspend/rollback/drain by CLI
    history: dict[str, Any] = field(default_factory=dict)  # app -> recent revisions
    epoch: int = 0  # the lease epoch of the reconciler that wrote it
    holder: str = ""  # that reconciler's member name
    control_url: str = ""  # its control API (apply, diff, drain, ...)


@dataclass(frozen=True)
class LeaseRecord(_Record):
    holder: str
    epoch: int
    expires_at: float  # wall-clock seconds; renewed well before


@dataclass(frozen=True)
class EdgeStatsRecord(_Record):
    """An edge's figures of the last second (docs/autoscale.md), per app: ``requests``,
    ``errors_5xx``, ``rps`` (answered per second), ``arrival_rps``, ``inflight`` (now),
    ``inflight_avg``, ``p50_ms``, ``p90_ms``, ``p99_ms``, ``error_rate``,
    ``total_requests``, ``window_s``, ``sent`` and ``p99_sent_ms`` (the requests sent in the
    window and their p99: latency if answered, else age so far), ``stale`` (answers to
    requests sent before the window) and, for an app held at zero, ``held``. At most
    256 apps (the busiest); published every second while there is traffic."""

    apps: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0


@dataclass(frozen=True)
class EdgeRoutesRecord(_Record):
    """The route generation (``RouteRecord.generation``) an edge serves, per app; published
    when it changes. The reconciler withers a draining instance only after every live edge
    reports a generation that lists it as draining (or a bounded wait has passed)."""

    apps: dict[str, int] = field(default_factory=dict)


_NESTED: dict[tuple[str, str], type[Any]] = {
    ("NodeRecord", "capacity"): Nutrients,
    ("NodeRecord", "free"): Nutrients,
    ("IntentInstance", "nutrients"): Nutrients,
    ("IntentRecord", "instances"): IntentInstance,
    ("RouteRecord", "backends"): Backend,
}
