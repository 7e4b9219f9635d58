"""The simulator checked against real processes on the same scenario.

``python -m bench.simreal [--members 32] [--loss 0 --loss 0.1 --loss 0.3] [--seeds 10]
[--soak-minutes 10] [--profile lan] [--keep-events DIR] [--json]``

Real side: ``members`` processes (``python -m reconciler.fabric.member``), each alone in a
network namespace with one veth on a bridge (``10.78.0.<i>``), keyed (AES-GCM), the same
:class:`FabricConfig` profile as the simulator. Loss is an nftables rule on every member's
veth, both directions, UDP and TCP alike (``numgen random`` drop: the kernel has no
netem); since a packet crosses two veths, each drops ``1 - sqrt(1 - P)`` so that a packet
from one member to another is lost with probability ``P``, the simulator's ``loss``. Each
member logs what it sees as JSON lines stamped with the wall clock (``--events``).

Simulated side: :class:`SimCluster` (the real engine on virtual time and the in-memory
network), ``seeds`` runs, median and worst of each figure.

Scenario, per loss level: the cluster forms (everyone sees everyone alive or suspect),
the loss is switched on (the simulator has it from the start), ``warmup_s`` later
``keys`` (5) members publish a key each, one after the other once the previous one is
everywhere -> dissemination time to 50%, 99% and 100% of the others, each the median over
the keys (below 100 members 99% is all of them); then one member is killed (``kill -9``)
-> detection time, first and last (when each live member marks it dead); false positives:
pairs (observer, live member) ever marked dead from the loss on.

Printed: real, simulated (median / worst) and the ratio real / median for detection
first/last and dissemination t_99/t_100; a target (bench/targets.py) wants every ratio
within [0.5, 2]. ``--soak-minutes`` adds a long real run at 10% loss counting
false positives (target 0).

The CPU the members used (from /proc), the machine's busy fraction and the load average
before/after are printed with each real run: 32 processes share this machine's cores.

Needs root, ``ip netns`` and ``nft`` (:func:`skip_reason`); every namespace is named
``mh<pid>-sr...`` so :func:`bench.netmesh.sweep` removes what a crashed run left, and
:meth:`RealCluster.close` removes everything (processes, namespaces, temp dir) however
the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import netmesh
from bench.targets import Targets
from bench.targets import evaluate as evaluate_targets
from reconciler.fabric.api import Change, Member
from reconciler.fabric.config import FabricConfig
from reconciler.fabric.keyring import Keyring
from reconciler.fabric.sim import SimCluster

ROOT = Path(__file__).resolve().parents[1]
KEY_PREFIX = "bench/key"
PORT = 7946
SUBNET = "10.78.0"  # a test net of our own (the hosts harness uses 10.77.x)
NFT_TABLE = "myco_simreal"
#: Compared figures: dissemination to 99% / 100% of the others, detection first / last.
COMPARED = ("t_99_s", "t_100_s", "detect_first_s", "detect_last_s")
RATIO_BOUNDS = (0.5, 2.0)
#: Simulated network: one hop over a veth and a bridge is ~0.05 ms; the rest of the delay
#: a packet sees on the real side is the receiver's wake-up, which is not modelled.
SIM_LATENCY_S = 0.001
SIM_JITTER_S = 0.001


# --- what the members saw: the same bookkeeping for both sides ------------------------


@dataclass
class Timeline:
    """Events of one scenario on one clock (seconds), and the figures they give.

    Fed with :meth:`member` and :meth:`change` by either side. Events before ``since``
    (the cluster forming) only update the states; a key's publish time is when its
    publisher saw its own change; ``killed_at`` is set by the driver just before the kill.
    """

    names: list[str]
    victim: str
    publishers: dict[str, str] = field(default_factory=dict)  # key -> its publisher
    since: float = math.inf
    killed_at: float | None = None
    states: dict[str, dict[str, str]] = field(default_factory=dict)  # observer -> target -> state
    published_at: dict[str, float] = field(default_factory=dict)  # key -> when
    key_seen: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> observer -> t
    dead_seen: dict[str, float] = field(default_factory=dict)  # observer -> victim dead
    #: (observer, live member) -> when it was first marked dead: false positives
    false_dead: dict[tuple[str, str], float] = field(default_factory=dict)
    suspected: set[tuple[str, str]] = field(default_factory=set)  # live members, ever
    suspect_events: int = 0  # times a live member was marked suspect, by anyone

    def member(self, observer: str, t: float, target: str, state: str) -> None:
        self.states.setdefault(observer, {})[target] = state
        if t < self.since or target == observer:
            return
        victim_gone = target == self.victim and self.killed_at is not None and t >= self.killed_at
        if victim_gone:
            if state == "dead":
                self.dead_seen.setdefault(observer, t)
        elif state == "dead":
            self.false_dead.setdefault((observer, target), t)
        elif state == "suspect":
            self.suspected.add((observer, target))
            self.suspect_events += 1

    def change(self, observer: str, t: float, owner: str, key: str, deleted: bool) -> None:
        if deleted or self.publishers.get(key) != owner:
            return
        self.key_seen.setdefault(key, {}).setdefault(observer, t)
        if observer == owner:
            self.published_at.setdefault(key, t)

    def formed(self) -> bool:
        """Every member knows every other as alive (or suspect: under loss someone always
        is, for a moment)."""
        everyone = set(self.names)
        return all(
            {t for t, s in self.states.get(o, {}).items() if s in ("alive", "suspect")} | {o}
            >= everyone
            for o in self.names
        )

    def spread(self, key: str) -> bool:
        seen = self.key_seen.get(key, {})
        return all(n in seen for n in self.names if n != self.victim or self.killed_at is None)

    def detected(self) -> bool:
        return all(n in self.dead_seen for n in self.names if n != self.victim)

    def key_figures(self, key: str) -> tuple[float | None, float | None, float | None]:
        """(t_50, t_99, t_100) of one key among the other members."""
        t0 = self.published_at.get(key)
        if t0 is None:
            return None, None, None
        owner = self.publishers[key]
        xs = sorted(t - t0 for n, t in self.key_seen.get(key, {}).items() if n != owner)
        others = len(self.names) - 1
        return _nth(xs, 0.5, others), _nth(xs, 0.99, others), _nth(xs, 1.0, others)

    def figures(self) -> dict[str, Any]:
        """Dissemination t_50/t_99/t_100 (each the median over the keys; None when a key
        did not get there), detection first/last (None when it did not happen), false
        positives (pairs) and suspicions of live members (pairs)."""
        per_key = [self.key_figures(k) for k in self.publishers]
        det: list[float] = []
        if self.killed_at is not None:
            k = self.killed_at
            det = sorted(t - k for n, t in self.dead_seen.items() if n != self.victim)
        return {
            "t_50_s": _median([f[0] for f in per_key]),
            "t_99_s": _median([f[1] for f in per_key]),
            "t_100_s": _median([f[2] for f in per_key]),
            "t_100_per_key_s": [f[2] for f in per_key],
            "detect_first_s": round(det[0], 3) if det else None,
            "detect_last_s": _nth(det, 1.0, len(self.names) - 1),
            "false_positives": len(self.false_dead),
            "suspicions": len(self.suspected),
            "suspect_events": self.suspect_events,
        }


def _nth(xs: Sequence[float], fraction: float, of: int) -> float | None:
    """The time by which ``fraction`` of ``of`` members got there (xs sorted), or None."""
    need = max(1, math.ceil(fraction * of))
    return round(xs[need - 1], 3) if len(xs) >= need else None


def _median(xs: Sequence[float | None]) -> float | None:
    """Median with None as infinitely late (None if that is where the median falls)."""
    if not xs:
        return None
    med = statistics.median([math.inf if x is None else x for x in xs])
    return None if math.isinf(med) else round(med, 3)


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median and worst (largest) of each figure over simulated runs; a run that did not
    finish counts as infinitely slow (so a median over mostly unfinished runs is None)."""
    out: dict[str, Any] = {"seeds": len(runs)}
    for name in ("t_50_s", *COMPARED, "false_positives", "suspicions"):
        xs = [math.inf if r.get(name) is None else float(r[name]) for r in runs]
        med, worst = statistics.median(xs), max(xs)
        out[name] = {
            "median": None if math.isinf(med) else round(med, 3),
            "worst": None if math.isinf(worst) else round(worst, 3),
            "best": round(min(xs), 3) if not math.isinf(min(xs)) else None,
        }
    return out


