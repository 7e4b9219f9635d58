"""The fabric at 1,000 and 5,000 hosts, by simulation: bytes per member and route spread,
with every member carrying every record (today's engine) and with records scoped by role.

    python -m bench.scale [--json] [--quick] [--sizes 1000,5000] [--seeds N]

**Every figure at 1,000 and 5,000 hosts is simulated** (a model of the protocol, below),
given with its seed count and spread (median, min, max over seeds); the model is checked
in the same run against the real engine (:class:`~reconciler.fabric.sim.SimCluster`: the
real :class:`~reconciler.fabric.engine.Engine`, AES-GCM and all, on virtual time) at a
size the real engine can run, and is trusted only if every ratio is within 0.5-2.

Scenario (:class:`Scenario`): ``hosts`` agents, one edge per 50 hosts, two reconcilers
(one active). Records as the product writes them (:mod:`reconciler.records`, encoded by the
fabric's codec with an 86-character Ed25519 signature, so the sizes are real): per host a
``node`` record (20 spore digests) and 20 ``inst/*`` records; per edge an ``edge/stats``
record of its 256 busiest apps, published every second, and an ``edge/routes`` record
(the route generation it serves, for every app), published after each route change; the
active reconciler's
``lease`` (renewed every second), one ``intents/<node>`` per host (20 instances),
``routes/<app>`` for ``hosts * 20 / 10`` apps (10 backends), ``garden``; a ``certs/*``
record per member. Churn: each host changes one of its instance records once a minute
(a Poisson process, 83 changes/s at 5,000 hosts). A route change is published by the
active reconciler every ``route_probe_s`` (a different app each time, one backend
replaced), from the start; the time of the first ``route_probes`` of the measured window
to reach 99% and 100% of the members that carry routes is measured; every edge publishes
its ``edge/routes`` 1-1.5 s after each (about when an edge applies a
route, whenever it actually receives it).

Figures: ``bytes_per_member_s`` is everything the members send (UDP and TCP, AES-GCM
overhead of 29 B, UDP/IP headers of 28 B a packet, TCP/IP headers of 40 B a segment of at
most 1460 B, with 3 segments to open and 4 to close the fresh connection a stream uses and
one ack segment per two data segments, all counted to the stream's sender), divided by
members and seconds; by role, what members of that role send (``out``) and receive
(``in``). ``route_t_99_s`` / ``route_t_100_s``: per seed the median over the route changes
of the run; across seeds median, min and max (the targets are checked on the max).

Scoping (``scoped``), the design measured here (docs/scale.md): every record has a
*scope class*, and a member carries only the classes of its role::

    class  records                                  carried by
    all    node, certs/*, revocations, lease,       everyone
           garden, routes/*
    rec    inst/*, edge/stats, edge/routes, build   reconcilers (and the owner)
    node   intents/<n>                              reconcilers and node n (and the owner)

A member's state for an owner is one *stream* per class (``owner`` for ``all``,
``owner/r`` and ``owner/n:<node>`` for the others): versions still come from the owner's
one counter, and the watermark of a stream is the version up to which every update of
that owner *in that class* is held. Digests and deltas are per stream and only for streams
both sides carry (a full digest from a peer that lacks a class is not read as "holds
nothing of it"). Eager pushes go per class to ``gossip_nodes`` random carriers of the
class, piggybacks only carry what the receiving member carries, and the retransmit limit
of a class is computed from its number of carriers. Two additions keep minority classes
converging: a carrier of a class that not everyone carries also exchanges digests of that
class with a random co-carrier every sync interval, and an owner whose minority-class
stream changed since it last compared it with a carrier sends that stream's digest to a
random carrier at its next sync tick (how a 57 KB ``edge/stats`` record, too big for a
packet, reaches the reconcilers).

The model (:class:`Model`): a discrete-event simulation of the engine's protocol on virtual
time that tracks versions and byte sizes instead of payloads: per member and stream a
watermark, the newest version held and which of the 64 versions below it are held (the
eager pushes above the watermark); per member the broadcast queue (fewest transmits first,
newest first, one item per key, a retransmit limit of ``4 * ceil(log10(n + 1))``, items
bigger than a packet never queued); gossip ticks every 200 ms to 3 random peers while the
queue is not empty; a probe (ping and ack, both piggybacking queued items) every second;
a UDP digest every second to a random peer (the whole digest if it fits 900 bytes, else a
sample: owners updated in the last 30 s first, then random ones), answered with the
peer's digest of the same owners and the deltas (oldest first per owner, cut at the packet
budget; if cut, the whole difference by TCP instead), and the initiator's deltas back;
TCP push-pull (membership rows, full digest, deltas both ways) every 30 s scaled as
memberlist does (x6 at 1,000, x9 at 5,000 members); watermarks raised by ordered deltas
only and never above the newest version held; packet delay 2-5 ms, a stream's three
transits (SYN, SYN-ACK, data: as the in-memory network models TCP). The wire sizes are
computed from the same JSON framing as the codec's (checked against it by the tests).

What the model leaves out: failure detection beyond the probe's ping and ack (no member
fails, no packet is lost, so no ping-req, nack, suspicion, refutation, re-join, reaping);
the probe target is a random member rather than the next one of a shuffled round;
JSON and AES-GCM CPU time (a member is never slowed by its own work: the real engine at
5,000 members would also spend CPU sorting a broadcast queue of up to 100,000 items);
a member's broadcast queue is cut to its 512 best-ranked items when it reaches 1,024 (the
real one is unbounded; only the best-ranked items are ever sent); an eager copy more
than 64 versions below the newest version held of its owner is not remembered as held
(a later copy of it may be re-gossiped once more); the ``node``-class (intents) streams,
which do not change in this scenario, count in full digests but are not drawn into
sampled digests; signature checks and parked records; the bootstrap (every member starts
knowing every member and holding every record, as ``bench.gossip`` starts; in the model
the first push-pulls are spread over the whole scaled interval, as in a mesh that has run
for a while, except in the calibration, which starts as the engine does); and the other
records' churn: node records (free credits, held spores), intents, garden status and build
progress do not change in this scenario.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import gc
import hashlib
import heapq
import itertools
import json
import math
import operator
import random
import resource
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.targets import evaluate as evaluate_targets
from reconciler.errors import ConfigError
from reconciler.fabric.api import Change, JSONValue
from reconciler.fabric.codec import Entry, encode_one
from reconciler.fabric.config import FabricConfig
from reconciler.records import (
    Backend,
    EdgeRoutesRecord,
    EdgeStatsRecord,
    GardenRevisionRecord,
    InstanceRecord,
    IntentInstance,
    IntentRecord,
    LeaseRecord,
    NodeRecord,
    Nutrients,
    RouteRecord,
)

#: At 5,000 hosts (scoped): what a member sends per second, and a route change's spread.
TARGETS = {"bytes_per_member_s": ("<=", 40_000.0), "route_t_99_s": ("<=", 3.0)}
#: The model is trusted if every model/real ratio of the calibration is within this.
TRUST = (0.5, 2.0)

SIG = "S" * 86  # an Ed25519 signature, unpadded base64url (reconciler.identity.guard.b64)
VERSION_DIGITS = 16  # versions are wall-clock microseconds (reconciler/fabric/versions.py)
SEQ_DIGITS = 10  # probe sequence numbers start below 2**30
AEAD = 1 + 12 + 16  # version byte, nonce, GCM tag (reconciler/fabric/keyring.py)
UDP_IP = 28
TCP_IP = 40
MSS = 1460
STREAM_LEN = 4  # a stream is length(4) | sealed bytes (reconciler/fabric/udp.py)

AGENT, EDGE, RECONCILER = 0, 1, 2
ROLES = ("agent", "edge", "reconciler")
ALL, REC = 0, 1  # scope classes that change here ("node", intents, is static)
K_INST, K_ROUTE, K_LEASE, K_STATS, K_SERVED = 0, 1, 2, 3, 4
KINDS = ("inst", "route", "lease", "edge_stats", "edge_routes")


# --- the scenario ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    hosts: int
    instances_per_host: int = 20
    hosts_per_edge: int = 50
    reconcilers: int = 2
    replicas_per_app: int = 10
    #: instance record changes per host per minute
    churn_per_host_min: float = 1.0
    edge_stats_s: float = 1.0
    edge_stats_apps: int = 256
    lease_renew_s: float = 1.0
    route_probe_s: float = 5.0
    route_probes: int = 12
    warmup_s: float = 60.0
    measure_s: float = 120.0
    scoped: bool = False
    #: digits of a member's incarnation on the wire: 10 for real processes (the wall-clock
    #: second they started), 1 in SimCluster (which starts every member at 0)
    inc_digits: int = 10

    def __post_init__(self) -> None:
        if self.hosts < 3:
            raise ConfigError("scale: hosts must be >= 3")
        if self.route_probe_s <= 0 or self.route_probes * self.route_probe_s >= self.measure_s:
            raise ConfigError("scale: the route changes must fit in the measured window")

    @property
    def edges(self) -> int:
        return max(1, self.hosts // self.hosts_per_edge)

    @property
    def members(self) -> int:
        return self.hosts + self.edges + self.reconcilers

    @property
    def apps(self) -> int:
        return max(1, self.hosts * self.instances_per_host // self.replicas_per_app)

    @property
    def duration(self) -> float:
        return self.warmup_s + self.measure_s


@dataclass(frozen=True)
class Member:
    name: str
    addr: str
    role: int


def members_of(scn: Scenario) -> list[Member]:
    """Reconcilers first (``reconciler-1`` is the active one), then edges, then hosts;
    addresses as SimCluster gives them, in the same order."""
    names = [(f"reconciler-{i + 1}", RECONCILER) for i in range(scn.reconcilers)]
    names += [(f"edge-{i:03d}", EDGE) for i in range(scn.edges)]
    names += [(f"host-{i:05d}", AGENT) for i in range(scn.hosts)]
    return [
        Member(name, f"10.0.{i // 250}.{i % 250 + 1}:7946", role)
        for i, (name, role) in enumerate(names)
    ]


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _app(i: int) -> str:
    return f"app-{i:05d}"


def _iid(host: int, k: int, scn: Scenario) -> str:
    n = host * scn.instances_per_host + k
    app = n % scn.apps
    return f"{_app(app)}-{_h(_app(app))[:8]}-{n // scn.apps}"


def _endpoint(host: int, port: int) -> str:
    return f"10.{1 + host // 62500}.{host // 250 % 250}.{host % 250 + 1}:{port}"


_INST_TEMPLATES: dict[tuple[Scenario, int, int], dict[str, Any]] = {}


def inst_value(scn: Scenario, host: int, k: int, rng: random.Random, t: float) -> JSONValue:
    """An instance record as an agent reports it (health, resources, times changing)."""
    tmpl = _INST_TEMPLATES.get((scn, host, k))
    if tmpl is None:
        iid = _iid(host, k, scn)
        app = iid.rsplit("-", 2)[0]
        tmpl = InstanceRecord(
            instance_id=iid,
            app=app,
            digest="sha256:" + _h(app),
            version="1.4.2",
            node=f"host-{host:05d}",
            endpoint=_endpoint(host, 31000 + k),
            enforcement="cgroup2",
        ).to_json()
        if len(_INST_TEMPLATES) > 200_000:
            _INST_TEMPLATES.clear()
        _INST_TEMPLATES[(scn, host, k)] = tmpl
    ready = rng.random() < 0.9
    value = dict(tmpl)
    value.update(
        phase="ready" if ready else "starting",
        pid=rng.randrange(1000, 4_000_000),
        restarts=rng.randrange(3),
        healthy=ready,
        started_at=round(1_700_000_000 + t - rng.random() * 3600, 3),
        updated_at=round(1_700_000_000 + t, 3),
        rss_mb=round(rng.uniform(40, 900), 1),
        cpu_percent=round(rng.uniform(0, 100), 1),
    )
    return value


def node_value(scn: Scenario, host: int) -> JSONValue:
    return NodeRecord(
        node_id=f"host-{host:05d}",
        gossip_addr=_endpoint(host, 7946),
        api_url=f"https://{_endpoint(host, 7443)}",
        roles=("agent",),
        capacity=Nutrients(16000, 65536),
        free=Nutrients(3500, 12288),
        labels={"zone": f"zone-{host % 3}", "rack": f"r{host % 40}"},
        spores=tuple("sha256:" + _h(f"{host}/{k}") for k in range(scn.instances_per_host)),
        platforms=("cp311-manylinux_x86_64",),
    ).to_json()


def intent_value(scn: Scenario, host: int) -> JSONValue:
    items = []
    for k in range(scn.instances_per_host):
        iid = _iid(host, k, scn)
        app = iid.rsplit("-", 2)[0]
        items.append(
            IntentInstance(
                iid,
                app,
                "sha256:" + _h(app),
                "1.4.2",
                Nutrients(500, 512),
                ("https://10.0.0.1:7444",),
            )
        )
    return IntentRecord(f"host-{host:05d}", 3, _h("rev")[:40], tuple(items)).to_json()


def route_value(scn: Scenario, app: int, change: int = 0) -> JSONValue:
    backends = []
    for r in range(scn.replicas_per_app):
        n = app + r * scn.apps
        host = n // scn.instances_per_host % scn.hosts
        seq = r + (scn.replicas_per_app if r == 0 and change else 0) + change
        backends.append(
            Backend(
                f"{_app(app)}-{_h(_app(app))[:8]}-{seq}",
                _endpoint(host, 31000 + n % scn.instances_per_host),
            )
        )
    return RouteRecord(_app(app), "/" + _app(app), 3, tuple(backends), (), _h("rev")[:40]).to_json()


_STATS_TEMPLATES: dict[tuple[Scenario, int], dict[str, Any]] = {}


def stats_value(scn: Scenario, edge: int, t: float) -> JSONValue:
    """An edge's ``edge/stats``: its busiest apps' figures of the last second."""
    tmpl = _STATS_TEMPLATES.get((scn, edge))
    if tmpl is None:
        apps: dict[str, Any] = {}
        for i in range(min(scn.edge_stats_apps, scn.apps)):
            apps[_app((edge * 7919 + i) % scn.apps)] = {
                "requests": 1234,
                "errors_5xx": 0,
                "rps": 1234.0,
                "error_rate": 0.0,
                "p50_ms": 3.123,
                "p90_ms": 12.345,
                "p99_ms": 45.678,
                "total_requests": 123456789,
                "window_s": 1.001,
                "arrival_rps": 1234.5,
                "inflight": 3,
                "inflight_avg": 2.345,
            }
        tmpl = EdgeStatsRecord(apps, 0.0).to_json()
        _STATS_TEMPLATES[(scn, edge)] = tmpl
    value = dict(tmpl)
    value["at"] = round(1_700_000_000 + t, 3)
    return value


_SERVED_TEMPLATES: dict[Scenario, dict[str, int]] = {}


def served_value(scn: Scenario, change: int) -> JSONValue:
    """An edge's ``edge/routes``: the route generation it serves, for every app; after the
    ``change``-th route change of the run."""
    apps = _SERVED_TEMPLATES.get(scn)
    if apps is None:
        apps = _SERVED_TEMPLATES[scn] = {_app(a): 1 + a % 7 for a in range(scn.apps)}
    value = dict(apps)
    if change:
        app = _app(_probe_app(scn, change - 1))
        value[app] = apps[app] + 1
    return EdgeRoutesRecord(apps=value).to_json()


def _probe_app(scn: Scenario, p: int) -> int:
    return (p * 7 + 3) % scn.apps


def lease_value(t: float) -> JSONValue:
    return LeaseRecord("reconciler-1", 3, round(1_700_000_003 + t, 3)).to_json()


def cert_value() -> JSONValue:
    # Two PEM certificates (member + mesh CA): about 1.3 KB.
    return {
        "chain": ("-----BEGIN CERTIFICATE-----\n" + "M" * 560 + "\n-----END CERTIFICATE-----\n") * 2
    }


def garden_value(scn: Scenario) -> JSONValue:
    """The active reconciler's garden record (static here): its size grows with the apps."""
    apps = {
        _app(i): {
            "sync": "Synced",
            "health": "Healthy",
            "reason": "",
            "spec_digest": "sha256:" + _h(_app(i)),
            "desired": scn.replicas_per_app,
            "ready": scn.replicas_per_app,
            "rollout": "",
            "revision": _h("rev")[:40],
            "autoscale": {},
            "build_log": "",
        }
        for i in range(scn.apps)
    }
    return GardenRevisionRecord(
        _h("rev")[:40],
        "git@example.org:garden.git",
        _h("rev")[:40],
        apps,
        epoch=3,
        holder="reconciler-1",
    ).to_json()


