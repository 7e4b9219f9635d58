"""The fault matrix on real processes under load: six hosts (bench/netmesh.py) running
docs/deploy.md, one fault at a time, load through the edge all along (root).

    python -m bench.chaos --json [--only NAME,...] [--skip-sim-vs-real] [--skip-scale]

Scenarios (run in this order on one mesh, reset between them; docs/chaos.md says more):

* ``host_isolated``: an agent host with an instance cut off until it is declared dead and
  its instance replaced, then healed;
* ``split_halves``: the network split in two halves (the edge, an agent with an instance and
  the standby reconciler | the other agents and the active reconciler), until the edge's
  half has a reconciler of its own; then healed;
* ``one_way_partition``: an agent host with an instance hears nothing (its packets still go
  out) until it is declared dead; then healed;
* ``reconciler_isolated``: the active reconciler's host cut off from everything but Git (a
  local path here); the lease moves, a rollout is pushed and completed by the new holder;
  then healed: the old holder steps down, no agent follows an intent of the old epoch;
* ``loss_10_rollout`` / ``loss_30_rollout``: 10% / 30% of the packets dropped at random on
  every host's link (not the client's) during a rollout;
* ``agent_restart_mid_rollout``: an agent restarted (SIGTERM, started again) while a rollout
  is under way;
* ``clock_ahead_30s``: the standby reconciler restarted with its wall clock 30 s ahead
  (the reconciler's test-only ``$MYCO_TEST_WALL_OFFSET_S``); a rollout is pushed;
  mid-rollout the active one is killed (-9) and started again, so the fast clock takes
  over a rollout timed by the other;
* ``kill9_instance``, ``kill9_agent``, ``kill9_edge``, ``kill9_reconciler``: each process
  kind killed with SIGKILL in turn and started again as its unit's ``Restart=always``
  would (the reconciler: the active one, mid-rollout).

Figures per scenario (one JSON object each): ``requests`` and ``failed_requests`` (GETs
through the edge by a load generator in the hub namespace: one attempt per request, a 5 s
deadline, unfinished requests counted as failed) with ``failed_by_kind``; ``heal_s`` (the
fault ended -> every member sees every other alive and the final state equals the garden);
``max_instances`` and ``over_limit_instances`` (instance processes of the app at any
sample, read from /proc at 10 Hz, above the rollout's limit: ``instances`` plus its surge,
the whole new set for blue-green); ``healthy_restarts`` (an instance seen ready and healthy
whose process was later replaced or whose restart count grew: the agents' own records at
5 Hz and /proc); ``final_state_equals_garden`` (the garden's head commit is the status's
revision, the app Synced and Healthy, exactly its instances, all of the garden's version,
ready, the same ids as the processes running, the edge answering from that version only);
``lease`` (the active reconciler as each reconciler says at 5 Hz: holders in turn, moves,
samples with two active). The edge kill is the one exception to counting every failure:
requests sent while the only edge was down (killed -> listening again) are
``exempt_failed_requests``, as a client's own host cut off would be.

Targets (bench/targets.py, per scenario): ``failed_requests == 0``,
``over_limit_instances == 0``, ``healthy_restarts == 0`` everywhere; ``heal_s <= 5``
after a partition; the final state equals the garden; and the lease checks of the two lease
scenarios. The JSON also holds ``sim_vs_real`` (:mod:`bench.simreal`) and ``scale``
(:mod:`bench.scale`) unless skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import importlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.loadgen import UNFINISHED, Load, Outcome
from bench.netmesh import Host, NetMesh, clock_ahead, git, skip_reason
from bench.targets import evaluate as evaluate_targets

APP = "billing"
PROCS_HZ = 10.0
API_HZ = 5.0
CONVERGE_TIMEOUT_S = 60.0
CLOCK_AHEAD_S = 30.0


# --- what the monitor sees (pure data) ---------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One instance as its agent reports it (``/v1/instances``)."""

    phase: str
    healthy: bool
    restarts: int
    pid: int | None
    version: str = ""


@dataclass(frozen=True)
class ProcSample:
    t: float  # monotonic
    #: "<host>/<instance id>" -> pids (from /proc); keyed by host too, since two halves
    #: of a split network may each start an instance of one id
    running: Mapping[str, frozenset[int]]


@dataclass(frozen=True)
class AgentSample:
    """One look at an agent's API: its instances and the newest epoch it has followed."""

    t: float
    host: str
    instances: Mapping[str, Seen]
    epoch: int | None


@dataclass(frozen=True)
class LeaseSample:
    """One look at a reconciler's API: whether it says it holds the lease (None: no answer)."""

    t: float
    host: str
    active: bool | None
    epoch: int = 0


# --- the figures (pure) ----------------------------------------------------------------


def failure_kind(o: Outcome) -> str:
    """A failed request's kind: ``http_<status>``, ``timeout``, ``unfinished`` or the
    error's type (``ConnectionRefusedError``...)."""
    if o.status:
        return f"http_{o.status}"
    if o.error == UNFINISHED:
        return "unfinished"
    if o.error.startswith("no answer within"):
        return "timeout"
    return o.error.partition(":")[0] or "error"


def failures_by_kind(outcomes: Sequence[Outcome]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in outcomes:
        if o.status != 200:
            kind = failure_kind(o)
            out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items()))


def max_instances(samples: Sequence[ProcSample]) -> int:
    return max((len(s.running) for s in samples), default=0)