def ratios(real: Mapping[str, Any], sim: Mapping[str, Any]) -> dict[str, float | None]:
    """real / simulated median for each compared figure (None if either is missing)."""
    out: dict[str, float | None] = {}
    for name in COMPARED:
        r, s = real.get(name), sim.get(name, {}).get("median")
        out[name] = round(r / s, 2) if r is not None and s else None
    return out


def per_interface_drop(loss: float) -> float:
    """The drop probability on each of the two veths a packet crosses so that it is lost
    end to end with probability ``loss``."""
    return 1.0 - math.sqrt(1.0 - loss)


# --- the simulator ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    members: int = 32
    loss: float = 0.0
    profile: str = "lan"
    warmup_s: float = 5.0
    form_within_s: float = 60.0
    spread_within_s: float = 60.0
    detect_within_s: float = 120.0
    #: Keys published one after the other (each once the previous one reached everyone),
    #: by members spread over the list: one key's time to reach the last member varies
    #: several-fold from run to run, the median of a few much less.
    keys: int = 5

    def names(self) -> list[str]:
        return [f"m{i:03d}" for i in range(self.members)]

    def timeline(self) -> Timeline:
        """An empty timeline: the last member is the victim, the keys' publishers are
        spread over the others."""
        names = self.names()
        publishers = {
            f"{KEY_PREFIX}{j}": names[j * (self.members - 1) // self.keys] for j in range(self.keys)
        }
        return Timeline(names, victim=names[-1], publishers=publishers)


def simulate(sc: Scenario, seed: int) -> dict[str, Any]:
    """One simulated run of the scenario; its figures."""
    cfg = FabricConfig.profile(sc.profile)
    sim = SimCluster(
        cfg, seed=seed, latency=SIM_LATENCY_S, jitter=SIM_JITTER_S, loss=sc.loss,
        keyring=Keyring.generate(),
    )  # fmt: skip
    sim.record = False
    names = sc.names()
    tl = sc.timeline()

    def on_member(observer: str, m: Member) -> None:
        tl.member(observer, sim.clock.now(), m.name, m.state)

    def on_change(observer: str, c: Change) -> None:
        tl.change(observer, sim.clock.now(), c.owner, c.key, c.value is None)

    sim.on_member = on_member
    sim.on_change = on_change
    seed_addr = sim.add(names[0]).addr
    for name in names[1:]:
        sim.add(name, seeds=[seed_addr])
    if not sim.run_until(tl.formed, within=sc.form_within_s):
        return {"seed": seed, "error": "the simulated cluster did not form"}
    tl.since = sim.clock.now()
    sim.run(sc.warmup_s)
    for key, publisher in tl.publishers.items():
        sim.nodes[publisher].publish(key, {"v": 1})
        if not sim.run_until(functools.partial(tl.spread, key), within=sc.spread_within_s):
            break
    else:
        tl.killed_at = sim.clock.now()
        sim.kill(tl.victim)
        sim.run_until(tl.detected, within=sc.detect_within_s, step=0.02)
    return {"seed": seed, **tl.figures()}


def simulate_soak(sc: Scenario, seed: int, minutes: float) -> dict[str, int]:
    """False positives and suspicions of a simulated cluster left alone for ``minutes``
    under loss (-1: it did not form)."""
    sim = SimCluster(
        FabricConfig.profile(sc.profile), seed=seed, latency=SIM_LATENCY_S,
        jitter=SIM_JITTER_S, loss=sc.loss, keyring=Keyring.generate(),
    )  # fmt: skip
    sim.record = False
    names = sc.names()
    tl = Timeline(names, victim="")
    sim.on_member = lambda o, m: tl.member(o, sim.clock.now(), m.name, m.state)
    seed_addr = sim.add(names[0]).addr
    for name in names[1:]:
        sim.add(name, seeds=[seed_addr])
    if not sim.run_until(tl.formed, within=sc.form_within_s):
        return {"false_positives": -1, "suspect_events": -1}
    tl.since = sim.clock.now()
    sim.run(minutes * 60.0)
    return {"false_positives": len(tl.false_dead), "suspect_events": tl.suspect_events}


# --- the real processes -----------------------------------------------------------------


def skip_reason() -> str | None:
    """Why the real side cannot run here, or None."""
    return netmesh.skip_reason()


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot."""
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in cpu]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return sum(ticks) - idle, sum(ticks)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


class Meter:
    """CPU used by the members and by the whole machine between two moments."""

    def __init__(self, pids: Callable[[], Sequence[int]]) -> None:
        self._pids = pids
        self._start = self._sample()

    def _sample(self) -> tuple[float, dict[int, int], tuple[int, int]]:
        return time.monotonic(), {p: _cpu_ticks(p) for p in self._pids()}, _machine_busy()

    def read(self) -> dict[str, float]:
        t0, procs0, (busy0, total0) = self._start
        t1, procs1, (busy1, total1) = self._sample()
        hz = os.sysconf("SC_CLK_TCK")
        used = [max(0, procs1.get(p, 0) - c) / hz for p, c in procs0.items() if p in procs1]
        wall = max(t1 - t0, 1e-9)
        return {
            "wall_s": round(wall, 2),
            "members_cpu_s": round(sum(used), 2),
            "members_cores": round(sum(used) / wall, 2),
            "busiest_member_cpu_pct": round(100 * max(used, default=0.0) / wall, 1),
            "machine_busy_pct": round(100 * (busy1 - busy0) / max(1, total1 - total0), 1),
        }


class RealCluster:
    """``members`` member processes, each in its own namespace on one bridge.

    ``with RealCluster(n, profile) as rc: rc.start(); rc.loss(0.1); ...``; :meth:`close`
    (also on any error) kills the processes and deletes the namespaces and the temp dir.
    """

    def __init__(self, members: int, profile: str = "lan", keep: Path | None = None) -> None:
        if not 3 <= members <= 250:
            raise ValueError("members: 3..250 (one /24 on the bridge)")
        self.tag = f"{netmesh.PREFIX}{os.getpid()}"
        self.hub = f"{self.tag}-srhub"
        self.names = [f"m{i:03d}" for i in range(members)]
        self.ns = {n: f"{self.tag}-sr{i}" for i, n in enumerate(self.names)}
        self.addr = {n: f"{SUBNET}.{i + 1}" for i, n in enumerate(self.names)}
        self.veth = {n: f"{self.tag}s{i}" for i, n in enumerate(self.names)}
        self.profile = profile
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-simreal-"))
        self.keep = keep  # where each run's event logs are copied, if anywhere
        self.key_file = self.workdir / "gossip.key"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._made: list[str] = []
        self._offsets: dict[str, int] = {}
        self._partial: dict[str, bytes] = {}
        self.timeline: Timeline | None = None
        self.lag_max_ms = 0.0

    def __enter__(self) -> RealCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- network ----------------------------------------------------------------------
    def setup(self) -> None:
        reason = skip_reason()
        if reason is not None:
            raise RuntimeError(reason)
        netmesh.sweep()  # what crashed earlier runs of any harness left
        Keyring.generate().save(self.key_file)
        self._add_ns(self.hub)
        netmesh.run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        netmesh.run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for n in self.names:
            self._add_ns(self.ns[n])
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._wire, self.names))
        self._batch(
            self.hub,
            [f"link set {self._outer(n)} master br0" for n in self.names]
            + [f"link set {self._outer(n)} up" for n in self.names],
        )

    def _add_ns(self, ns: str) -> None:
        netmesh.run("ip", "netns", "add", ns)
        self._made.append(ns)

    def _outer(self, name: str) -> str:
        return f"{self.veth[name]}o"  # its end in the hub

    def _wire(self, name: str) -> None:
        # The veth is made inside the member's namespace: the root namespace never holds it.
        inner, outer = self.veth[name], self._outer(name)
        self._batch(
            self.ns[name],
            [
                "link set lo up",
                f"link add {inner} type veth peer name {outer}",
                f"link set {outer} netns {self.hub}",
                f"addr add {self.addr[name]}/24 dev {inner}",
                f"link set {inner} up",
            ],
        )

    @staticmethod
    def _batch(ns: str, commands: Sequence[str]) -> None:
        out = subprocess.run(
            ["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n",
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"ip -n {ns} -batch: {out.stderr.strip()}")

    def loss(self, p: float) -> None:
        """End-to-end loss ``p`` between any two members: both directions of every veth
        drop ``1 - sqrt(1 - p)`` of the packets (UDP and TCP), in steps of 0.01%."""
        per_10k = round(per_interface_drop(p) * 10000)

        def apply(name: str) -> None:
            v = self.veth[name]
            body = ""
            if per_10k > 0:
                match = f"numgen random mod 10000 < {per_10k} drop"
                head = "type filter hook {} priority -10; policy accept;"
                body = (
                    f'  chain input {{ {head.format("input")} iifname "{v}" {match}; }}\n'
                    f'  chain output {{ {head.format("output")} oifname "{v}" {match}; }}\n'
                )
            script = (
                f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
                f"table inet {NFT_TABLE} {{\n{body}}}\n"
            )
            out = subprocess.run(
                ["ip", "netns", "exec", self.ns[name], "nft", "-f", "-"],
                input=script, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"nft in {self.ns[name]}: {out.stderr.strip()}\n{script}")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(apply, self.names))

    # -- processes --------------------------------------------------------------------
    def _spawn(self, name: str, seed: str | None) -> None:
        events = self.workdir / f"{name}.events"
        events.unlink(missing_ok=True)
        self._offsets[name] = 0
        self._partial[name] = b""
        argv = [
            "ip", "netns", "exec", self.ns[name], sys.executable, "-m",
            "reconciler.fabric.member", "--name", name, "--bind", f"{self.addr[name]}:{PORT}",
            "--profile", self.profile, "--key-file", str(self.key_file),
            "--events", str(events), "--control",
        ]  # fmt: skip
        if seed is not None:
            argv += ["--join", seed]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.workdir / f"{name}.stderr", "ab") as err:
            self.procs[name] = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=env,
                cwd=ROOT,
            )  # fmt: skip

    def start(self, timeline: Timeline, within: float = 60.0) -> float:
        """Start every member (the first, then the rest at once, joining the first) and
        wait until each sees all alive; how long that took."""
        self.stop_all()
        self.timeline = timeline
        t0 = time.monotonic()
        first = self.names[0]
        self._spawn(first, None)
        self.wait(lambda: first in timeline.states, within, f"{first} to start")
        seed = f"{self.addr[first]}:{PORT}"
        for n in self.names[1:]:
            self._spawn(n, seed)
        self.wait(timeline.formed, within, "every member to see every other alive")
        return time.monotonic() - t0

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def publish(self, name: str, key: str, value: object) -> None:
        stdin = self.procs[name].stdin
        assert stdin is not None
        stdin.write(f"publish {key} {json.dumps(value)}\n".encode())
        stdin.flush()

    def kill(self, name: str) -> float:
        """kill -9 one member; the wall-clock time just before the signal."""
        p = self.procs[name]
        t = time.time()
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        return t

    def poll(self) -> None:
        """Read the members' new event lines into the timeline."""
        tl = self.timeline
        assert tl is not None
        for name in self.names:
            path = self.workdir / f"{name}.events"
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets[name])
                    chunk = f.read()
            except FileNotFoundError:
                continue
            self._offsets[name] += len(chunk)
            data = self._partial[name] + chunk
            *lines, self._partial[name] = data.split(b"\n")
            for line in lines:
                self._event(tl, name, json.loads(line))

    def _event(self, tl: Timeline, observer: str, ev: dict[str, Any]) -> None:
        kind, t = ev["ev"], float(ev["t"])
        if kind == "start":
            for other in ev["alive"]:
                tl.member(observer, t, other, "alive")
        elif kind == "member":
            tl.member(observer, t, ev["name"], ev["state"])
        elif kind == "change":
            tl.change(observer, t, ev["owner"], ev["key"], ev["deleted"])
        elif kind == "lag":
            self.lag_max_ms = max(self.lag_max_ms, float(ev["max_ms"]))

    def wait(self, cond: Callable[[], bool], within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while True:
            self.poll()
            if cond():
                return
            dead = [
                n for n, p in self.procs.items()
                if p.poll() is not None and p.returncode != -signal.SIGKILL
            ]  # fmt: skip
            if dead:
                raise RuntimeError(f"member {dead[0]} exited: {self.stderr_tail(dead[0])}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {within:g} s")
            time.sleep(0.05)

    def stderr_tail(self, name: str, n: int = 800) -> str:
        try:
            return (self.workdir / f"{name}.stderr").read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    def save(self, label: str) -> None:
        """Copy the members' event logs and stderr to ``keep/label/`` (if keeping)."""
        if self.keep is None:
            return
        dest = self.keep / label
        dest.mkdir(parents=True, exist_ok=True)
        for f in self.workdir.iterdir():
            if f.suffix in (".events", ".stderr"):
                shutil.copy2(f, dest / f.name)

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        self.procs.clear()

    def close(self) -> None:
        """Kill every process, delete the namespaces (and their veths) and the temp dir."""
        self.stop_all()
        errors: list[str] = []
        for ns in reversed(self._made):
            try:
                netmesh.kill_netns_processes(ns)
            except AssertionError as exc:
                errors.append(str(exc))
            netmesh.run("ip", "netns", "del", ns, check=False)
        self._made.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))

    def leftovers(self) -> list[str]:
        """Namespaces of this cluster that still exist (for a test of the clean-up)."""
        listing = netmesh.run("ip", "netns", "list", check=False).stdout
        mine = (self.hub, *self.ns.values())
        out = [f"netns {ln.split()[0]}" for ln in listing.splitlines() if ln.split()[:1]
               and ln.split()[0] in mine]  # fmt: skip
        if self.workdir.exists():
            out.append(f"dir {self.workdir}")
        return out