def entry_size(owner: str, key: str, value: JSONValue) -> int:
    """Bytes of the record as one ``entry`` message (signed, 16-digit version)."""
    return len(encode_one(Entry(owner, key, 10**15 + 1, False, value, SIG)))


#: One record every member holds at the start: (key, its value when asked for, class);
#: class ALL, REC or, for ``intents/<node>``, 2 + the host's index.
StockRecord = tuple[str, Callable[[], JSONValue], int]


def stock_of(scn: Scenario, members: Sequence[Member]) -> dict[str, list[StockRecord]]:
    out: dict[str, list[StockRecord]] = {}
    rng = random.Random(0)
    host = 0
    edge = 0
    for m in members:
        recs: list[StockRecord] = [(f"certs/{m.name}", cert_value, ALL)]
        if m.role == AGENT:
            recs.append(("node", functools.partial(node_value, scn, host), ALL))
            for k in range(scn.instances_per_host):
                value = functools.partial(inst_value, scn, host, k, rng, 0.0)
                recs.append((f"inst/{_iid(host, k, scn)}", value, REC))
            host += 1
        elif m.role == EDGE:
            recs.append(("edge/stats", functools.partial(stats_value, scn, edge, 0.0), REC))
            recs.append(("edge/routes", functools.partial(served_value, scn, 0), REC))
            edge += 1
        elif m.name == "reconciler-1":
            recs.append(("lease", functools.partial(lease_value, 0.0), ALL))
            recs.append(("garden", functools.partial(garden_value, scn), ALL))
            for a in range(scn.apps):
                recs.append((f"routes/{_app(a)}", functools.partial(route_value, scn, a), ALL))
            for h in range(scn.hosts):
                intent = functools.partial(intent_value, scn, h)
                recs.append((f"intents/host-{h:05d}", intent, 2 + h))
        out[m.name] = recs
    return out


@dataclass(frozen=True)
class Publish:
    """One update of the scenario: ``owner`` (member index) sets ``key``."""

    t: float
    owner: int
    key: str
    kind: int
    make: Callable[[], JSONValue]
    timed: bool = False  # a route change whose spread is measured


