"""The mesh at a glance, built purely from a :class:`FabricSnapshot` (no I/O, no clock).

Nodes come from membership joined with ``node`` records; apps from the ``garden`` record
of the active reconciler (the highest lease ``epoch``), completed with apps that still have
instances or routes but are no longer in the garden; instances from ``inst/*`` records;
request figures from every edge's ``edge/stats``; dependency builds under way from the
reconcilers' ``build`` records (an app being built for the first time is listed too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.errors import FabricError
from reconciler.records import (
    KEY_BUILD,
    KEY_EDGE_STATS,
    KEY_GARDEN,
    KEY_NODE,
    PHASES,
    PREFIX_INSTANCE,
    PREFIX_ROUTES,
    AppStatus,
    InstanceRecord,
    NodeRecord,
    RouteRecord,
)

from .snapshot import FabricSnapshot

NOT_IN_GARDEN = "not in the garden"


@dataclass(frozen=True)
class NodeView:
    name: str
    state: str  # alive | suspect | dead | left (membership)
    addr: str = ""
    api_url: str = ""
    roles: tuple[str, ...] = ()
    cpu_milli: int = 0
    memory_mb: int = 0
    free_cpu_milli: int = 0
    free_memory_mb: int = 0
    draining: bool = False
    instances: int = 0
    insecure: bool = False  # started with --insecure (plaintext off loopback allowed)


@dataclass(frozen=True)
class AppView:
    name: str
    sync: str = "Unknown"
    health: str = "Unknown"
    reason: str = ""
    revision: str = ""
    desired: int = 0
    ready: int = 0
    rollout: str = ""
    spec_digest: str = ""
    prefix: str = ""
    backends: int = 0
    phases: dict[str, int] = dataclasses.field(default_factory=dict)  # phase -> count
    rps: float = 0.0
    error_rate: float = 0.0
    p99_ms: float = 0.0
    #: apps with ``autoscale``: the reconciler's block (AppStatus.autoscale); {} otherwise
    autoscale: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: a dependency build under way: {step, packages?, elapsed_s} (the ``build`` record)
    building: dict[str, Any] = dataclasses.field(default_factory=dict)
    build_log: str = ""  # a failed build: the installer's last lines

    @property
    def instances(self) -> int:
        return sum(self.phases.values())


@dataclass(frozen=True)
class InstanceView:
    instance_id: str
    app: str
    node: str
    phase: str
    restarts: int = 0
    endpoint: str = ""
    version: str = ""
    healthy: bool = False
    message: str = ""


@dataclass(frozen=True)
class MeshStatus:
    revision: str = ""
    source: str = ""
    commit: str = ""
    reconciler: str = ""  # the member whose garden record is shown
    problems: tuple[str, ...] = ()
    nodes: tuple[NodeView, ...] = ()
    apps: tuple[AppView, ...] = ()
    instances: tuple[InstanceView, ...] = ()

    def insecure_nodes(self) -> tuple[str, ...]:
        """Nodes started with ``--insecure``."""
        return tuple(n.name for n in self.nodes if n.insecure)

    def app(self, name: str) -> AppView | None:
        return next((a for a in self.apps if a.name == name), None)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for app, raw in zip(self.apps, out["apps"], strict=True):
            raw["instances"] = app.instances
        out["summary"] = {
            "nodes": {s: sum(n.state == s for n in self.nodes) for s in _MEMBER_STATES},
            "apps": len(self.apps),
            "synced": sum(a.sync == "Synced" for a in self.apps),
            "healthy": sum(a.health == "Healthy" for a in self.apps),
            "instances": len(self.instances),
            "insecure_nodes": list(self.insecure_nodes()),
        }
        return out


_MEMBER_STATES = ("alive", "suspect", "dead", "left")


def build_status(snap: FabricSnapshot) -> MeshStatus:
    """Turn one snapshot into a :class:`MeshStatus`; records that do not parse are skipped."""
    node_records: dict[str, NodeRecord] = {}
    instances: list[InstanceView] = []
    routes: dict[str, RouteRecord] = {}
    gardens: list[tuple[int, str, dict[str, Any]]] = []
    edge: dict[str, list[dict[str, Any]]] = {}
    building: dict[str, tuple[float, dict[str, Any]]] = {}  # app -> (record's at, entry)
    for e in snap.entries:
        if not isinstance(e.value, dict):
            continue
        try:
            if e.key == KEY_NODE:
                node_records[e.owner] = NodeRecord.from_json(e.value)
            elif e.key.startswith(PREFIX_INSTANCE):
                instances.append(_instance(InstanceRecord.from_json(e.value), e.owner))
            elif e.key.startswith(PREFIX_ROUTES):
                r = RouteRecord.from_json(e.value)
                old = routes.get(r.app)
                if old is None or r.epoch >= old.epoch:
                    routes[r.app] = r
            elif e.key == KEY_GARDEN:
                epoch = e.value.get("epoch", 0)
                gardens.append((epoch if isinstance(epoch, int) else 0, e.owner, e.value))
            elif e.key == KEY_BUILD:
                at, per_app = e.value.get("at", 0.0), e.value.get("apps", {})
                at = float(at) if isinstance(at, int | float) else 0.0
                if isinstance(per_app, dict):
                    for app, entry in per_app.items():
                        if isinstance(entry, dict) and at >= building.get(app, (-1.0, {}))[0]:
                            building[app] = (at, entry)
            elif e.key == KEY_EDGE_STATS:
                per_app = e.value.get("apps", {})
                if isinstance(per_app, dict):
                    for app, figures in per_app.items():
                        if isinstance(figures, dict):
                            edge.setdefault(app, []).append(figures)
        except (FabricError, TypeError):
            continue  # a record from a newer or broken writer: show the rest
    instances.sort(key=lambda i: (i.app, i.node, i.instance_id))
    garden = max(gardens, key=lambda g: (g[0], g[1])) if gardens else None
    nodes = _nodes(snap, node_records, instances)
    builds = {app: entry for app, (_, entry) in building.items()}
    apps = _apps(garden[2] if garden else {}, instances, routes, edge, builds)
    if garden is None:
        return MeshStatus(nodes=nodes, apps=apps, instances=tuple(instances))
    g = garden[2]
    problems = g.get("problems", [])
    return MeshStatus(
        revision=str(g.get("revision", "")),
        source=str(g.get("source", "")),
        commit=str(g.get("commit", "")),
        reconciler=garden[1],
        problems=tuple(str(p) for p in problems) if isinstance(problems, list) else (),
        nodes=nodes,
        apps=apps,
        instances=tuple(instances),
    )


def _instance(r: InstanceRecord, owner: str) -> InstanceView:
    return InstanceView(
        instance_id=r.instance_id,
        app=r.app,
        node=r.node or owner,
        phase=r.phase,
        restarts=r.restarts,
        endpoint=r.endpoint or "",
        version=r.version,
        healthy=r.healthy,
        message=r.message,
    )


def _nodes(
    snap: FabricSnapshot, records: Mapping[str, NodeRecord], instances: list[InstanceView]
) -> tuple[NodeView, ...]:
    per_node: dict[str, int] = {}
    for i in instances:
        per_node[i.node] = per_node.get(i.node, 0) + 1
    states = {m.name: (m.state, m.addr) for m in snap.members}
    out = []
    for name in sorted(set(states) | set(records)):
        state, addr = states.get(name, ("alive", ""))
        rec = records.get(name)
        if rec is None:
            out.append(NodeView(name, state, addr, instances=per_node.get(name, 0)))
            continue
        out.append(
            NodeView(
                name=name,
                state=state,
                addr=rec.gossip_addr or addr,
                api_url=rec.api_url,
                roles=tuple(rec.roles),
                cpu_milli=rec.capacity.cpu_milli,
                memory_mb=rec.capacity.memory_mb,
                free_cpu_milli=rec.free.cpu_milli,
                free_memory_mb=rec.free.memory_mb,
                draining=rec.draining,
                instances=per_node.get(name, 0),
                insecure=rec.insecure,
            )
        )
    return tuple(out)


def _apps(
    garden: Mapping[str, Any],
    instances: list[InstanceView],
    routes: Mapping[str, RouteRecord],
    edge: Mapping[str, list[dict[str, Any]]],
    building: Mapping[str, dict[str, Any]],
) -> tuple[AppView, ...]:
    statuses = garden.get("apps", {})
    if not isinstance(statuses, dict):
        statuses = {}
    phases: dict[str, dict[str, int]] = {}
    for i in instances:
        per = phases.setdefault(i.app, {})
        per[i.phase] = per.get(i.phase, 0) + 1
    names = sorted(set(statuses) | set(phases) | set(routes) | set(building))
    revision = str(garden.get("revision", ""))
    out = []
    for name in names:
        raw = statuses.get(name)
        route = routes.get(name)
        counts = {p: n for p in PHASES if (n := phases.get(name, {}).get(p, 0))}
        figures = _edge_figures(edge.get(name, []))
        common: dict[str, Any] = {
            "prefix": route.prefix if route else "",
            "backends": len(route.backends) if route else 0,
            "phases": counts,
            "building": building.get(name, {}),
            **figures,
        }
        if isinstance(raw, dict):
            try:
                st = AppStatus.from_json(raw)
            except (FabricError, TypeError):
                st = AppStatus(reason="unreadable status record")
            out.append(
                AppView(
                    name=name,
                    sync=st.sync,
                    health=st.health,
                    reason=st.reason,
                    revision=str(raw.get("revision", "")) or revision,
                    desired=st.desired,
                    ready=st.ready,
                    rollout=st.rollout,
                    spec_digest=st.spec_digest,
                    autoscale=st.autoscale if isinstance(st.autoscale, dict) else {},
                    build_log=st.build_log if isinstance(st.build_log, str) else "",
                    **common,
                )
            )
        elif name in building and not counts and route is None:  # its first build
            out.append(AppView(name=name, sync="OutOfSync", health="Missing", **common))
        else:
            ready = counts.get("ready", 0)
            out.append(AppView(name=name, reason=NOT_IN_GARDEN, ready=ready, **common))
    return tuple(out)


def _edge_figures(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Sum the rates of several edges; the worst p99 and the overall error rate."""
    rps = sum(_num(r.get("rps")) for r in rows)
    requests = sum(_num(r.get("requests")) for r in rows)
    errors = sum(_num(r.get("errors_5xx")) for r in rows)
    p99 = max((_num(r.get("p99_ms")) for r in rows), default=0.0)
    return {
        "rps": round(rps, 3),
        "error_rate": round(errors / requests, 4) if requests else 0.0,
        "p99_ms": p99,
    }


def _num(v: object) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0