def run_real(rc: RealCluster, sc: Scenario) -> dict[str, Any]:
    """The scenario on real processes (a fresh start of every member); figures and CPU."""
    tl = sc.timeline()
    load_before = loadavg()
    rc.loss(0.0)
    form_s = rc.start(tl, within=sc.form_within_s)
    rc.loss(sc.loss)
    tl.since = time.time()
    rc.lag_max_ms = 0.0
    cpu: dict[str, dict[str, float]] = {}
    m = Meter(rc.pids)
    rc.wait(lambda: time.time() >= tl.since + sc.warmup_s, sc.warmup_s + 5, "the warm-up")
    cpu["warmup"] = m.read()
    m = Meter(rc.pids)
    for key, publisher in tl.publishers.items():
        rc.publish(publisher, key, {"v": 1})
        rc.wait(functools.partial(tl.spread, key), sc.spread_within_s, f"{key} everywhere")
    cpu["spread"] = m.read()
    tl.killed_at = rc.kill(tl.victim)
    m = Meter(rc.pids)
    rc.wait(tl.detected, sc.detect_within_s, f"every member to mark {tl.victim} dead")
    cpu["detect"] = m.read()
    rc.poll()
    res = {
        **tl.figures(),
        "form_s": round(form_s, 2),
        "cpu": cpu,
        "loop_lag_max_ms": rc.lag_max_ms,
        "load_before": load_before,
        "load_after": loadavg(),
    }
    rc.stop_all()
    rc.save(f"loss{round(sc.loss * 100)}")
    return res