def healthy_restarts(
    agents: Sequence[AgentSample], procs: Sequence[ProcSample], exempt: Collection[str] = ()
) -> dict[str, int]:
    """``<host>/<instance id>`` -> how many times it was restarted after it had been seen
    ready and healthy (not the instance ids in ``exempt``, killed on purpose). A restart
    shows as the healthy process gone from /proc while the instance runs on under another
    pid, or as its agent's restart count growing; per instance the larger of the two."""
    pid_of: dict[str, int] = {}  # the process of each instance once it was healthy
    restarts0: dict[str, int] = {}
    by_pid: dict[str, int] = {}
    by_count: dict[str, int] = {}
    timeline: list[tuple[float, int, AgentSample | ProcSample]] = [
        *((s.t, 0, s) for s in agents),
        *((s.t, 1, s) for s in procs),
    ]
    timeline.sort(key=lambda x: (x[0], x[1]))
    for _t, _kind, s in timeline:
        if isinstance(s, AgentSample):
            for name, seen in s.instances.items():
                if name in exempt:
                    continue
                iid = f"{s.host}/{name}"
                if iid in restarts0:
                    if seen.restarts > restarts0[iid]:
                        by_count[iid] = by_count.get(iid, 0) + seen.restarts - restarts0[iid]
                        restarts0[iid] = seen.restarts
                elif seen.phase == "ready" and seen.healthy and seen.pid:
                    restarts0[iid] = seen.restarts
                    pid_of[iid] = seen.pid
        else:
            for iid, pids in s.running.items():
                if iid.partition("/")[2] in exempt:
                    continue
                old = pid_of.get(iid)
                if old is not None and pids and old not in pids:
                    by_pid[iid] = by_pid.get(iid, 0) + 1
                    pid_of[iid] = min(pids)
    out = {iid: max(by_pid.get(iid, 0), by_count.get(iid, 0)) for iid in {*by_pid, *by_count}}
    return {k: v for k, v in sorted(out.items()) if v}


def lease_timeline(
    samples: Sequence[LeaseSample], stale_s: float = 1.0
) -> list[tuple[float, frozenset[str]]]:
    """After each reconciler sample, the reconcilers that said they were active in their
    latest answer of the last ``stale_s`` seconds."""
    last: dict[str, LeaseSample] = {}
    out: list[tuple[float, frozenset[str]]] = []
    for s in sorted(samples, key=lambda s: s.t):
        last[s.host] = s
        on = frozenset(h for h, x in last.items() if x.active and s.t - x.t <= stale_s)
        out.append((s.t, on))
    return out


def holders(samples: Sequence[LeaseSample], end: float = float("inf")) -> list[str]:
    """The active reconciler in turn (moments when exactly one says it is active)."""
    out: list[str] = []
    for t, on in lease_timeline(samples):
        if t < end and len(on) == 1:
            (h,) = on
            if not out or out[-1] != h:
                out.append(h)
    return out


def both_active(
    samples: Sequence[LeaseSample], start: float = 0.0, end: float = float("inf")
) -> int:
    """Reconciler samples in ``[start, end)`` after which two or more said they were active."""
    return sum(1 for t, on in lease_timeline(samples) if start <= t < end and len(on) > 1)


def epoch_regressions(agents: Sequence[AgentSample]) -> int:
    """Samples in which an agent reported an older epoch than it had before (must never be)."""
    best: dict[str, int] = {}
    n = 0
    for s in sorted(agents, key=lambda s: s.t):
        if s.epoch is None:
            continue
        if s.epoch < best.get(s.host, 0):
            n += 1
        best[s.host] = max(best.get(s.host, 0), s.epoch)
    return n


def behind(agents: Sequence[AgentSample], epoch: int, start: float) -> int:
    """Samples from ``start`` on in which an agent followed an epoch older than ``epoch``."""
    return sum(1 for s in agents if s.t >= start and s.epoch is not None and s.epoch < epoch)


def started_after(procs: Sequence[ProcSample], t: float) -> set[str]:
    """Instances (``<host>/<instance id>``) first seen running at or after ``t``."""
    before: set[str] = set()
    after: set[str] = set()
    for s in procs:
        for iid in s.running:
            if s.t < t:
                before.add(iid)
            elif iid not in before:
                after.add(iid)
    return after


def rate(times: Sequence[float]) -> float:
    """Samples per second over the span of ``times``."""
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return round((len(times) - 1) / (times[-1] - times[0]), 2)


# --- the monitor (threads) ---------------------------------------------------------------