def schedule(scn: Scenario, members: Sequence[Member], seed: int) -> list[Publish]:
    """Every update of a run, in time order (the same for the model and the real engine)."""
    rng = random.Random(seed * 7919 + 17)
    out: list[Publish] = []
    hosts = [i for i, m in enumerate(members) if m.role == AGENT]
    edges = [i for i, m in enumerate(members) if m.role == EDGE]
    active = next(i for i, m in enumerate(members) if m.name == "reconciler-1")
    rate = scn.hosts * scn.churn_per_host_min / 60.0
    t = rng.expovariate(rate)
    vrng = random.Random(seed)
    while t < scn.duration:
        h = rng.randrange(scn.hosts)
        k = rng.randrange(scn.instances_per_host)
        make = functools.partial(inst_value, scn, h, k, vrng, t)
        out.append(Publish(t, hosts[h], f"inst/{_iid(h, k, scn)}", K_INST, make))
        t += rng.expovariate(rate)
    for e, idx in enumerate(edges):
        t = rng.random() * scn.edge_stats_s
        while t < scn.duration:
            out.append(
                Publish(t, idx, "edge/stats", K_STATS, functools.partial(stats_value, scn, e, t))
            )
            t += scn.edge_stats_s
    t = rng.random() * scn.lease_renew_s
    while t < scn.duration:
        out.append(Publish(t, active, "lease", K_LEASE, functools.partial(lease_value, t)))
        t += scn.lease_renew_s
    # Route changes all along (one every route_probe_s); the first route_probes of the
    # measured window are the ones timed.
    first = math.ceil((scn.warmup_s - 0.5) / scn.route_probe_s)
    for p in range(int((scn.duration - 0.5) // scn.route_probe_s) + 1):
        app = _probe_app(scn, p)
        t = p * scn.route_probe_s + 0.5
        make = functools.partial(route_value, scn, app, p + 1)
        timed = first <= p < first + scn.route_probes
        out.append(Publish(t, active, f"routes/{_app(app)}", K_ROUTE, make, timed))
        # Every edge then reports the generation it serves (about when it applies it).
        for idx in edges:
            served = functools.partial(served_value, scn, p + 1)
            out.append(Publish(t + 1.0 + rng.random() * 0.5, idx, "edge/routes", K_SERVED, served))
    out.sort(key=lambda p: p.t)
    return out


# --- wire sizes (the codec's compact JSON; tests check these against the codec) ----------


def tcp_wire(plain: int) -> int:
    """Bytes on the wire for one stream of ``plain`` bytes on a fresh TCP connection."""
    data = plain + AEAD + STREAM_LEN
    segs = -(-data // MSS)
    return data + TCP_IP * (7 + segs + -(-segs // 2))


def udp_wire(plain: int) -> int:
    return plain + AEAD + UDP_IP


def obj_size(key_lens: int, n: int) -> int:
    """``{"key":version,...}`` with ``n`` keys of ``key_lens`` characters in all."""
    return 2 + key_lens + n * (VERSION_DIGITS + 4) - (1 if n else 0)


def entries_size(entry_bytes: int, n: int) -> int:
    """``[[owner,key,...],...]``: ``entry_bytes`` is the sum of the entries' encodings as
    ``entry`` messages (``[8,owner,...]``: two bytes longer than inside a list)."""
    return 2 + entry_bytes - n - (1 if n else 0)


def digest_size(src: str, addr: str, key_lens: int, n: int) -> int:
    """``[9,"src","addr",flags,{...}]``."""
    return len(src) + len(addr) + 12 + obj_size(key_lens, n)


def deltas_size(mark_key_lens: int, marks: int, entry_bytes: int, entries: int) -> int:
    """``[10,{marks},[entries]]``."""
    return 6 + obj_size(mark_key_lens, marks) + entries_size(entry_bytes, entries)


def push_pull_size(src: str, addr: str, rows: int, digest_obj: int, deltas_obj: int) -> int:
    """``[11,nonce,j,r,"src","addr",[rows],{digest},{marks},[entries]]``; ``rows`` is the
    member list's size, ``deltas_obj`` the marks' and the entries' (``deltas_size - 6``)."""
    return len(src) + len(addr) + SEQ_DIGITS + 19 + rows + digest_obj + deltas_obj


def rows_size(members: Sequence[Member], inc_digits: int) -> int:
    """``[["name","addr",inc,state],...]``."""
    return 1 + sum(len(m.name) + len(m.addr) + inc_digits + 11 for m in members)


def ping_size(target: str, src: str, addr: str) -> int:
    return len(target) + len(src) + len(addr) + SEQ_DIGITS + 13


ACK_SIZE = SEQ_DIGITS + 4


# --- the model ---------------------------------------------------------------------------

#: A full digest: per class, the sender's watermarks in column order; plus (stream,
#: watermark) pairs for single streams.
_Full = tuple[dict[int, "array[int]"], list[tuple[int, int]]]

_GOSSIP, _PROBE, _SYNC, _PUSHPULL, _EAGER, _DIGEST, _DELTAS, _PP, _PUBLISH, _MARK = range(10)
_MASK64 = (1 << 64) - 1
SERIES_S = 20.0  # the bytes' time series: one figure per this many simulated seconds


class _Queue:
    """One member's broadcast queue for one class (reconciler/fabric/_queue.py): fewest
    transmits first, newest first; one item per key; ``limit`` transmits each. Cut to its
    ``cap`` best-ranked items when it holds twice as many (the real one is unbounded).

    Per transmit count, a list of ``order << 20 | key`` kept sorted (so the newest is
    last); entries of replaced items are dropped when met."""

    __slots__ = ("items", "levels", "sizes", "limit", "cap", "entries")

    def __init__(self, limit: int, cap: int) -> None:
        self.items: dict[int, list[int]] = {}  # key -> [transmits, order, uid, size]
        self.levels: list[list[int]] = [[] for _ in range(limit)]
        self.sizes: dict[int, int] = {}  # size -> items of that size (the smallest is known)
        self.limit = limit
        self.cap = cap
        self.entries = 0  # entries in the levels, stale ones included

    def put(self, key: int, order: int, uid: int, size: int) -> None:
        old = self.items.get(key)
        if old is not None:
            self._forget_size(old[3])
        self.items[key] = [0, order, uid, size]
        self.levels[0].append(order << 20 | key)  # the newest: sorted stays sorted
        self.entries += 1
        self.sizes[size] = self.sizes.get(size, 0) + 1
        if len(self.items) >= 2 * self.cap or self.entries >= 4 * self.cap:
            self._compact()

    def drop(self, key: int) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self._forget_size(old[3])

    def _forget_size(self, size: int) -> None:
        n = self.sizes[size] - 1
        if n:
            self.sizes[size] = n
        else:
            del self.sizes[size]

    def _compact(self) -> None:
        keep = sorted(self.items.items(), key=lambda kv: (kv[1][0], -kv[1][1]))[: self.cap]
        self.items = dict(keep)
        self.levels = [[] for _ in range(self.limit)]
        self.sizes = {}
        for key, it in keep:
            self.levels[it[0]].append(it[1] << 20 | key)
            self.sizes[it[3]] = self.sizes.get(it[3], 0) + 1
        for lst in self.levels:
            lst.sort()
        self.entries = len(keep)

    def take(self, budget: int, out: list[int]) -> int:
        """Uids of the items that fit ``budget``, in rank order (appended to ``out``), each
        counting one transmit more; returns the bytes used (encoding plus comma each)."""
        items = self.items
        if not items or budget <= 0:
            return 0
        used = 0
        moved: list[tuple[int, int]] = []
        levels, limit = self.levels, self.limit
        avail = dict(self.sizes)  # sizes of the items not looked at yet in this take
        smallest = min(avail)
        for lvl in range(limit):
            lst = levels[lvl]
            i = len(lst) - 1
            while i >= 0 and budget >= smallest:
                code = lst[i]
                key = code & 0xFFFFF
                it = items.get(key)
                if it is None or it[0] != lvl or it[1] != code >> 20:
                    del lst[i]  # a stale entry (the item was replaced or moved on)
                    self.entries -= 1
                    i -= 1
                    continue
                size = it[3]
                n = avail[size] - 1
                if n:
                    avail[size] = n
                else:
                    del avail[size]
                    if not avail:
                        smallest = budget + 1
                    elif size == smallest:
                        smallest = min(avail)
                i -= 1
                if size > budget:
                    if budget < 64:
                        break
                    continue
                del lst[i + 1]
                budget -= size
                used += size
                out.append(it[2])
                it[0] += 1
                if it[0] >= limit:
                    del items[key]
                    self.entries -= 1
                    self._forget_size(size)
                else:
                    moved.append((lvl + 1, code))
            if budget < smallest or budget < 64:
                break
        for lvl, code in moved:
            bisect.insort(levels[lvl], code)
        return used


@dataclass
class Figures:
    """One run's figures (the model's or the real engine's)."""

    members: int
    bytes_per_member_s: float
    by_role: dict[str, dict[str, float]]
    route_t_99: list[float | None]
    route_t_100: list[float | None]
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


class Model:
    """The protocol on virtual time, with versions and sizes instead of payloads."""

    def __init__(
        self,
        scn: Scenario,
        seed: int,
        config: FabricConfig | None = None,
        *,
        latency: float = 0.002,
        jitter: float = 0.003,
        queue_cap: int = 512,
        settle_s: float = 0.0,
        steady: bool = False,
    ) -> None:
        self.scn = scn
        self.steady = steady
        self.cfg = cfg = config or FabricConfig.lan()
        self.rng = random.Random(seed)
        self.latency, self.jitter = latency, jitter
        self.queue_cap = queue_cap
        self.settle_s = settle_s
        self.mem = members_of(scn)
        n = self.n = len(self.mem)
        self.names = [m.name for m in self.mem]
        self.addrs = [m.addr for m in self.mem]
        self.role = [m.role for m in self.mem]
        self.scoped = scn.scoped
        recon = [i for i in range(n) if self.role[i] == RECONCILER]
        self.carriers: list[list[int]] = [list(range(n)), recon if self.scoped else []]
        self.carries: list[list[bool]] = [[True] * n, [False] * n]
        for i in self.carriers[REC]:
            self.carries[REC][i] = True
        # Streams (owner, class); unscoped, one per owner, everything in class ALL.
        self.s_owner: list[int] = []
        self.s_cls: list[int] = []
        self.s_base: list[int] = []  # versions everyone holds at the start (the stock)
        self.s_keylen: list[int] = []  # length of its key in a digest
        self.s_col: list[int] = []
        self.s_updates: list[list[int]] = []
        self.stream_of: dict[tuple[int, int], int] = {}
        self.cls_streams: list[list[int]] = [[], []]
        stock = stock_of(scn, self.mem)
        for i, m in enumerate(self.mem):
            per: dict[int, int] = {}
            for _key, _value, c in stock[m.name]:
                if not self.scoped:
                    c = ALL
                elif c >= 2:
                    continue  # intents: static here, counted in full digests only
                per[c] = per.get(c, 0) + 1
            for c, count in sorted(per.items()):
                s = len(self.s_owner)
                self.stream_of[(i, c)] = s
                self.s_owner.append(i)
                self.s_cls.append(c)
                self.s_base.append(count)
                self.s_keylen.append(len(m.name) + (0 if c == ALL else 2))
                self.s_col.append(len(self.cls_streams[c]))
                self.cls_streams[c].append(s)
                self.s_updates.append([])
        self.S = len(self.s_owner)
        self.s_ids = list(range(self.S))  # shared int objects for the per-member lists
        # Per class: rows are its carriers, columns its streams.
        self.row: list[list[int]] = []
        self.ncols: list[int] = []
        self.W: list[array[int]] = []
        self.TOP: list[array[int]] = []
        self.MASK: list[array[int]] = []
        self.keys_of: list[int] = []
        for c in (ALL, REC):
            rows = [-1] * n
            for r, i in enumerate(self.carriers[c]):
                rows[i] = r
            self.row.append(rows)
            cols = self.cls_streams[c]
            self.ncols.append(len(cols))
            base = array("i", [self.s_base[s] for s in cols])
            self.W.append(base * len(self.carriers[c]))
            self.TOP.append(base * len(self.carriers[c]))
            self.MASK.append(array("Q", bytes(8 * len(cols) * len(self.carriers[c]))))
            self.keys_of.append(sum(self.s_keylen[s] for s in cols))
        self.both_all = self.cls_streams[ALL] + self.cls_streams[REC]
        # Streams each member saw change recently (the engine's ``_recent``).
        self.rec_t = [array("f", bytes(4 * self.S)) for _ in range(n)]
        self.rec_list: list[list[int]] = [[] for _ in range(n)]
        self.rec_in = [bytearray(self.S) for _ in range(n)]
        # Updates.
        self.u_stream = array("i")
        self.u_seq = array("i")
        self.u_key = array("i")
        self.u_kpos = array("i")
        self.u_size = array("i")
        self.u_kind = array("b")
        self.key_id: dict[tuple[int, str], int] = {}
        self.key_uids: list[list[int]] = []
        # Queues, timers, the event heap.
        self.limit = [cfg.retransmit_limit(max(1, len(self.carriers[c]))) for c in (ALL, REC)]
        self.queues: list[list[_Queue | None]] = [[None, None] for _ in range(n)]
        self.gossip_on = bytearray(n)
        self.dirty = bytearray(n)  # an owner whose minority-class stream changed
        self.order = 0
        self.max_queue = 0
        self.heap: list[tuple[float, int, int, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.events = 0
        # Measurement.
        self.measuring = False
        self.out_b = [0] * n
        self.in_b = [0] * n
        self.kind_b = [0] * len(KINDS)
        self.sent = 0  # every byte sent since the start (for the time series)
        self.series: list[float] = []  # bytes per member per second, per SERIES_S
        self.probes: dict[int, tuple[float, array[float]]] = {}
        self.pub = schedule(scn, self.mem, seed)
        self.rows = rows_size(self.mem, scn.inc_digits)
        self.big_size: dict[tuple[int, int], int] = {}

    # -- the event loop ---------------------------------------------------------------

    def _at(self, t: float, kind: int, a: int, b: int = 0, c: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b, c))

    def _soon(self, kind: int, a: int, b: int, c: Any) -> None:
        """A packet or stream arriving 2-5 ms from now."""
        self.seq += 1
        heapq.heappush(
            self.heap,
            (self.now + self.latency + self.rng.random() * self.jitter, self.seq, kind, a, b, c),
        )

    def _stream(self, kind: int, a: int, b: int, c: Any) -> None:
        """A TCP stream arriving: SYN, SYN-ACK, then the data (three transits)."""
        rnd, lat, jit = self.rng.random, self.latency, self.jitter
        self.seq += 1
        delay = 3 * lat + (rnd() + rnd() + rnd()) * jit
        heapq.heappush(self.heap, (self.now + delay, self.seq, kind, a, b, c))

    def run(self) -> Figures:
        wall0 = time.perf_counter()
        cfg, r = self.cfg, self.rng
        for i in range(self.n):
            self._at(cfg.probe_interval * r.random(), _PROBE, i)
            self._at(cfg.udp_sync_interval * r.random(), _SYNC, i)
            # The engine's first push-pull comes within push_pull_interval of its start,
            # then every push_pull_scaled(n): ``steady`` spreads them as in a mesh that has
            # run for a while (else every member's push-pulls come in waves).
            first = cfg.push_pull_scaled(self.n) if self.steady else cfg.push_pull_interval
            self._at(first * r.random(), _PUSHPULL, i)
        for k, p in enumerate(self.pub):
            self._at(p.t, _PUBLISH, k)
        self._at(self.scn.warmup_s, _MARK, 1)
        self._at(self.scn.duration, _MARK, 0)
        self._at(SERIES_S, _MARK, 2)
        handlers: tuple[Callable[[int, int, Any], None], ...] = (
            self._gossip_tick,
            self._probe_tick,
            self._sync_tick,
            self._push_pull_tick,
            self._on_eager,
            self._on_digest,
            self._on_deltas,
            self._on_push_pull,
            self._publish,
            self._mark,
        )
        heap, pop = self.heap, heapq.heappop
        stop = self.scn.duration + self.settle_s
        events = 0
        while heap and heap[0][0] <= stop:
            t, _, kind, a, b, c = pop(heap)
            self.now = t
            events += 1
            handlers[kind](a, b, c)
        self.events = events
        return self._figures(time.perf_counter() - wall0)

    def _mark(self, what: int, _b: int, _c: Any) -> None:
        if what == 2:  # the time series: bytes per member per second in the last SERIES_S
            self.series.append(round(self.sent / self.n / SERIES_S, 1))
            self.sent = 0
            if self.now + SERIES_S <= self.scn.duration + 1e-9:
                self._at(self.now + SERIES_S, _MARK, 2)
        else:
            self.measuring = bool(what)

    # -- state ------------------------------------------------------------------------

    def wm(self, m: int, s: int) -> int:
        """``m``'s watermark of stream ``s`` (-1: it does not carry it)."""
        c = self.s_cls[s]
        row = self.row[c][m]
        if row < 0:
            return self.s_base[s] + len(self.s_updates[s]) if self.s_owner[s] == m else -1
        return self.W[c][row * self.ncols[c] + self.s_col[s]]

    def _wms(self, m: int, streams: Sequence[int]) -> list[int]:
        """``[self.wm(m, s) for s in streams]``, faster."""
        s_cls, s_col, W, ncols = self.s_cls, self.s_col, self.W, self.ncols
        offs = [r * ncols[c] if (r := self.row[c][m]) >= 0 else -1 for c in (ALL, REC)]
        out = []
        for s in streams:
            c = s_cls[s]
            off = offs[c]
            out.append(W[c][off + s_col[s]] if off >= 0 else self.wm(m, s))
        return out

    def _held(self, c: int, idx: int, seq: int) -> bool:
        if seq <= self.W[c][idx]:
            return True
        d = self.TOP[c][idx] - seq
        return 0 <= d < 64 and bool(self.MASK[c][idx] >> d & 1)

    def _is_new(self, m: int, uid: int) -> bool:
        """``StateStore.apply``'s test: newer than what ``m`` holds for the key."""
        s = self.u_stream[uid]
        c = self.s_cls[s]
        row = self.row[c][m]
        if row < 0 or self.s_owner[s] == m:
            return False
        idx = row * self.ncols[c] + self.s_col[s]
        return not self._held(c, idx, self.u_seq[uid]) and not self._newer_held(c, idx, uid)

    def _newer_held(self, c: int, idx: int, uid: int) -> bool:
        """Whether the member at ``idx`` holds a newer version of ``uid``'s key."""
        uids = self.key_uids[self.u_key[uid]]
        u_seq = self.u_seq
        top, w, mask = self.TOP[c][idx], self.W[c][idx], self.MASK[c][idx]
        for j in range(self.u_kpos[uid] + 1, len(uids)):
            q = u_seq[uids[j]]
            if q > top:
                return False
            if q <= w or (top - q < 64 and mask >> (top - q) & 1):
                return True
        return False

    def _apply(self, m: int, uid: int) -> None:
        s = self.u_stream[uid]
        c = self.s_cls[s]
        idx = self.row[c][m] * self.ncols[c] + self.s_col[s]
        seq = self.u_seq[uid]
        top = self.TOP[c][idx]
        if seq > top:
            self.MASK[c][idx] = ((self.MASK[c][idx] << (seq - top)) | 1) & _MASK64
            self.TOP[c][idx] = seq
        elif top - seq < 64:
            self.MASK[c][idx] |= 1 << (top - seq)
        self._touch(m, s)
        pr = self.probes.get(uid)
        if pr is not None and pr[1][m] == -1.0:
            pr[1][m] = self.now - pr[0]

    def _touch(self, m: int, s: int) -> None:
        self.rec_t[m][s] = self.now
        if not self.rec_in[m][s]:
            self.rec_in[m][s] = 1
            self.rec_list[m].append(self.s_ids[s])

    def _raise(self, m: int, s: int, mark: int) -> None:
        c = self.s_cls[s]
        row = self.row[c][m]
        if row < 0 or self.s_owner[s] == m:
            return
        idx = row * self.ncols[c] + self.s_col[s]
        mark = min(mark, self.TOP[c][idx])
        if mark > self.W[c][idx]:
            self.W[c][idx] = mark

    # -- sending ----------------------------------------------------------------------

    def _count(self, src: int, dst: int, wire: int) -> None:
        self.sent += wire
        if self.measuring:
            self.out_b[src] += wire
            self.in_b[dst] += wire

    def _kinds(self, uids: Sequence[int]) -> None:
        """Entry bytes sent, by kind of record."""
        if self.measuring:
            kb, kind, size = self.kind_b, self.u_kind, self.u_size
            for u in uids:
                kb[kind[u]] += size[u]

    def _queue(self, m: int, c: int) -> _Queue:
        q = self.queues[m][c]
        if q is None:
            q = self.queues[m][c] = _Queue(self.limit[c], self.queue_cap)
        return q

    def _enqueue(self, m: int, uid: int) -> None:
        size = self.u_size[uid] + 1
        q = self._queue(m, self.s_cls[self.u_stream[uid]])
        key = self.u_key[uid]
        if size > self.cfg.packet_budget - 64:
            q.drop(key)  # too big for a packet: anti-entropy only, as BroadcastQueue.queue
            return
        self.order += 1
        q.put(key, self.order, uid, size)
        if len(q.items) > self.max_queue:
            self.max_queue = len(q.items)
        if not self.gossip_on[m]:
            self.gossip_on[m] = 1
            self._at(self.now + self.cfg.gossip_interval * self.rng.random(), _GOSSIP, m)

    def _pick(self, m: int, k: int, c: int) -> list[int]:
        """``Engine._pick``: up to ``k`` distinct random carriers of class ``c``."""
        pool = self.carriers[c]
        n = len(pool)
        others = n - (1 if self.carries[c][m] else 0)
        if others <= 0 or k <= 0:
            return []
        if others <= k + 1:
            out = [p for p in pool if p != m]
            self.rng.shuffle(out)
            return out[:k]
        chosen: dict[int, None] = {}
        tries = 0
        rnd = self.rng.random
        while len(chosen) < k and tries < 4 * k + 8:
            tries += 1
            p = pool[int(rnd() * n)]
            if p != m:
                chosen[p] = None
        return list(chosen)

    def _other(self, m: int) -> int:
        p = int(self.rng.random() * (self.n - 1))
        return p + 1 if p >= m else p

    def _send_eager(self, src: int, dst: int, base: int, uids: list[int], ping: bool) -> None:
        """A packet: ``base`` bytes of messages (with their commas) and queued entries."""
        plain = 1 + base + sum(self.u_size[u] + 1 for u in uids)
        self._count(src, dst, udp_wire(plain))
        self._kinds(uids)
        self._soon(_EAGER, dst, src, (uids, ping))

    def _piggyback(self, m: int, dst: int, used: int) -> list[int]:
        uids: list[int] = []
        budget = self.cfg.packet_budget - 2 - used
        for c in (ALL, REC):
            q = self.queues[m][c]
            if q is not None and q.items and self.carries[c][dst]:
                budget -= q.take(budget, uids)
        return uids

    # -- eager push and probes --------------------------------------------------------

    def _gossip_tick(self, m: int, _b: int, _c: Any) -> None:
        busy = False
        for c in (ALL, REC):
            q = self.queues[m][c]
            if q is None or not q.items:
                continue
            busy = True
            for peer in self._pick(m, self.cfg.gossip_nodes, c):
                uids: list[int] = []
                q.take(self.cfg.packet_budget - 2, uids)
                if not uids:
                    break
                self._send_eager(m, peer, 0, uids, False)
        if busy:
            self._at(self.now + self.cfg.gossip_interval, _GOSSIP, m)
        else:
            self.gossip_on[m] = 0  # sleeps until something is queued

    def _probe_tick(self, m: int, _b: int, _c: Any) -> None:
        self._at(self.now + self.cfg.probe_interval, _PROBE, m)
        t = self._other(m)
        base = ping_size(self.names[t], self.names[m], self.addrs[m]) + 1
        self._send_eager(m, t, base, self._piggyback(m, t, base), True)

    def _on_eager(self, dst: int, src: int, c: Any) -> None:
        uids, ping = c
        for uid in uids:
            if self._is_new(dst, uid):
                self._apply(dst, uid)
                self._enqueue(dst, uid)
        if ping:  # the ack, with entries piggybacked
            base = ACK_SIZE + 1
            self._send_eager(dst, src, base, self._piggyback(dst, src, base), False)

    # -- anti-entropy by UDP --------------------------------------------------------------

    def _compared(self, m: int, p: int) -> tuple[list[int], list[int]]:
        """Streams two members compare: (the streams of the classes both carry, the
        minority-class streams that one of them owns and the other carries)."""
        if not self.scoped:
            return self.cls_streams[ALL], []
        recm, recp = self.carries[REC][m], self.carries[REC][p]
        if recm and recp:
            return self.both_all, []
        extra = []
        if recp:
            s = self.stream_of.get((m, REC))
            if s is not None:
                extra.append(s)
        elif recm:
            s = self.stream_of.get((p, REC))
            if s is not None:
                extra.append(s)
        return self.cls_streams[ALL], extra

    def _sync_tick(self, m: int, _b: int, _c: Any) -> None:
        self._at(self.now + self.cfg.udp_sync_interval, _SYNC, m)
        p = self._other(m)
        pop, extra = self._compared(m, p)
        self._send_digest(m, p, pop, extra)
        if not self.scoped:
            return
        if self.carries[REC][m]:  # a carrier of a minority class: also a co-carrier
            peers = self._pick(m, 1, REC)
            if peers:
                self._send_digest(m, peers[0], self.cls_streams[REC], [])
        elif self.dirty[m]:  # an owner whose minority-class stream changed: a carrier
            s = self.stream_of.get((m, REC))
            peers = self._pick(m, 1, REC)
            if s is not None and peers:
                self.dirty[m] = 0
                self._send_digest(m, peers[0], [], [s], partial=True)

    def _send_digest(
        self, m: int, p: int, pop: list[int], extra: list[int], partial: bool = False
    ) -> None:
        """``Engine._udp_sync_tick``: the whole digest if it fits a packet, else a sample."""
        src, addr = self.names[m], self.addrs[m]
        if pop is self.cls_streams[ALL] or pop is self.both_all:
            keys = self.keys_of[ALL] + (self.keys_of[REC] if pop is self.both_all else 0)
        else:
            keys = sum(self.s_keylen[s] for s in pop)
        keys += sum(self.s_keylen[s] for s in extra)
        n = len(pop) + len(extra)
        size = digest_size(src, addr, keys, n)
        if partial or size + 1 <= self.cfg.digest_udp_max:
            pairs = list(zip(pop + extra, self._wms(m, pop + extra), strict=True))
        else:
            pairs = self._sample(m, pop, extra)
            partial = True
            size = digest_size(src, addr, sum(self.s_keylen[s] for s, _ in pairs), len(pairs))
        self._count(m, p, udp_wire(size + 2))
        self._soon(_DIGEST, p, m, (True, partial, pairs, None))

    def _sample(self, m: int, pop: list[int], extra: list[int]) -> list[tuple[int, int]]:
        """The engine's sampled digest: streams updated in the last ``recent_window``
        first (in random order), then random ones, as many as fit ``digest_udp_max``."""
        rnd = self.rng.random
        horizon = self.now - self.cfg.recent_window
        rl, rt, rin = self.rec_list[m], self.rec_t[m], self.rec_in[m]
        limit = self.cfg.digest_udp_max
        size = 64
        chosen: dict[int, None] = {}
        ok_cls = (
            (ALL, REC)
            if pop is self.both_all
            else (ALL,)
            if pop is self.cls_streams[ALL]
            else (REC,)
        )
        tries = 0
        while rl and tries < 2 * len(rl) + 16:
            tries += 1
            i = int(rnd() * len(rl))
            s = rl[i]
            if rt[s] < horizon:  # no longer recent: out of the list
                rl[i] = rl[-1]
                rl.pop()
                rin[s] = 0
                continue
            if s in chosen or (self.s_cls[s] not in ok_cls and s not in extra):
                continue
            size += self.s_keylen[s] + 24
            if size > limit:
                break
            chosen[s] = None
        if size <= limit:
            whole = len(pop) + len(extra)
            for _ in range(64):
                j = int(rnd() * whole)
                s = pop[j] if j < len(pop) else extra[j - len(pop)]
                if s in chosen:
                    continue
                size += self.s_keylen[s] + 24
                if size > limit:
                    break
                chosen[s] = None
        return list(zip(chosen, self._wms(m, list(chosen)), strict=True))

    def _on_digest(self, p: int, m: int, c: Any) -> None:
        """``Engine._on_digest`` (then the deltas that came in the same packet)."""
        reply, partial, pairs, bundle = c
        if partial:
            streams = [s for s, _ in pairs]
            theirs = [v for _, v in pairs]
        else:
            pop, extra = self._compared(p, m)
            streams = pop + extra
            peer = dict(pairs)
            theirs = [peer.get(s, 0) for s in streams]
        mine = self._wms(p, streams)
        if partial and self.scoped and min(mine) < 0:  # only the streams it carries
            keep = [j for j, v in enumerate(mine) if v >= 0]
            streams = [streams[j] for j in keep]
            theirs = [theirs[j] for j in keep]
            mine = [mine[j] for j in keep]
        out = 0
        budget = self.cfg.packet_budget - 16
        back: list[tuple[int, int]] | None = None
        if reply:
            back = list(zip(streams, mine, strict=True))
            size = digest_size(
                self.names[p], self.addrs[p], sum(self.s_keylen[s] for s in streams), len(back)
            )
            if size + 1 <= self.cfg.digest_udp_max:
                out = size + 1
                budget -= size + 1
            else:
                back = None
        wanted = [(s, f) for s, v, f in zip(streams, mine, theirs, strict=True) if v > f]
        uids, marks, cut = self._deltas(p, wanted, budget)
        deltas: tuple[list[int], list[tuple[int, int]]] | None = None
        if cut:  # more than a packet holds: the whole difference by TCP instead
            uids, marks, _ = self._deltas(p, wanted, None)
            self._count(p, m, tcp_wire(self._deltas_size(uids, marks) + 2))
            self._kinds(uids)
            self._stream(_DELTAS, m, p, (uids, marks))
        elif uids or marks:
            out += self._deltas_size(uids, marks) + 1
            deltas = (uids, marks)
            self._kinds(uids)
        if out:
            self._count(p, m, udp_wire(out + 1))
            if back is not None:
                self._soon(_DIGEST, m, p, (False, partial, back, deltas))
            elif deltas is not None:
                self._soon(_DELTAS, m, p, deltas)
        if bundle is not None:
            self._on_deltas(p, m, bundle)

    def _deltas_size(self, uids: list[int], marks: list[tuple[int, int]]) -> int:
        return deltas_size(
            sum(self.s_keylen[s] for s, _ in marks),
            len(marks),
            sum(self.u_size[u] for u in uids),
            len(uids),
        )

    def _deltas(
        self, m: int, wanted: list[tuple[int, int]], budget: int | None
    ) -> tuple[list[int], list[tuple[int, int]], bool]:
        """``StateStore.deltas`` (and ``Engine._cut``): for each ``(stream, floor)`` the
        peer is behind on, what ``m`` holds above the floor and up to its own watermark,
        oldest first, streams in random order, cut at ``budget``; ``cut`` tells that
        something the peer lacks was left out."""
        if not wanted:
            return [], [], False
        self.rng.shuffle(wanted)
        used = 16
        out: list[int] = []
        marks: list[tuple[int, int]] = []
        wm = self.wm
        for s, floor in wanted:
            top = wm(m, s)
            fresh = self._fresh(m, s, floor, top)
            klen = self.s_keylen[s]
            if not fresh:
                marks.append((s, top))
                continue
            sent_to = floor
            for uid in fresh:
                size = self.u_size[uid] - 1  # the engine's estimate: the entry and a comma
                if budget is not None and used + size + klen + 24 > budget:
                    if sent_to > floor:
                        marks.append((s, sent_to))
                    return out, marks, True
                out.append(uid)
                used += size
                sent_to = self.u_seq[uid]
            marks.append((s, top))
            used += klen + 24
        return out, marks, False

    def _fresh(self, m: int, s: int, floor: int, top: int) -> list[int]:
        """``m``'s items of stream ``s`` with floor < version <= top, oldest first: only
        the newest version ``m`` holds of each key (older ones are superseded)."""
        base = self.s_base[s]
        lo, hi = max(floor - base, 0), top - base
        if hi <= lo:
            return []
        c = self.s_cls[s]
        owner = self.s_owner[s] == m
        idx = -1 if owner else self.row[c][m] * self.ncols[c] + self.s_col[s]
        out = []
        key_uids, u_key, u_kpos, newer = self.key_uids, self.u_key, self.u_kpos, self._newer_held
        for uid in self.s_updates[s][lo:hi]:
            if u_kpos[uid] == len(key_uids[u_key[uid]]) - 1:
                out.append(uid)  # the newest version of its key
            elif not owner and not newer(c, idx, uid):
                out.append(uid)
        return out

    def _on_deltas(self, dst: int, _src: int, c: Any) -> None:
        uids, marks = c
        for uid in uids:
            if self._is_new(dst, uid):
                self._apply(dst, uid)  # no re-gossip of what came by anti-entropy
        for s, mark in marks:
            self._raise(dst, s, mark)

    # -- push-pull by TCP -------------------------------------------------------------

    def _push_pull_tick(self, m: int, _b: int, _c: Any) -> None:
        nxt = self.cfg.push_pull_scaled(self.n) * (0.9 + 0.2 * self.rng.random())
        self._at(self.now + nxt, _PUSHPULL, m)
        self._send_pp(m, self._other(m), None)

    def _row(self, m: int, c: int) -> array[int]:
        """``m``'s watermarks of the streams of class ``c``, in column order."""
        cols = self.ncols[c]
        r = self.row[c][m]
        return self.W[c][r * cols : (r + 1) * cols]

    def _digest_of(self, m: int, p: int) -> tuple[_Full, int]:
        """``m``'s full digest for ``p`` (whole classes as rows of watermarks, plus pairs)
        and the size of its ``{...}``."""
        pop, extra = self._compared(m, p)
        classes = (ALL, REC) if pop is self.both_all else (ALL,)
        rows = {c: self._row(m, c) for c in classes}
        pairs = [(s, self.wm(m, s)) for s in extra]
        keys = sum(self.s_keylen[s] for s in extra) + sum(self.keys_of[c] for c in classes)
        n = len(pairs) + sum(self.ncols[c] for c in classes)
        if self.scoped:  # the intents streams both carry (unchanging here)
            key = len("reconciler-1/n:host-00000")
            recm, recp = self.carries[REC][m], self.carries[REC][p]
            if recm and recp:
                keys, n = keys + key * self.scn.hosts, n + self.scn.hosts
            elif (recm and self.role[p] == AGENT) or (recp and self.role[m] == AGENT):
                keys, n = keys + key, n + 1
        return (rows, pairs), obj_size(keys, n)

    def _wanted_full(self, m: int, full: _Full) -> list[tuple[int, int]]:
        """(stream, the peer's watermark) where ``m`` holds more than the full digest."""
        rows, pairs = full
        out: list[tuple[int, int]] = []
        for c, theirs in rows.items():
            mine = self._row(m, c)
            streams = self.cls_streams[c]
            for j in itertools.compress(range(len(mine)), map(operator.gt, mine, theirs)):
                out.append((streams[j], theirs[j]))
        wm = self.wm
        out.extend((s, f) for s, f in pairs if wm(m, s) > f)
        return out

    def _send_pp(self, m: int, p: int, peer: _Full | None) -> None:
        full, dobj = self._digest_of(m, p)
        if peer is not None:
            uids, marks, _ = self._deltas(m, self._wanted_full(m, peer), None)
        else:
            uids, marks = [], []
        plain = push_pull_size(
            self.names[m], self.addrs[m], self.rows, dobj, self._deltas_size(uids, marks) - 6
        )
        self._count(m, p, tcp_wire(plain + 2))
        self._kinds(uids)
        self._stream(_PP, p, m, (peer is not None, full, uids, marks))

    def _on_push_pull(self, p: int, m: int, c: Any) -> None:
        reply, full, uids, marks = c
        self._on_deltas(p, m, (uids, marks))
        if not reply:
            self._send_pp(p, m, full)
            return
        b_uids, b_marks, _ = self._deltas(p, self._wanted_full(p, full), None)
        if b_uids:
            self._count(p, m, tcp_wire(self._deltas_size(b_uids, b_marks) + 2))
            self._kinds(b_uids)
            self._stream(_DELTAS, m, p, (b_uids, b_marks))

    # -- publishing -------------------------------------------------------------------

    def _publish(self, k: int, _b: int, _c: Any) -> None:
        p = self.pub[k]
        m = p.owner
        c = REC if self.scoped and p.kind in (K_INST, K_STATS, K_SERVED) else ALL
        s = self.stream_of[(m, c)]
        key = self.key_id.get((m, p.key))
        if key is None:
            key = self.key_id[(m, p.key)] = len(self.key_uids)
            self.key_uids.append([])
        uid = len(self.u_stream)
        ups = self.s_updates[s]
        ups.append(uid)
        seq = self.s_base[s] + len(ups)
        self.u_stream.append(s)
        self.u_seq.append(seq)
        self.u_key.append(key)
        self.u_kpos.append(len(self.key_uids[key]))
        self.key_uids[key].append(uid)
        if p.kind in (K_STATS, K_SERVED):  # big, and the same size each time: encoded once
            size = self.big_size.get((m, p.kind))
            if size is None:
                size = self.big_size[(m, p.kind)] = entry_size(self.names[m], p.key, p.make())
        else:
            size = entry_size(self.names[m], p.key, p.make())
        self.u_size.append(size)
        self.u_kind.append(p.kind)
        row = self.row[c][m]
        if row >= 0:  # the owner's own row: everything it wrote
            idx = row * self.ncols[c] + self.s_col[s]
            self.W[c][idx] = self.TOP[c][idx] = seq
        self._touch(m, s)
        if c == REC:
            self.dirty[m] = 1
        if p.timed:
            got = array("d", [-1.0]) * self.n
            got[m] = -2.0  # the publisher is not counted
            for i in range(self.n):
                if not self.carries[ALL][i]:
                    got[i] = -2.0
            self.probes[uid] = (self.now, got)
        self._enqueue(m, uid)

    # -- results ----------------------------------------------------------------------

    def converged(self) -> bool:
        """Every carrier holds every update of every stream of its classes."""
        for c in (ALL, REC):
            cols = self.ncols[c]
            for s in self.cls_streams[c]:
                if self.s_updates[s]:
                    latest = self.s_base[s] + len(self.s_updates[s])
                    if min(self.W[c][self.s_col[s] :: cols]) < latest:
                        return False
        return True

    def _figures(self, wall: float) -> Figures:
        n, secs = self.n, self.scn.measure_s
        t99: list[float | None] = []
        t100: list[float | None] = []
        for _t0, got in self.probes.values():
            t99.append(spread_time(got, 0.99))
            t100.append(spread_time(got, 1.0))
        extra: dict[str, Any] = {
            "events": self.events,
            "max_queue": self.max_queue,
            "series_bytes_per_member_s": self.series,
            "entry_bytes_per_member_s": {
                k: round(self.kind_b[i] / n / secs, 1) for i, k in enumerate(KINDS)
            },
        }
        if self.settle_s > 0:
            extra["converged"] = self.converged()
        return Figures(
            members=n,
            bytes_per_member_s=round(sum(self.out_b) / n / secs, 1),
            by_role=_by_role(self.role, self.out_b, self.in_b, secs),
            route_t_99=t99,
            route_t_100=t100,
            wall_s=round(wall, 2),
            extra=extra,
        )


def _by_role(
    roles: Sequence[int], out_b: Sequence[int], in_b: Sequence[int], secs: float
) -> dict[str, dict[str, float]]:
    by_role: dict[str, dict[str, float]] = {}
    for role, name in enumerate(ROLES):
        idx = [i for i, r in enumerate(roles) if r == role]
        if idx:
            by_role[name] = {
                "out": round(sum(out_b[i] for i in idx) / len(idx) / secs, 1),
                "in": round(sum(in_b[i] for i in idx) / len(idx) / secs, 1),
            }
    return by_role


def spread_time(got: Sequence[float], q: float) -> float | None:
    """When a fraction ``q`` of the observers had the update (``got``: seconds after the
    publish, -1 never, -2 not an observer); None if that many never had it."""
    observers = [x for x in got if x != -2.0]
    need = math.ceil(q * len(observers) - 1e-9)
    have = sorted(x for x in observers if x >= 0)
    if need == 0:
        return 0.0
    return round(have[need - 1], 3) if len(have) >= need else None


# --- the real engine on the same scenario ------------------------------------------------


class _Meter:
    """Bytes on the wire per member address (headers included), while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.out: dict[str, int] = {}
        self.inn: dict[str, int] = {}

    def count(self, src: str, dst: str, wire: int) -> None:
        if self.on:
            self.out[src] = self.out.get(src, 0) + wire
            self.inn[dst] = self.inn.get(dst, 0) + wire


def _metered_network(clock: Any, seed: int, meter: _Meter, latency: float, jitter: float) -> Any:
    from reconciler.fabric.memory import MemoryNetwork, MemoryTransport

    class Transport(MemoryTransport):
        def send_packet(self, addr: str, data: bytes) -> None:
            meter.count(self.addr, addr, len(data) + UDP_IP)
            super().send_packet(addr, data)

        def send_stream(self, addr: str, data: bytes) -> None:
            meter.count(self.addr, addr, tcp_wire(len(data) - AEAD))
            super().send_stream(addr, data)

    class Network(MemoryNetwork):
        def transport(self, addr: str | None = None) -> MemoryTransport:
            return Transport(self, super().transport(addr).addr)

    return Network(clock, latency=latency, jitter=jitter, rng=random.Random(seed + 1))


class _SizedGuard:
    """A :class:`~reconciler.fabric.api.RecordGuard` that signs with a signature of the
    real length and admits everything: the real sizes without the cost of Ed25519."""

    def __init__(self, name: str) -> None:
        self.name = name

    def sign(self, owner: str, key: str, version: int, value: JSONValue) -> str:
        return SIG

    def admit(self, owner: str, key: str, version: int, value: JSONValue, sig: str) -> str:
        return ""

    def park(self, owner: str, item: object) -> None:
        return None

    def unpark(self, owner: str) -> list[object]:
        return []

    def applied(self, owner: str, key: str, version: int, value: JSONValue) -> list[str]:
        return []

    def blocked(self, owner: str) -> bool:
        return False

    def forget(self, owner: str) -> None:
        return None

    def cert_record(self) -> tuple[str, dict[str, JSONValue]]:
        return f"certs/{self.name}", {"chain": ""}


def real_run(scn: Scenario, seed: int, *, latency: float = 0.002, jitter: float = 0.003) -> Figures:
    """The scenario on the real engine (SimCluster: virtual time, in-memory network,
    AES-GCM); the stock records are put in every member's store before the start (values
    shared between the members' stores, as a bootstrap that is not measured)."""
    from reconciler.fabric.keyring import Keyring
    from reconciler.fabric.sim import SimCluster

    if scn.scoped:
        raise ConfigError("scale: the engine does not scope records (docs/scale.md)")
    wall0 = time.perf_counter()
    mem = members_of(scn)
    sim = SimCluster(
        FabricConfig.lan(), seed=seed, latency=latency, jitter=jitter, keyring=Keyring.generate()
    )
    meter = _Meter()
    sim.net = _metered_network(sim.clock, seed, meter, latency, jitter)
    sim.record = False
    engines = []
    for m in mem:
        e = sim.add(m.name, addr=m.addr, start=False)
        e.guard = _SizedGuard(m.name)
        engines.append(e)
    for e in engines:
        for m in mem:
            if m.name != e.name:
                e.seed_member(m.name, m.addr)
    stock = stock_of(scn, mem)
    for e in engines:
        entries = [
            e.store.set_own(e.name, key, value(), e.next_version(), False, SIG)
            for key, value, _c in stock[e.name]
        ]
        for other in engines:
            if other is not e:
                for entry in entries:
                    other.store.apply(entry)
                other.store.raise_watermark(e.name, e.store.watermark(e.name))
    del stock
    for e in engines:
        e.start()
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(5000, 20, 1000)
    probes: dict[str, tuple[float, int, dict[str, float]]] = {}

    def on_change(observer: str, c: Change) -> None:
        pr = probes.get(c.key)
        if pr is not None and c.value is not None and c.version >= pr[1]:
            pr[2].setdefault(observer, sim.clock.now() - pr[0])

    sim.on_change = on_change

    def publish(p: Publish) -> None:
        v = engines[p.owner].publish(p.key, p.make())
        if p.timed:
            probes[p.key] = (sim.clock.now(), v, {})

    for p in schedule(scn, mem, seed):
        sim.clock.call_at(p.t, functools.partial(publish, p))

    def measure(on: bool) -> None:
        meter.on = on

    sim.clock.call_at(scn.warmup_s, lambda: measure(True))
    sim.clock.call_at(scn.duration, lambda: measure(False))
    run0 = time.perf_counter()
    try:
        sim.run(scn.duration)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    n, secs = len(mem), scn.measure_s
    index = {m.addr: i for i, m in enumerate(mem)}
    out_b, in_b = [0] * n, [0] * n
    for addr, b in meter.out.items():
        out_b[index[addr]] = b
    for addr, b in meter.inn.items():
        in_b[index[addr]] = b
    t99: list[float | None] = []
    t100: list[float | None] = []
    for _t0, _v, seen in probes.values():
        got = [seen.get(m.name, -1.0) for m in mem]
        got[0] = -2.0  # reconciler-1 publishes them
        t99.append(spread_time(got, 0.99))
        t100.append(spread_time(got, 1.0))
    return Figures(
        members=n,
        bytes_per_member_s=round(sum(out_b) / n / secs, 1),
        by_role=_by_role([m.role for m in mem], out_b, in_b, secs),
        route_t_99=t99,
        route_t_100=t100,
        wall_s=round(time.perf_counter() - wall0, 2),
        extra={
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "run_wall_s": round(time.perf_counter() - run0, 2),
        },
    )


# --- what the real engine costs at these sizes -------------------------------------------


def engine_probe(hosts: int, seconds: float = 20.0) -> dict[str, Any]:
    """The real engine at ``hosts`` hosts with this scenario's records and churn for
    ``seconds`` of virtual time: wall time per simulated second (the set-up apart), peak
    RSS (run it in a fresh process: :func:`engine_limits`)."""
    scn = Scenario(
        hosts=hosts, warmup_s=seconds / 2, measure_s=seconds / 2, route_probes=0, inc_digits=1
    )
    mem = members_of(scn)
    records = sum(len(v) for v in stock_of(scn, mem).values())
    t0 = time.perf_counter()
    fig = real_run(scn, 1)
    wall = time.perf_counter() - t0
    return {
        "hosts": hosts,
        "members": len(mem),
        "records": records,
        "simulated_s": seconds,
        "setup_s": round(wall - fig.extra["run_wall_s"], 2),
        "wall_s": fig.extra["run_wall_s"],
        "wall_per_simulated_s": round(fig.extra["run_wall_s"] / seconds, 3),
        "max_rss_mb": fig.extra["max_rss_mb"],
    }


def engine_limits(
    points: Sequence[int] = (100, 200), target: int = 5000, simulated_s: float = 180.0
) -> dict[str, Any]:
    """Measure :func:`engine_probe` at ``points`` (each in its own process) and extrapolate
    to ``target`` hosts: memory as a + b x members x records (every member holds every
    record), wall time per simulated second as a power of the members."""
    measured = []
    for hosts in points:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.scale", "--engine-probe", str(hosts)],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        if proc.returncode != 0:
            return {"error": f"engine probe at {hosts} hosts failed: {proc.stderr[-400:]}"}
        measured.append(json.loads(proc.stdout))
    a, b = measured[0], measured[-1]
    held_a, held_b = a["members"] * a["records"], b["members"] * b["records"]
    scn = Scenario(hosts=target)
    held_t = scn.members * sum(len(v) for v in stock_of(scn, members_of(scn)).values())
    per_held = (b["max_rss_mb"] - a["max_rss_mb"]) / max(1, held_b - held_a)
    rss_t = a["max_rss_mb"] + per_held * (held_t - held_a)
    k = math.log(b["wall_per_simulated_s"] / a["wall_per_simulated_s"]) / math.log(
        b["members"] / a["members"]
    )
    wall_t = a["wall_per_simulated_s"] * (scn.members / a["members"]) ** k
    return {
        "measured": measured,
        "extrapolated": {
            "hosts": target,
            "members": scn.members,
            "records_held_in_all": held_t,
            "rss_gb": round(rss_t / 1024, 1),
            "rss_note": "a lower bound: the probe's stock values are shared between the "
            "members' stores; a real member holds its own copy of every value",
            "wall_per_simulated_s": round(wall_t, 1),
            "wall_exponent": round(k, 2),
            "wall_h_for_run": round(wall_t * simulated_s / 3600, 1),
            "simulated_s": simulated_s,
        },
    }


# --- runs, seeds, calibration ------------------------------------------------------------


def _window(hosts: int, quick: bool) -> dict[str, float]:
    if quick:
        return {"warmup_s": 10.0, "measure_s": 40.0, "route_probes": 4, "route_probe_s": 5.0}
    return {"warmup_s": 60.0, "measure_s": 120.0, "route_probes": 12, "route_probe_s": 5.0}


def _stats(values: Sequence[float | None]) -> dict[str, float | None]:
    """Median, min and max over seeds; a figure a seed could not measure (a route change
    that never reached that many members) counts as infinitely large."""
    vals = [math.inf if v is None else v for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None}

    def out(x: float) -> float | None:
        return None if math.isinf(x) else round(x, 3)

    return {"median": out(statistics.median(vals)), "min": out(min(vals)), "max": out(max(vals))}


def _median_probe(times: Sequence[float | None]) -> float | None:
    if not times:
        return None
    vals = sorted(math.inf if t is None else t for t in times)
    m = statistics.median(vals)
    return None if math.isinf(m) else m


def _one(args: tuple[Scenario, int]) -> Figures:
    scn, seed = args
    return Model(scn, seed, steady=True).run()


def _map(
    fn: Callable[[tuple[Scenario, int]], Figures], work: list[tuple[Scenario, int]], jobs: int
) -> list[Figures]:
    if jobs <= 1 or len(work) <= 1:
        return [fn(w) for w in work]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(min(jobs, len(work))) as pool:
        return pool.map(fn, work, chunksize=1)


def summarize(scn: Scenario, figs: Sequence[Figures]) -> dict[str, Any]:
    """Figures of several seeds of one scenario: median, min and max over seeds."""
    roles: dict[str, dict[str, float]] = {}
    for role in figs[0].by_role:
        roles[role] = {
            d: round(statistics.median(f.by_role[role][d] for f in figs), 1) for d in ("out", "in")
        }
    kinds = (
        {
            k: round(statistics.median(f.extra["entry_bytes_per_member_s"][k] for f in figs), 1)
            for k in KINDS
        }
        if "entry_bytes_per_member_s" in figs[0].extra
        else None
    )
    probes = [t for f in figs for t in f.route_t_99]
    return {
        "simulated": True,
        "hosts": scn.hosts,
        "members": figs[0].members,
        "seeds": len(figs),
        "bytes_per_member_s": _stats([f.bytes_per_member_s for f in figs]),
        "by_role_median": roles,
        "entry_bytes_per_member_s_median": kinds,
        "route_t_99_s": _stats([_median_probe(f.route_t_99) for f in figs]),
        "route_t_100_s": _stats([_median_probe(f.route_t_100) for f in figs]),
        "route_changes": len(probes),
        "route_changes_never_at_99": sum(1 for t in probes if t is None),
        "route_changes_never_at_100": sum(1 for f in figs for t in f.route_t_100 if t is None),
        # A route change that never reached that many members within its time (at least
        # this long, for the last one) is counted as infinitely slow: a None median or max
        # means "more than route_window_s".
        "route_window_s": scn.measure_s - (scn.route_probes - 1) * scn.route_probe_s - 0.5,
        "window_s": {"warmup": scn.warmup_s, "measured": scn.measure_s},
        "series_bytes_per_member_s_first_seed": figs[0].extra.get("series_bytes_per_member_s"),
        "wall_s": round(sum(f.wall_s for f in figs), 1),
    }


def _ratio(model: float | None, real: float | None) -> float | None:
    if model is None or real is None or real == 0:
        return None
    return round(model / real, 3)


def calibrate(
    quick: bool = False, seeds: int = 2, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The same scenarios on the real engine and on the model; ratios model / real."""
    say = log or (lambda _msg: None)
    if quick:
        base = Scenario(hosts=30, inc_digits=1, **_window(30, True))  # type: ignore[arg-type]
        levels = {"nominal": 1.0}
        seeds = 1
    else:
        base = Scenario(
            hosts=120,
            inc_digits=1,
            warmup_s=30.0,
            measure_s=90.0,
            route_probes=12,
            route_probe_s=5.0,
        )
        levels = {"nominal": 1.0, "saturated": 4.0}
    out: dict[str, Any] = {
        "hosts": base.hosts,
        "members": base.members,
        "seeds": seeds,
        "engine_sources_sha256": engine_fingerprint(),
        "trust_range": list(TRUST),
    }
    trusted = True
    for name, churn in levels.items():
        scn = replace(base, churn_per_host_min=churn)
        real, model = [], []
        for seed in range(1, seeds + 1):
            say(f"scale: calibration {name}, seed {seed}: real engine...")
            real.append(real_run(scn, seed))
            say(f"scale: calibration {name}, seed {seed}: model...")
            model.append(Model(scn, seed).run())
        r, m = summarize(scn, real), summarize(scn, model)
        ratios = {
            "bytes_per_member_s": _ratio(
                m["bytes_per_member_s"]["median"], r["bytes_per_member_s"]["median"]
            ),
            "route_t_99_s": _ratio(m["route_t_99_s"]["median"], r["route_t_99_s"]["median"]),
            "route_t_100_s": _ratio(m["route_t_100_s"]["median"], r["route_t_100_s"]["median"]),
        }
        ok = all(v is not None and TRUST[0] <= v <= TRUST[1] for v in ratios.values())
        trusted = trusted and ok
        r["simulated"] = False
        r.pop("entry_bytes_per_member_s_median", None)
        out[name] = {
            "churn_per_host_min": churn,
            "real_engine": r,
            "model": m,
            "ratio_model_to_real": ratios,
            "within_trust_range": ok,
        }
    out["model_trusted"] = trusted
    return out


def engine_fingerprint() -> str:
    """The first 16 hex digits of a SHA-256 over ``reconciler/fabric/*.py``: which engine
    the calibration ran against."""
    import reconciler.fabric

    h = hashlib.sha256()
    for path in sorted(Path(reconciler.fabric.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def record_sizes(hosts: int = 5000) -> dict[str, int]:
    """Bytes of one record of each kind as an ``entry`` message, at ``hosts`` hosts."""
    scn = Scenario(hosts=hosts)
    rng = random.Random(0)
    return {
        "node": entry_size("host-00001", "node", node_value(scn, 1)),
        "inst": entry_size("host-00001", "inst/x", inst_value(scn, 1, 1, rng, 0.0)),
        "intents": entry_size("reconciler-1", "intents/host-00001", intent_value(scn, 1)),
        "routes": entry_size("reconciler-1", "routes/app-00001", route_value(scn, 1)),
        "lease": entry_size("reconciler-1", "lease", lease_value(0.0)),
        "edge_stats": entry_size("edge-001", "edge/stats", stats_value(scn, 1, 0.0)),
        "edge_routes": entry_size("edge-001", "edge/routes", served_value(scn, 1)),
        "certs": entry_size("host-00001", "certs/host-00001", cert_value()),
        "garden": entry_size("reconciler-1", "garden", garden_value(scn)),
    }


def run(
    sizes: Sequence[int] | None = None,
    seeds: int | Mapping[int, int] | None = None,
    quick: bool = False,
    *,
    jobs: int = 1,
    calibration_seeds: int = 2,
    limits: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Everything ``python -m bench.scale --json`` prints (``bench.chaos`` includes it)."""
    wall0 = time.perf_counter()
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    sizes = tuple(sizes) if sizes is not None else ((60,) if quick else (1000, 5000))
    for h in sizes:
        if h < 3:
            raise ConfigError(f"scale: {h} hosts: need at least 3")

    def seeds_for(h: int) -> int:
        if isinstance(seeds, Mapping):
            return int(seeds.get(h, 1))
        if seeds is not None:
            return seeds
        return 1 if quick else (10 if h <= 1000 else 3)

    result: dict[str, Any] = {
        "simulated": True,
        "about": "figures at these sizes come from bench.scale's model of the fabric "
        "protocol (see the module docstring and docs/scale.md), checked against the real "
        "engine in 'calibration'",
        "scenario": {
            k: v
            for k, v in asdict(Scenario(hosts=3)).items()
            if k not in ("hosts", "scoped", "inc_digits")
        },
        "record_bytes": record_sizes(),
        "sizes": {},
    }
    say("scale: calibration (the real engine and the model on the same scenario)...")
    result["calibration"] = calibrate(quick, calibration_seeds, say)
    say("scale: result calibration " + json.dumps(result["calibration"]))
    for h in sizes:
        per: dict[str, Any] = {}
        for mode in ("unscoped", "scoped"):
            n = seeds_for(h)
            scn = Scenario(hosts=h, scoped=mode == "scoped", **_window(h, quick))  # type: ignore[arg-type]
            say(f"scale: {h} hosts, {mode}, {n} seed(s)...")
            figs = _map(_one, [(scn, seed) for seed in range(1, n + 1)], jobs)
            per[mode] = summarize(scn, figs)
            if n < 10:
                per[mode]["seeds_note"] = (
                    f"{n} seed(s) at {h} hosts: the run takes minutes of CPU per seed"
                )
            say(f"scale: result {h} {mode} " + json.dumps(per[mode]))
        result["sizes"][str(h)] = per
    if limits and not quick:
        say("scale: the real engine at 100 and 200 hosts (extrapolated)...")
        result["engine_limits"] = engine_limits()
    top = max(sizes)
    result["targets_at_hosts"] = top
    result["targets"] = {
        mode: evaluate_targets(
            TARGETS,
            {
                "bytes_per_member_s": result["sizes"][str(top)][mode]["bytes_per_member_s"]["max"],
                "route_t_99_s": result["sizes"][str(top)][mode]["route_t_99_s"]["max"],
            },
        )
        for mode in ("unscoped", "scoped")
    }
    met = all(t["met"] for t in result["targets"]["scoped"].values())
    result["all_targets_met"] = met and result["calibration"]["model_trusted"]
    result["wall_s"] = round(time.perf_counter() - wall0, 1)
    return result


def _table(res: dict[str, Any]) -> str:
    lines = [
        f"SIMULATED (the model; calibration against the real engine below); wall {res['wall_s']} s"
    ]
    lines.append(
        f"{'hosts':>6} {'mode':9} {'seeds':>5} {'bytes/member/s med [min-max]':>30} "
        f"{'route t99 s med [max]':>22} {'t100 s med [max]':>18}"
    )
    for h, per in res["sizes"].items():
        for mode, f in per.items():
            b, t9, t1 = f["bytes_per_member_s"], f["route_t_99_s"], f["route_t_100_s"]
            lines.append(
                f"{h:>6} {mode:9} {f['seeds']:>5} "
                f"{b['median']!s:>12} [{b['min']!s}-{b['max']!s}]".ljust(50)
                + f" {t9['median']!s:>9} [{t9['max']!s}] {t1['median']!s:>9} [{t1['max']!s}]"
            )
            roles = ", ".join(
                f"{r} out {v['out']:.0f} in {v['in']:.0f}" for r, v in f["by_role_median"].items()
            )
            lines.append(f"{'':>16}by role (B/s): {roles}")
    cal = res["calibration"]
    lines.append(
        f"calibration at {cal['hosts']} hosts ({cal['members']} members), "
        f"{cal['seeds']} seed(s): model trusted: {cal['model_trusted']}"
    )
    for level in ("nominal", "saturated"):
        if level in cal:
            c = cal[level]
            r, m, q = c["real_engine"], c["model"], c["ratio_model_to_real"]
            for key in ("bytes_per_member_s", "route_t_99_s", "route_t_100_s"):
                lines.append(
                    f"  {level:9} {key:20} real {r[key]['median']!s:>10} "
                    f"model {m[key]['median']!s:>10} ratio {q[key]!s}"
                )
    lim = res.get("engine_limits", {}).get("extrapolated")
    if lim:
        lines.append(
            f"real engine at {lim['hosts']} hosts (extrapolated): "
            f"{lim['rss_gb']} GB, {lim['wall_per_simulated_s']} s per simulated s"
        )
    for mode, t in res["targets"].items():
        for name, v in t.items():
            lines.append(
                f"target {res['targets_at_hosts']} hosts {mode} {name} {v['target']}: "
                f"{v['value']} {'met' if v['met'] else 'MISSED'}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="a small smoke run (not for quoting)")
    p.add_argument("--sizes", default="", help="comma-separated host counts (1000,5000)")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per size (default 10 at <= 1000 hosts, 3 above)",
    )
    p.add_argument("--jobs", type=int, default=1, help="processes for the seeds (default 1)")
    p.add_argument("--calibration-seeds", type=int, default=2)
    p.add_argument(
        "--no-limits",
        action="store_true",
        help="skip measuring the real engine at 100 and 200 hosts",
    )
    p.add_argument("--engine-probe", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.engine_probe:
        print(json.dumps(engine_probe(a.engine_probe)))
        return 0
    try:
        sizes = [int(x) for x in a.sizes.split(",") if x.strip()] or None
    except ValueError:
        p.error(f"--sizes {a.sizes!r}: expected comma-separated host counts")
    if a.seeds is not None and a.seeds < 1:
        p.error("--seeds must be >= 1")
    try:
        res = run(
            sizes,
            a.seeds,
            a.quick,
            jobs=a.jobs,
            calibration_seeds=a.calibration_seeds,
            limits=not a.no_limits,
        )
    except ConfigError as exc:
        print(f"bench.scale: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(res) if a.json else _table(res))
    return 0 if res["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