def soak_real(rc: RealCluster, sc: Scenario, minutes: float) -> dict[str, Any]:
    """Real members left alone for ``minutes`` at ``sc.loss``: false positives."""
    tl = Timeline(rc.names, victim="")
    load_before = loadavg()
    rc.loss(0.0)
    rc.start(tl, within=sc.form_within_s)
    rc.loss(sc.loss)
    tl.since = time.time()
    rc.lag_max_ms = 0.0
    m = Meter(rc.pids)
    end = tl.since + minutes * 60.0
    rc.wait(lambda: time.time() >= end, minutes * 60.0 + 10, "the end of the soak")
    res = {
        "minutes": minutes,
        "loss": sc.loss,
        "false_positives": len(tl.false_dead),
        "false_pairs": [
            f"{o}->{t} at {at - tl.since:.1f} s"
            for (o, t), at in sorted(tl.false_dead.items(), key=lambda kv: kv[1])
        ][:20],
        "suspicions": len(tl.suspected),
        "suspect_events": tl.suspect_events,
        "cpu": m.read(),
        "loop_lag_max_ms": rc.lag_max_ms,
        "load_before": load_before,
        "load_after": loadavg(),
    }
    rc.stop_all()
    rc.save("soak")
    return res


# --- the benchmark ----------------------------------------------------------------------