class Peer:
    """A keep-alive HTTPS connection to a daemon's API on the loopback of its host."""

    def __init__(self, mesh: NetMesh, host: Host, port: int, timeout: float = 1.0) -> None:
        self.mesh, self.host, self.port, self.timeout = mesh, host, port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> Any:
        """The JSON body of a 200 answer, else None (and a new connection next time)."""
        mesh, ns, timeout = self.mesh, self.host.name, self.timeout
        if self._conn is None:

            class Conn(http.client.HTTPConnection):
                def connect(self) -> None:
                    s = mesh.socket(ns)
                    s.settimeout(timeout)
                    try:
                        s.connect((self.host, self.port))
                    except OSError:
                        s.close()
                        raise
                    self.sock = mesh.tls.wrap_socket(s)

            self._conn = Conn("127.0.0.1", self.port, timeout=timeout)
        try:
            self._conn.request("GET", path)
            resp = self._conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                return None
            return json.loads(body)
        except (OSError, http.client.HTTPException, ValueError):
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Monitor:
    """Samples the mesh in threads until stopped: /proc at ``PROCS_HZ`` (which instance
    processes run where) and each daemon's own API at ``API_HZ``, one thread per daemon so
    a slow one delays no other (an agent's instance records and epoch, a reconciler's
    lease); every host is reached through its own loopback, so a cut-off host is still
    seen."""

    def __init__(self, mesh: NetMesh, app: str = APP) -> None:
        self.mesh = mesh
        self.app = app
        self.procs: list[ProcSample] = []
        self.agents: list[AgentSample] = []
        self.leases: list[LeaseSample] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._peers: list[Peer] = []

    def __enter__(self) -> Monitor:
        a_port = self.mesh.guide.port("agent", "--api")
        r_port = self.mesh.guide.port("reconciler", "--repo-listen")
        loops: list[tuple[str, Callable[[], None]]] = [("procs", self._procs_loop)]
        for h in self.mesh.role("agent"):
            peer = Peer(self.mesh, h, a_port)
            loops.append((h.short, functools.partial(self._agent_loop, peer)))
            self._peers.append(peer)
        for h in self.mesh.role("reconciler"):
            peer = Peer(self.mesh, h, r_port)
            loops.append((h.short, functools.partial(self._lease_loop, peer)))
            self._peers.append(peer)
        for name, target in loops:
            t = threading.Thread(target=target, name=f"chaos-monitor-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        for p in self._peers:
            p.close()

    def _every(self, hz: float, step: Callable[[], None]) -> None:
        period = 1.0 / hz
        next_at = time.monotonic()
        while not self._stop.is_set():
            step()
            next_at = max(next_at + period, time.monotonic() - period)  # no burst after a stall
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _procs_loop(self) -> None:
        def step() -> None:
            t = time.monotonic()
            running: dict[str, set[int]] = {}
            for p in self.mesh.instance_processes(self.app):
                running.setdefault(f"{p.host}/{p.instance_id}", set()).add(p.pid)
            self.procs.append(ProcSample(t, {k: frozenset(v) for k, v in running.items()}))

        self._every(PROCS_HZ, step)

    def _agent_loop(self, peer: Peer) -> None:
        def step() -> None:
            t = time.monotonic()
            instances: dict[str, Seen] = {}
            for rec in peer.get("/v1/instances") or []:
                if isinstance(rec, dict) and rec.get("app") == self.app:
                    instances[str(rec["instance_id"])] = Seen(
                        str(rec.get("phase", "")),
                        bool(rec.get("healthy")),
                        int(rec.get("restarts") or 0),
                        rec.get("pid"),
                        str(rec.get("version", "")),
                    )
            node = peer.get("/v1/node")
            epoch = node.get("epoch") if isinstance(node, dict) else None
            epoch = epoch if isinstance(epoch, int) else None
            self.agents.append(AgentSample(t, peer.host.short, instances, epoch))

        self._every(API_HZ, step)

    def _lease_loop(self, peer: Peer) -> None:
        def step() -> None:
            t = time.monotonic()
            st = peer.get("/v1/status")
            if isinstance(st, dict):
                sample = LeaseSample(t, peer.host.short, bool(st.get("active")),
                                     int(st.get("epoch") or 0))  # fmt: skip
            else:
                sample = LeaseSample(t, peer.host.short, None)
            self.leases.append(sample)

        self._every(API_HZ, step)

    def rates(self) -> dict[str, float]:
        """Samples per second: /proc, and the slowest agent and reconciler sampler."""
        out = {"procs_hz": rate([s.t for s in self.procs])}
        for kind, samples in (("agents_hz", self.agents), ("reconcilers_hz", self.leases)):
            per: dict[str, list[float]] = {}
            for s in samples:
                per.setdefault(s.host, []).append(s.t)
            out[kind] = min((rate(ts) for ts in per.values()), default=0.0)
        return out


# --- one scenario's instruments -----------------------------------------------------------


@dataclass
class Marks:
    started: float = 0.0
    fault: float | None = None
    ended: float | None = None  # the fault ended (healed, restarted)
    exempt: list[tuple[float, float]] = field(default_factory=list)  # client's entrance down


def garden_major(mesh: NetMesh) -> int:
    """The major number of the app's version in the garden (the harness commits X.0.0)."""
    text = (mesh.work / "garden" / f"{APP}.yaml").read_text(encoding="utf-8")
    m = re.search(r'^\s*version:\s*"(\d+)\.0\.0"', text, flags=re.M)
    if m is None:
        raise AssertionError(f"no X.0.0 version in the garden's {APP}.yaml")
    return int(m.group(1))


class Chaos:
    """The mesh, the garden's version and the checks the scenarios share."""

    def __init__(self, mesh: NetMesh, rps: float = 40.0) -> None:
        self.mesh = mesh
        self.rps = rps
        self.major = garden_major(mesh)  # the garden's version is f"{major}.0.0"

    @property
    def version(self) -> str:
        return f"{self.major}.0.0"

    @property
    def limit(self) -> int:
        """The most instances the app's rollout allows at once: blue-green starts the whole
        new set beside the old."""
        return 2 * self.mesh.instances

    def bump(self) -> float:
        self.major += 1
        return self.mesh.bump(self.version)

    async def do(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def wait(self, cond: Callable[[], object], within: float, what: str) -> float:
        """:meth:`NetMesh.wait` in a thread: poll ``cond`` for ``within`` seconds."""
        return float(await asyncio.to_thread(self.mesh.wait, cond, within, what))

    # -- views ------------------------------------------------------------------------
    def app_instances(self, via: Host | None = None) -> list[Any]:
        status = self.mesh.status(via)
        return [] if status is None else [i for i in status.instances if i.app == APP]

    def agent_with_instance(self) -> Host:
        insts = sorted(self.app_instances(), key=lambda i: i.instance_id)
        if not insts:
            raise AssertionError("no instance of the app to aim at")
        return self.mesh.host_of_node(insts[0].node)

    def lease(self) -> dict[str, tuple[bool, int]]:
        """Reconciler host (short) -> (says it is active, its epoch), from each one's API."""
        port = self.mesh.guide.port("reconciler", "--repo-listen")
        out: dict[str, tuple[bool, int]] = {}
        for h in self.mesh.role("reconciler"):
            code, st = self.mesh.get_json("127.0.0.1", port, "/v1/status", ns=h.name, tls=True)
            if code == 200 and isinstance(st, dict):
                out[h.short] = (bool(st.get("active")), int(st.get("epoch") or 0))
        return out

    def active(self) -> Host | None:
        """The one reconciler that says it is active, if exactly one does."""
        lease = self.lease()
        on = [h for h in self.mesh.role("reconciler") if lease.get(h.short, (False, 0))[0]]
        return on[0] if len(on) == 1 else None

    def final_state(self) -> tuple[bool, str]:
        """Whether what runs equals the garden; the first difference found, if not."""
        mesh = self.mesh
        status = mesh.status()
        if status is None:
            return False, "no agent answers"
        head = git(mesh.work, "rev-parse", "HEAD").strip()
        if status.revision != head:
            return False, f"the status is at {status.revision[:12]}, the garden at {head[:12]}"
        app = status.app(APP)
        if app is None or (app.sync, app.health) != ("Synced", "Healthy"):
            return False, f"the app is {None if app is None else (app.sync, app.health)}"
        insts = [i for i in status.instances if i.app == APP]
        bad = [i for i in insts if (i.version, i.phase, i.healthy) != (self.version, "ready", True)]
        if len(insts) != mesh.instances or bad:
            return False, f"{len(insts)} instances, not as the garden: {bad[:2]}"
        running = {p.instance_id for p in mesh.instance_processes(APP)}
        if running != {i.instance_id for i in insts}:
            return False, f"processes {sorted(running)} vs records {[i.instance_id for i in insts]}"
        for _ in range(5):
            code, body = mesh.edge_get()
            if code != 200 or not isinstance(body, dict) or body.get("version") != self.version:
                return False, f"the edge answered {code} {str(body)[:80]}"
        return True, "equal"

    def formed(self) -> bool:
        """Every running daemon sees every other alive (a restarted daemon's earlier life,
        dead under its old member name, aside)."""
        return self.mesh.formed(strict=False)

    def blocker(self) -> str | None:
        """What stands between the mesh and convergence, or None when converged."""
        mesh = self.mesh
        live = [h for h in mesh.hosts if mesh.running(h)]
        behind = [h for h in live if not mesh.sees_all_alive(h, len(live), strict=False)]
        if behind:
            h = behind[0]
            states: Any = mesh.member_states(h)
            if isinstance(states, dict) and h.role == "agent":
                states = {k.rsplit("-", 1)[-1]: v for k, v in states.items() if v != "alive"}
            return f"membership: {h.short} sees {states}"
        ok, why = self.final_state()
        return None if ok else why

    # -- reset --------------------------------------------------------------------------
    def reset(self, timeout: float = CONVERGE_TIMEOUT_S) -> None:
        """Every rule removed, every daemon running on time, the cluster formed, the final
        state equal to the garden with the instances on different hosts (a new version is
        pushed to spread them, since nothing healthy is ever moved); else AssertionError."""
        mesh = self.mesh
        mesh.heal_all()
        for h in mesh.hosts:
            if mesh.prefixes.get(h.name):  # started with its clock off: back on time
                mesh.stop_daemon(h, signal.SIGTERM)
            if not mesh.running(h):
                mesh.start([h])
        mesh.wait(self.formed, timeout, "the cluster to form (reset)")
        self.wait_final(timeout, "reset")
        mesh.wait(lambda: self.active() is not None, timeout, "one active reconciler (reset)")
        if len(self.placement()) < min(mesh.instances, len(mesh.role("agent"))):
            self.bump()  # a rollout spreads the new set
            self.wait_final(timeout, "reset, spreading the instances")

    def wait_final(self, within: float, what: str) -> None:
        """Wait until the final state equals the garden; AssertionError with the last
        difference seen if it does not within ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            ok, why = self.final_state()
            if ok:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not the garden after {within:g}s: {why}")
            time.sleep(0.1)

    def placement(self) -> dict[str, int]:
        """Host (short) -> how many instances of the app run there (from /proc)."""
        out: dict[str, int] = {}
        for iid in {(p.host, p.instance_id) for p in self.mesh.instance_processes(APP)}:
            out[iid[0]] = out.get(iid[0], 0) + 1
        return dict(sorted(out.items()))

    def run(self, name: str, what: str) -> Run:
        return Run(self, name, what)


class Run:
    """One scenario's load (from the hub, which no fault touches) and monitor, and its
    figures. ``async with chaos.run(name, what) as r: ...; r.ended(); await r.converge()``."""

    def __init__(self, chaos: Chaos, name: str, what: str) -> None:
        self.chaos = chaos
        self.name = name
        self.what = what
        self.marks = Marks()
        self.monitor = Monitor(chaos.mesh)
        self.load = Load(
            f"{chaos.mesh.edge_url}/{APP}/hello", rps=chaos.rps, timeout_s=5.0,
            connect=chaos.mesh.socket_factory(),
        )  # fmt: skip
        self.heal_s: float | None = None
        self.final: tuple[bool, str] = (False, "not checked")
        self.exempt_ids: set[str] = set()
        self.extra: dict[str, Any] = {}
        self.extra_targets: dict[str, tuple[str, float]] = {}
        self.partition = False
        self.placement_before: dict[str, int] = {}

    async def __aenter__(self) -> Run:
        self.placement_before = await asyncio.to_thread(self.chaos.placement)
        self.monitor.__enter__()
        await self.load.__aenter__()
        self.marks.started = time.monotonic()
        await asyncio.sleep(1.0)  # a baseline of answers before the fault
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if e is None:
                await asyncio.sleep(0.5)
        finally:
            await self.load.stop()
            self.monitor.__exit__()

    def fault(self) -> None:
        self.marks.fault = time.monotonic()

    def ended(self) -> None:
        self.marks.ended = time.monotonic()

    async def converge(self, within: float = CONVERGE_TIMEOUT_S) -> None:
        """Wait until the cluster is formed and the final state equals the garden: heal_s
        counts from :meth:`ended` (0.1 s resolution); None if not within ``within`` s."""
        start = self.marks.ended if self.marks.ended is not None else time.monotonic()
        deadline = time.monotonic() + within
        waited: dict[str, float] = {}  # what was not yet so -> when it was last seen
        while time.monotonic() < deadline:
            blocker = await asyncio.to_thread(self.chaos.blocker)
            if blocker is None:
                self.heal_s = round(time.monotonic() - start, 2)
                break
            waited[blocker] = time.monotonic()
            await asyncio.sleep(0.1)
        self.final = await asyncio.to_thread(self.chaos.final_state)
        # the last few things convergence waited for, and until when (s after the fault ended)
        last = sorted(waited.items(), key=lambda kv: kv[1])[-3:]
        self.extra["waited_for"] = {k[:160]: round(t - start, 2) for k, t in last}

    def figures(self) -> dict[str, Any]:
        mon = self.monitor
        outcomes = self.load.result.outcomes

        def exempt(o: Outcome) -> bool:
            return any(a <= o.at < b for a, b in self.marks.exempt)

        in_exempt = [o for o in outcomes if exempt(o)]
        counted = [o for o in outcomes if not exempt(o)]
        restarts = healthy_restarts(mon.agents, mon.procs, self.exempt_ids)
        most = max_instances(mon.procs)
        limit = self.chaos.limit
        out: dict[str, Any] = {
            "what": self.what,
            "placement_before": self.placement_before,
            "requests": len(outcomes),
            "failed_requests": sum(1 for o in counted if o.status != 200),
            "failed_by_kind": failures_by_kind(counted),
            "fault_s": (
                round(self.marks.ended - self.marks.fault, 2)
                if self.marks.fault is not None and self.marks.ended is not None
                else None
            ),  # how long the fault lasted (it ends when the harness heals or restarts)
            "heal_s": self.heal_s,
            "max_instances": most,
            "limit": limit,
            "over_limit_instances": max(0, most - limit),
            "healthy_restarts": sum(restarts.values()),
            "restarted": sorted(restarts)[:5],
            "final_state_equals_garden": self.final[0],
            "final_state": self.final[1],
            "lease": {
                "holders": holders(mon.leases),
                "moves": max(0, len(holders(mon.leases)) - 1),
                "both_active_samples": both_active(mon.leases),
            },
            "agent_epoch_regressions": epoch_regressions(mon.agents),
            "samples": {
                "procs": len(mon.procs),
                "agents": len(mon.agents),
                "reconcilers": len(mon.leases),
                **mon.rates(),
            },
        }
        if self.marks.exempt:
            out["exempt_failed_requests"] = sum(1 for o in in_exempt if o.status != 200)
            out["exempt_windows_s"] = [round(b - a, 2) for a, b in self.marks.exempt]
        out.update(self.extra)
        targets: dict[str, tuple[str, float]] = {
            "failed_requests": ("==", 0),
            "over_limit_instances": ("==", 0),
            "healthy_restarts": ("==", 0),
            "agent_epoch_regressions": ("==", 0),
        }
        if self.partition:
            targets["heal_s"] = ("<=", 5.0)
        targets.update(self.extra_targets)
        evaluated = evaluate_targets(targets, out)
        evaluated["final_state_equals_garden"] = {
            "value": self.final[0], "target": "== true", "met": self.final[0] is True
        }  # fmt: skip
        out["targets"] = evaluated
        out["all_targets_met"] = all(t["met"] for t in evaluated.values())
        return out


# --- the scenarios -----------------------------------------------------------------------


def dead_in_view(mesh: NetMesh, observer: Host, victim: Host) -> bool:
    states = mesh.member_states(observer)
    return isinstance(states, dict) and states.get(victim.name) in ("dead", None)


def replaced_without(c: Chaos, victim: Host, observer: Host) -> bool:
    """``observer`` sees the app's instances all ready on hosts other than ``victim``."""
    ready = [i for i in c.app_instances(observer) if i.node != victim.name and i.phase == "ready"]
    return len(ready) == c.mesh.instances


async def host_isolated(c: Chaos) -> dict[str, Any]:
    mesh = c.mesh
    victim = c.agent_with_instance()
    observer = next(h for h in mesh.role("agent") if h is not victim)
    what = (
        f"agent host {victim.short} (with an instance) cut off until declared dead and its "
        "instance replaced; then healed"
    )
    async with c.run("host_isolated", what) as r:
        r.partition = True
        await c.do(mesh.partition, victim)
        r.fault()
        await c.wait(lambda: dead_in_view(mesh, observer, victim), 30, f"{victim.short} dead")
        await c.wait(lambda: replaced_without(c, victim, observer), 30, "its instance replaced")
        await c.do(mesh.heal, victim)
        r.ended()
        await r.converge()
    return r.figures()


async def split_halves(c: Chaos) -> dict[str, Any]:
    mesh = c.mesh
    near_agent = next(
        (h for h in mesh.role("agent") if any(i.node == h.name for i in c.app_instances())),
        mesh.role("agent")[0],
    )
    active = c.active()
    if active is None:
        raise AssertionError("no single active reconciler before the split")
    standby = next(h for h in mesh.role("reconciler") if h is not active)
    near = [mesh.edge, near_agent, standby]
    far = [h for h in mesh.hosts if h not in near]
    what = (
        f"split: {{{', '.join(h.short for h in near)}}} | {{{', '.join(h.short for h in far)}}} "
        "(the edge's half has one agent with an instance and the standby reconciler); held "
        "until the edge's half has its own active reconciler and the app ready; then healed"
    )
    async with c.run("split_halves", what) as r:
        r.partition = True
        await c.do(mesh.split, near, far)
        r.fault()
        await c.wait(lambda: dead_in_view(mesh, near_agent, active), 30, "the halves to part")
        await c.wait(lambda: c.lease().get(standby.short, (False, 0))[0], 30, "near half lease")
        await c.wait(
            lambda: len([i for i in c.app_instances(near_agent) if i.node == near_agent.name
                         and i.phase == "ready"]) == mesh.instances,
            30, "the app ready in the edge's half",
        )  # fmt: skip
        await c.do(mesh.heal_all)
        r.ended()
        await r.converge()
    return r.figures()


async def one_way_partition(c: Chaos) -> dict[str, Any]:
    mesh = c.mesh
    victim = c.agent_with_instance()
    observer = next(h for h in mesh.role("agent") if h is not victim)
    what = (
        f"agent host {victim.short} (with an instance) hears nothing (inbound dropped, its "
        "own packets still go out) until declared dead elsewhere; then healed"
    )
    async with c.run("one_way_partition", what) as r:
        r.partition = True
        await c.do(mesh.partition, victim, "in")
        r.fault()
        await c.wait(lambda: dead_in_view(mesh, observer, victim), 30, f"{victim.short} dead")
        await c.wait(lambda: replaced_without(c, victim, observer), 30, "its instance replaced")
        await c.do(mesh.heal, victim)
        r.ended()
        await r.converge()
    return r.figures()


async def reconciler_isolated(c: Chaos) -> dict[str, Any]:
    """The lease under partition: see the module docstring."""
    mesh = c.mesh
    old = c.active()
    if old is None:
        raise AssertionError("no single active reconciler")
    new = next(h for h in mesh.role("reconciler") if h is not old)
    what = (
        f"the active reconciler {old.short} cut off from every host (not from Git); the lease "
        f"moves to {new.short}, which completes a pushed rollout; then healed"
    )
    async with c.run("reconciler_isolated", what) as r:
        r.partition = True
        await c.do(mesh.partition, old)
        r.fault()
        await c.wait(lambda: c.lease().get(new.short, (False, 0))[0], 30, "the lease to move")
        new_epoch = c.lease()[new.short][1]
        await c.do(c.bump)
        await c.wait(lambda: _rolled_out(c), 60, f"{c.version} rolled out by {new.short}")
        old_epoch = c.lease().get(old.short, (False, 0))[1]
        await c.do(mesh.heal, old)
        r.ended()
        healed = time.monotonic()
        await r.converge()
        await c.wait(lambda: not c.lease().get(old.short, (True, 0))[0], 30, "the old to stand by")
        stepped_down = time.monotonic() - healed
    r.extra.update(
        old_epoch=old_epoch,
        new_epoch=new_epoch,
        old_holder_active_after_heal_s=round(stepped_down, 2),
        agents_behind_new_epoch_after_heal=behind(r.monitor.agents, new_epoch, healed),
        flapped_instances=len(started_after(r.monitor.procs, healed)),
    )
    r.extra_targets.update(
        agents_behind_new_epoch_after_heal=("==", 0),
        flapped_instances=("==", 0),
        new_epoch=(">=", old_epoch + 1),
    )
    return r.figures()


def _rolled_out(c: Chaos) -> bool:
    insts = c.app_instances()
    return len(insts) == c.mesh.instances and all(
        i.version == c.version and i.phase == "ready" for i in insts
    )


async def _loss_rollout(c: Chaos, percent: int) -> dict[str, Any]:
    mesh = c.mesh
    what = (
        f"{percent}% of the packets dropped at random on every host's link (not those of the "
        "client in the hub) while a rollout is pushed and completed; then the loss removed"
    )
    async with c.run(f"loss_{percent}_rollout", what) as r:
        for h in mesh.hosts:
            await c.do(lambda h=h: mesh.loss(h, percent, spare_hub=True))
        r.fault()
        pushed = await c.do(c.bump)
        rolled = None
        with contextlib.suppress(AssertionError):
            await c.wait(lambda: _rolled_out(c), 90, f"{c.version} rolled out under loss")
            rolled = round(time.monotonic() - pushed, 2)
        await c.do(mesh.heal_all)
        r.ended()
        await r.converge()
        r.extra["rollout_under_loss_s"] = rolled
    return r.figures()


async def loss_10_rollout(c: Chaos) -> dict[str, Any]:
    return await _loss_rollout(c, 10)


async def loss_30_rollout(c: Chaos) -> dict[str, Any]:
    return await _loss_rollout(c, 30)


def _mid_rollout(c: Chaos) -> bool:
    return {i.version for i in c.app_instances()} >= {f"{c.major - 1}.0.0", c.version}


async def agent_restart_mid_rollout(c: Chaos) -> dict[str, Any]:
    mesh = c.mesh
    what = "a rollout pushed; mid-rollout an agent with an instance restarted (SIGTERM, start)"
    async with c.run("agent_restart_mid_rollout", what) as r:
        await c.do(c.bump)
        await c.wait(lambda: _mid_rollout(c), 30, "the rollout to start")
        victim = c.agent_with_instance()
        r.fault()
        await c.do(mesh.stop_daemon, victim, signal.SIGTERM)
        await c.do(mesh.start, [victim])
        r.ended()
        r.extra["restarted_agent"] = victim.short
        await r.converge()
    return r.figures()


async def clock_ahead_30s(c: Chaos) -> dict[str, Any]:
    """The lease under clock skew: see the module docstring."""
    mesh = c.mesh
    active = c.active()
    if active is None:
        raise AssertionError("no single active reconciler")
    skewed = next(h for h in mesh.role("reconciler") if h is not active)
    what = (
        f"the standby reconciler {skewed.short} restarted with its clock {CLOCK_AHEAD_S:g} s "
        f"ahead; a rollout pushed; mid-rollout the active {active.short} killed (-9) and "
        "started again, so the fast clock takes the rollout over"
    )
    async with c.run("clock_ahead_30s", what) as r:
        await c.do(mesh.stop_daemon, skewed, signal.SIGTERM)
        # (the next reset starts it again on time)
        await c.do(lambda: mesh.start([skewed], prefix=clock_ahead(CLOCK_AHEAD_S)))
        r.fault()
        await c.wait(c.formed, 30, "the skewed reconciler to join")
        await c.wait(lambda: skewed.short in c.lease(), 30, "the skewed reconciler's API")
        joined = time.monotonic()
        await c.do(c.bump)
        await c.wait(lambda: _mid_rollout(c), 30, "the rollout to start")
        before_kill = time.monotonic()
        await c.do(mesh.stop_daemon, active, signal.SIGKILL)
        await c.do(mesh.start, [active])
        r.ended()
        await r.converge()
    leases = r.monitor.leases
    r.extra.update(
        skewed=skewed.short,
        lease_moves_before_the_kill=max(0, len(holders(leases, end=before_kill)) - 1),
        both_active_samples_before_the_kill=both_active(leases, joined, before_kill),
    )
    r.extra_targets.update(
        lease_moves_before_the_kill=("==", 0), both_active_samples_before_the_kill=("==", 0)
    )
    return r.figures()


async def kill9_instance(c: Chaos) -> dict[str, Any]:
    mesh = c.mesh
    procs = sorted(mesh.instance_processes(APP), key=lambda p: p.instance_id)
    if not procs:
        raise AssertionError("no instance process to kill")
    victim = procs[0]
    async with c.run("kill9_instance", f"instance {victim.instance_id} killed (-9)") as r:
        r.exempt_ids.add(victim.instance_id)
        r.fault()
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.pid, signal.SIGKILL)
        r.ended()
        await r.converge()
    return r.figures()


async def kill9_agent(c: Chaos) -> dict[str, Any]:
    mesh = c.mesh
    victim = c.agent_with_instance()
    what = f"agent daemon on {victim.short} (with an instance) killed (-9), started again"
    async with c.run("kill9_agent", what) as r:
        r.fault()
        await c.do(mesh.stop_daemon, victim, signal.SIGKILL)
        await c.do(mesh.start, [victim])
        r.ended()
        await r.converge()
    return r.figures()


async def kill9_edge(c: Chaos) -> dict[str, Any]:
    mesh = c.mesh
    what = (
        "the edge killed (-9), started again; requests sent while it was down are counted "
        "apart (exempt: the client's only entrance was gone)"
    )
    async with c.run("kill9_edge", what) as r:
        r.fault()
        down = time.monotonic()
        await c.do(mesh.stop_daemon, mesh.edge, signal.SIGKILL)
        await c.do(mesh.start, [mesh.edge])
        await c.wait(lambda: mesh.edge_get(timeout=0.5)[0] == 200, 30, "the edge to answer")
        r.marks.exempt.append((down, time.monotonic()))
        r.ended()
        await r.converge()
    return r.figures()


async def kill9_reconciler(c: Chaos) -> dict[str, Any]:
    mesh = c.mesh
    active = c.active()
    if active is None:
        raise AssertionError("no single active reconciler")
    what = (
        f"a rollout pushed; mid-rollout the active reconciler {active.short} killed (-9), "
        "started again"
    )
    async with c.run("kill9_reconciler", what) as r:
        await c.do(c.bump)
        await c.wait(lambda: _mid_rollout(c), 30, "the rollout to start")
        r.fault()
        await c.do(mesh.stop_daemon, active, signal.SIGKILL)
        await c.do(mesh.start, [active])
        r.ended()
        await r.converge()
    return r.figures()


Scenario = Callable[[Chaos], Awaitable[dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {
    "host_isolated": host_isolated,
    "split_halves": split_halves,
    "one_way_partition": one_way_partition,
    "reconciler_isolated": reconciler_isolated,
    "loss_10_rollout": loss_10_rollout,
    "loss_30_rollout": loss_30_rollout,
    "agent_restart_mid_rollout": agent_restart_mid_rollout,
    "clock_ahead_30s": clock_ahead_30s,
    "kill9_instance": kill9_instance,
    "kill9_agent": kill9_agent,
    "kill9_edge": kill9_edge,
    "kill9_reconciler": kill9_reconciler,
}


# --- the whole matrix ----------------------------------------------------------------------


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextlib.contextmanager
def six_hosts(rps: float, profile: str = "lan", keep: Path | None = None) -> Iterator[Chaos]:
    """A six-host mesh with the fabric ``profile``, up and settled (``keep``: its files are
    kept in a new directory below it, and the daemons log at INFO)."""
    workdir = None if keep is None else Path(tempfile.mkdtemp(prefix="chaos-", dir=keep))
    mesh = NetMesh(
        workdir=workdir, poll_interval=1.0, warmup_s=0.5, profile=profile,
        verbose=keep is not None,
    )  # fmt: skip
    try:
        mesh.bring_up()
        chaos = Chaos(mesh, rps)
        chaos.reset()
        yield chaos
    finally:
        mesh.close()


async def run_one(scenario: Scenario, chaos: Chaos) -> dict[str, Any]:
    return await scenario(chaos)


def matrix(
    names: Sequence[str],
    rps: float,
    log: Callable[[str], None],
    profile: str = "lan",
    keep: Path | None = None,
) -> dict[str, Any]:
    """Each scenario in turn on one mesh (a new mesh after one that could not be reset)."""
    out: dict[str, Any] = {}
    stack = contextlib.ExitStack()
    chaos: Chaos | None = None
    try:
        for name in names:
            if chaos is None:
                chaos = stack.enter_context(six_hosts(rps, profile, keep))
            log(f"chaos: {name} (load {loadavg()})...")
            t0 = time.monotonic()
            fig: dict[str, Any]
            try:
                fig = asyncio.run(run_one(SCENARIOS[name], chaos))
                fig["error"] = None
            except AssertionError as exc:
                fig = {"error": str(exc).splitlines()[0], "all_targets_met": False}
            fig["scenario_s"] = round(time.monotonic() - t0, 1)
            out[name] = fig
            verdict = "met" if fig["all_targets_met"] else f"NOT met {fig['error'] or ''}"
            log(f"chaos: {name}: {verdict} ({fig['scenario_s']} s)")
            try:
                chaos.reset()
            except AssertionError as exc:
                log(f"chaos: reset after {name} failed ({str(exc).splitlines()[0]}); new mesh")
                stack.close()
                stack = contextlib.ExitStack()
                chaos = None
    finally:
        stack.close()
    return out


def optional(module: str, log: Callable[[str], None]) -> dict[str, Any]:
    """``bench.<module>.run()``'s result, or why there is none."""
    try:
        mod = importlib.import_module(f"bench.{module}")
    except ImportError as exc:
        return {"error": f"bench.{module} is not available: {exc}", "all_targets_met": False}
    log(f"chaos: bench.{module}.run() (its own defaults)...")
    try:
        result = mod.run(log=log)
    except Exception as exc:  # one bench's failure is a figure of the matrix, not a crash
        return {
            "error": f"bench.{module}.run() failed: {type(exc).__name__}: {exc}",
            "all_targets_met": False,
        }
    except KeyboardInterrupt:  # the matrix's figures are still printed
        return {"error": f"bench.{module}.run() interrupted", "all_targets_met": False}
    return dict(result)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--rps", type=float, default=40.0, help="GETs per second through the edge")
    p.add_argument(
        "--profile", choices=("lan", "local"), default="lan",
        help="the fabric's timers: the guide's lan (default) or the tests' fast local",
    )  # fmt: skip
    p.add_argument("--skip-sim-vs-real", action="store_true", help="leave out bench.simreal")
    p.add_argument("--skip-scale", action="store_true", help="leave out bench.scale")
    p.add_argument(
        "--keep", type=Path,
        help="keep each mesh's files below this directory, the daemons logging at INFO",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"bench.chaos: unknown scenario(s): {', '.join(unknown)} "
              f"(known: {', '.join(SCENARIOS)})", file=sys.stderr)  # fmt: skip
        return 2
    reason = skip_reason()
    if reason is not None:
        print(f"bench.chaos: cannot run here: {reason}", file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "load_before": loadavg(), "cores": os.cpu_count(), "rps": args.rps,
        "profile": args.profile,
    }  # fmt: skip
    t0 = time.monotonic()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    result.update(matrix(names, args.rps, log, args.profile, args.keep))
    result["matrix_s"] = round(time.monotonic() - t0, 1)
    result["load_after"] = loadavg()
    if not args.skip_sim_vs_real:
        result["sim_vs_real"] = optional("simreal", log)
    if not args.skip_scale:
        result["scale"] = optional("scale", log)
    parts = [v for v in result.values() if isinstance(v, dict) and "all_targets_met" in v]
    result["all_targets_met"] = bool(parts) and all(v["all_targets_met"] for v in parts)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {json.dumps(v)}")
    return 0 if result["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