def compare(
    rc: RealCluster, sc: Scenario, seeds: int, log: Callable[[str], None] = lambda s: None
) -> dict[str, Any]:
    """One loss level: real run, ``seeds`` simulated runs, their ratios."""
    log(f"loss {sc.loss:.0%}: real processes...")
    real = run_real(rc, sc)
    log(f"loss {sc.loss:.0%}: simulator, {seeds} seeds...")
    t0 = time.perf_counter()
    runs = [simulate(sc, seed) for seed in range(1, seeds + 1)]
    sim = summarize(runs)
    sim["wall_s"] = round(time.perf_counter() - t0, 1)
    sim["errors"] = [r["error"] for r in runs if "error" in r]
    return {"loss": sc.loss, "real": real, "sim": sim, "ratio": ratios(real, sim)}


TARGETS: Targets = {
    "ratio_min": (">=", RATIO_BOUNDS[0]),
    "ratio_max": ("<=", RATIO_BOUNDS[1]),
}
SOAK_TARGETS: Targets = {"soak_false_positives": ("==", 0)}


def run(
    members: int = 32,
    losses: Sequence[float] = (0.0, 0.1, 0.3),
    seeds: int = 10,
    soak_minutes: float = 0.0,
    *,
    profile: str = "lan",
    warmup_s: float = 5.0,
    keep: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Every loss level real and simulated (and the soak); figures with targets evaluated."""
    result: dict[str, Any] = {
        "members": members,
        "profile": profile,
        "seeds": seeds,
        "cores": os.cpu_count(),
        "simulated": f"median and worst of {seeds} seeds (SimCluster, virtual time)",
        "load_before": loadavg(),
    }
    levels: list[dict[str, Any]] = []
    reason = skip_reason()
    if reason is not None:  # nothing measured: every target unmet, and why
        result["skipped"] = f"real members cannot run here: {reason}"
        result["targets"] = evaluate_targets(TARGETS, result)
        return result
    with RealCluster(members, profile, keep) as rc:
        rc.setup()
        for loss in losses:
            sc = Scenario(members, loss, profile, warmup_s)
            levels.append(compare(rc, sc, seeds, log))
        if soak_minutes > 0:
            log(f"soak: {soak_minutes:g} min at 10% loss...")
            sc = Scenario(members, 0.1, profile, warmup_s)
            soak = soak_real(rc, sc, soak_minutes)
            sims = [simulate_soak(sc, seed, soak_minutes) for seed in range(1, seeds + 1)]
            soak["sim_false_positives_per_seed"] = [x["false_positives"] for x in sims]
            soak["sim_suspect_events_per_seed"] = [x["suspect_events"] for x in sims]
            result["soak"] = soak
            result["soak_false_positives"] = soak["false_positives"]
    result["levels"] = levels
    result["load_after"] = loadavg()
    all_ratios = [r for lv in levels for r in lv["ratio"].values()]
    complete = bool(all_ratios) and all(r is not None for r in all_ratios)
    known = [r for r in all_ratios if r is not None]
    result["ratio_min"] = min(known) if complete else None
    result["ratio_max"] = max(known) if complete else None
    targets = dict(TARGETS)
    if soak_minutes > 0:
        targets.update(SOAK_TARGETS)
    result["targets"] = evaluate_targets(targets, result)
    return result


HEADER = (
    f"{'loss':>5} {'figure':15} {'real':>8} {'sim median':>11} {'sim worst':>10} {'real/sim':>9}"
)


def level_rows(lv: Mapping[str, Any]) -> list[str]:
    """One loss level as table rows (figures, then the real run's CPU and load)."""
    rows: list[str] = []
    real, sim, ratio = lv["real"], lv["sim"], lv["ratio"]
    for name in ("t_50_s", *COMPARED, "false_positives", "suspicions"):
        r = ratio.get(name, "")
        rows.append(
            f"{lv['loss']:>5.0%} {name:15} {real.get(name)!s:>8} "
            f"{sim[name]['median']!s:>11} {sim[name]['worst']!s:>10} {r!s:>9}"
        )
    cpu = real["cpu"]
    rows.append(
        f"{'':5} real CPU: members {cpu['spread']['members_cores']} / "
        f"{cpu['detect']['members_cores']} cores (spread / detect), machine busy "
        f"{cpu['spread']['machine_busy_pct']}% / {cpu['detect']['machine_busy_pct']}%, "
        f"event-loop lag max {real['loop_lag_max_ms']} ms, load {real['load_before']} -> "
        f"{real['load_after']}"
    )
    return rows


def table(result: Mapping[str, Any]) -> str:
    rows = [
        f"{result['members']} members, profile {result['profile']}, {result['cores']} cores; "
        f"simulated: {result['simulated']}; load average before {result['load_before']}, "
        f"after {result['load_after']}",
        HEADER,
    ]
    for lv in result["levels"]:
        rows += level_rows(lv)
    if "soak" in result:
        s = result["soak"]
        rows.append(
            f"soak {s['minutes']:g} min at {s['loss']:.0%}: false positives "
            f"{s['false_positives']}, suspicions {s['suspicions']}, members "
            f"{s['cpu']['members_cores']} cores, event-loop lag max {s['loop_lag_max_ms']} ms, "
            f"load {s['load_before']} -> {s['load_after']}; suspect events {s['suspect_events']}"
            f"; simulated per seed: false positives {s['sim_false_positives_per_seed']}, "
            f"suspect events {s['sim_suspect_events_per_seed']}"
        )
    for name, t in result["targets"].items():
        rows.append(f"target {name} {t['target']}: {t['value']} {'met' if t['met'] else 'MISSED'}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.simreal", description=__doc__)
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--loss", type=float, action="append", help="0..1, repeatable")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--soak-minutes", type=float, default=0.0)
    p.add_argument("--profile", choices=("lan", "local"), default="lan")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds under loss first")
    p.add_argument(
        "--keep-events",
        type=Path,
        default=None,
        metavar="DIR",
        help="copy the members' event logs of each real run to DIR/<run>/",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    losses = tuple(a.loss) if a.loss else (0.0, 0.1, 0.3)
    if not 3 <= a.members <= 250:
        p.error("--members must be in 3..250")
    if not all(0.0 <= x < 1.0 for x in losses) or a.seeds < 1 or a.soak_minutes < 0:
        p.error("--loss in [0, 1), --seeds >= 1, --soak-minutes >= 0")
    reason = skip_reason()
    if reason is not None:
        print(f"simreal: cannot run real members here: {reason}", file=sys.stderr)
        return 1

    def log(msg: str) -> None:
        print(f"simreal: {msg}", file=sys.stderr, flush=True)

    try:
        res = run(
            a.members, losses, a.seeds, a.soak_minutes, profile=a.profile,
            warmup_s=a.warmup, keep=a.keep_events, log=log,
        )  # fmt: skip
    except (RuntimeError, TimeoutError) as exc:
        print(f"simreal: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(res) if a.json else table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
