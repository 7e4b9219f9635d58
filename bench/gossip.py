"""Gossip simulator: the real protocol code on the in-memory network and virtual time.

``python -m bench.gossip --nodes N --loss P [--seeds 10] [--minutes 10] [--json]``: how
fast a new key reaches 99%, 99.99% and 100% of the members, how fast a killed member is
detected, false "dead" verdicts about live members over ``--minutes`` of simulated time,
and wire bytes sent per member per second (IPv4+UDP/TCP headers, TCP handshakes, ACKs,
FINs and retransmissions included). Every figure is simulated, over seeds 1..N: median,
min and worst. Loss applies to datagrams and to the segments of TCP streams alike
(``reconciler.fabric.memory``). Memberlist's column is a model, not a measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

from bench.targets import evaluate
from reconciler.fabric.api import Change, Member
from reconciler.fabric.config import FabricConfig
from reconciler.fabric.keyring import Keyring
from reconciler.fabric.sim import SimCluster

#: Where the memberlist figures come from: a formula, not a run of memberlist.
MEMBERLIST_SOURCE = (
    "model: Serf's convergence simulator (hashicorp/serf, "
    "website/source/assets/javascripts/_simulator.js), the fraction of members reached "
    "after x gossip rounds 1 / (1 + (n+1) e^(-fanout (1-loss) x / 2)), memberlist's LAN "
    "defaults (200 ms rounds, fanout 3), rounded up to whole rounds; no probe traffic, "
    "no queue limits, no measurement"
)

#: Figures of one run; lower is better for all of them.
FIGURES = (
    "t_99_s",
    "t_99_99_s",
    "t_100_s",
    "detect_first_s",
    "detect_last_s",
    "false_positives",
    "false_positive_members",
    "bytes_per_member_s",
    "payload_bytes_per_member_s",
    "streams_failed_pct",
)

#: (nodes, loss) -> targets on the summary (``<figure>_median``), checked in the JSON.
TARGETS: Mapping[tuple[int, float], Mapping[str, tuple[str, float]]] = {
    (1000, 0.0): {"t_99_s_median": ("<=", 2.2)},
    (1000, 0.5): {"t_99_s_median": ("<=", 4.4)},
}


def memberlist_model(nodes: int, loss: float, share: float = 0.9999) -> float:
    """Seconds until ``share`` of ``nodes`` have a broadcast, by Serf's convergence model."""
    interval, fanout = 0.2, 3
    rate = fanout * (1.0 - loss) * 0.5
    rounds = math.log(share / (1.0 - share) * (nodes + 1)) / rate
    return round(math.ceil(rounds - 1e-9) * interval, 3)


def run(
    nodes: int,
    loss: float,
    minutes: float = 10.0,
    seed: int = 1,
    profile: str = "lan",
    encrypt: bool = True,
    lossy_streams: bool = True,
) -> dict[str, Any]:
    """One simulated run (one seed): the figures of :data:`FIGURES` and its settings."""
    wall0 = time.perf_counter()
    cfg = FabricConfig.profile(profile)
    sim = SimCluster(
        cfg, seed=seed, loss=loss, latency=0.002, jitter=0.003,
        keyring=Keyring.generate() if encrypt else None, lossy_streams=lossy_streams,
    )  # fmt: skip
    sim.record = False
    names = [f"n{i:04d}" for i in range(nodes)]
    for name in names:
        sim.add(name)
    # Bootstrap: every member starts knowing the others (a large join storm is not measured).
    addrs = {n: e.addr for n, e in sim.nodes.items()}
    for e in sim.nodes.values():
        for other, addr in addrs.items():
            if other != e.name:
                e.seed_member(other, addr)

    # The million bootstrap objects (members x members) live as long as the run: move them
    # out of the collector's generations, else every full collection walks them all.
    # And collect young objects less often: the run allocates millions of short-lived ones
    # (packets, timers) that reference counting frees anyway.
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(5000, 20, 1000)
    try:
        res = _measure(sim, names, nodes, minutes)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    res.update(
        nodes=nodes, loss=loss, seed=seed, profile=profile, encrypted=encrypt,
        lossy_streams=lossy_streams, wall_s=round(time.perf_counter() - wall0, 2),
    )  # fmt: skip
    return res


def _measure(sim: SimCluster, names: list[str], nodes: int, minutes: float) -> dict[str, Any]:
    key_seen: dict[str, float] = {}
    dead_seen: dict[str, float] = {}
    false_pos: set[tuple[str, str]] = set()
    victim = names[-1]
    killed_at = math.inf

    def on_change(observer: str, c: Change) -> None:
        if c.key == "bench/key" and c.value is not None and observer not in key_seen:
            key_seen[observer] = sim.clock.now()

    def on_member(observer: str, m: Member) -> None:
        if m.state != "dead":
            return
        if m.name == victim and sim.clock.now() >= killed_at:
            dead_seen.setdefault(observer, sim.clock.now())
        else:
            false_pos.add((observer, m.name))

    sim.on_change = on_change
    sim.on_member = on_member
    warmup = 5.0
    sim.run(warmup)
    end = warmup + minutes * 60.0  # every phase ends by then (a short run may miss some)
    net = sim.net
    wire0, payload0 = sum(net.bytes_sent.values()), sum(net.payload_bytes_sent.values())
    streams0, failed0, refused0 = net.streams_sent, net.streams_failed, net.streams_refused

    # 1. A new key published by one member (the publisher counts: it holds it at once).
    t0 = sim.clock.now()
    sim.nodes[names[0]].publish("bench/key", {"v": 1})
    left = end - sim.clock.now()
    sim.run_until(lambda: len(key_seen) >= nodes, within=min(60.0, left), step=0.05)
    times = sorted(t - t0 for t in key_seen.values())

    def reached(share: float) -> float | None:
        need = math.ceil(share * nodes - 1e-9)
        return times[need - 1] if len(times) >= need else None

    # 2. A member killed (no leave): when do the first and the last of the others notice.
    killed_at = sim.clock.now()
    sim.kill(victim)
    live = nodes - 1
    left = end - sim.clock.now()
    sim.run_until(lambda: len(dead_seen) >= live, within=min(120.0, left), step=0.1)
    det = sorted(t - killed_at for t in dead_seen.values())

    # 3. The rest of the simulated time: false positives among live members.
    rest = end - sim.clock.now()
    if rest > 0:
        sim.run(rest)
    duration = sim.clock.now() - warmup
    wire = sum(net.bytes_sent.values()) - wire0
    payload = sum(net.payload_bytes_sent.values()) - payload0
    # Streams to the killed member are refused at once (a reset): not a loss figure.
    streams = net.streams_sent - streams0 - (net.streams_refused - refused0)
    return {
        "t_99_s": _r(reached(0.99)),
        "t_99_99_s": _r(reached(0.9999)),
        "t_100_s": _r(reached(1.0)),
        "detect_first_s": _r(det[0] if det else None),
        "detect_last_s": _r(det[-1] if len(det) >= live else None),
        "false_positives": len(false_pos),
        "false_positive_members": len({name for _, name in false_pos}),
        "bytes_per_member_s": round(wire / nodes / duration, 1),
        "payload_bytes_per_member_s": round(payload / nodes / duration, 1),
        "streams_failed_pct": round(100.0 * (net.streams_failed - failed0) / max(1, streams), 1),
        "simulated_s": round(duration, 1),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def summarize(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Median, min and worst (max) over seeds; a figure a seed never reached is the worst.

    ``missing`` counts those seeds; a median or worst that falls on one is None.
    """
    inf = math.inf
    xs = sorted(inf if v is None else float(v) for v in values)
    med = statistics.median(xs)

    def out(x: float) -> float | None:
        return None if math.isinf(x) else round(x, 3)

    return {
        "median": out(med),
        "min": out(xs[0]),
        "worst": out(xs[-1]),
        "missing": sum(v is None for v in values),
    }


def run_seeds(
    nodes: int,
    loss: float,
    seeds: int = 10,
    minutes: float = 10.0,
    *,
    profile: str = "lan",
    encrypt: bool = True,
    lossy_streams: bool = True,
    jobs: int = 1,
) -> dict[str, Any]:
    """:func:`run` over seeds 1..``seeds``: every figure's median, min and worst.

    Returns ``{"scenario", "figures": {name: {median, min, worst, missing}}, "per_seed",
    "memberlist_model", "targets"}``; ``jobs`` runs seeds in that many processes.
    """
    wall0 = time.perf_counter()
    one = partial(
        run, nodes, loss, minutes, profile=profile, encrypt=encrypt, lossy_streams=lossy_streams
    )
    seed_list = list(range(1, seeds + 1))
    if jobs > 1 and seeds > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, seeds)) as pool:
            per_seed = list(pool.map(_one_seed, [one] * seeds, seed_list))
    else:
        per_seed = [one(seed=s) for s in seed_list]
    figures = {f: summarize([r[f] for r in per_seed]) for f in FIGURES}
    flat = {f"{f}_{k}": v for f, s in figures.items() for k, v in s.items()}
    return {
        "scenario": {
            "simulated": True,
            "nodes": nodes,
            "loss": loss,
            "seeds": seeds,
            "minutes": minutes,
            "profile": profile,
            "encrypted": encrypt,
            "lossy_streams": lossy_streams,
            "latency_ms": "2-5",
        },
        "figures": figures,
        "per_seed": per_seed,
        "memberlist_model": {
            "t_99_s": memberlist_model(nodes, loss, 0.99),
            "t_99_99_s": memberlist_model(nodes, loss, 0.9999),
            "source": MEMBERLIST_SOURCE,
        },
        "targets": evaluate(TARGETS.get((nodes, loss), {}), flat),
        "wall_s": round(time.perf_counter() - wall0, 1),
    }


def _one_seed(one: partial[dict[str, Any]], seed: int) -> dict[str, Any]:
    return one(seed=seed)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gossip", description=__doc__)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--loss", type=float, default=0.0, help="packet loss, 0..1 (UDP and TCP)")
    p.add_argument("--minutes", type=float, default=10.0, help="simulated minutes (default 10)")
    p.add_argument("--seeds", type=int, default=10, help="run seeds 1..N (default 10)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    p.add_argument("--profile", choices=("lan", "local"), default="lan")
    p.add_argument("--no-encrypt", action="store_true", help="skip AES-GCM (faster)")
    p.add_argument("--lossless-streams", action="store_true", help="the old model: TCP never lost")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.nodes < 3 or not 0.0 <= a.loss < 1.0:
        p.error("--nodes must be >= 3 and --loss in [0, 1)")
    if a.seeds < 1 or a.jobs < 1 or a.minutes <= 0:
        p.error("--seeds and --jobs must be >= 1 and --minutes > 0")
    res = run_seeds(
        a.nodes, a.loss, a.seeds, a.minutes, profile=a.profile, encrypt=not a.no_encrypt,
        lossy_streams=not a.lossless_streams, jobs=a.jobs,
    )  # fmt: skip
    if a.json:
        print(json.dumps(res))
        return 0
    model = res["memberlist_model"]
    print(
        f"simulated: nodes={a.nodes} loss={a.loss:.0%} seeds=1..{a.seeds} "
        f"minutes={a.minutes:g} profile={a.profile} wall={res['wall_s']}s"
    )
    print(f"{'':30} {'median':>9} {'min':>9} {'worst':>9} {'missing':>8} {'model*':>7}")
    for name, s in res["figures"].items():
        m = model.get(name, "")
        print(
            f"{name:30} {s['median']!s:>9} {s['min']!s:>9} {s['worst']!s:>9} "
            f"{s['missing']!s:>8} {m!s:>7}"
        )
    for name, t in res["targets"].items():
        print(f"target {name} {t['target']}: {t['value']} {'met' if t['met'] else 'NOT MET'}")
    print(f"* memberlist {model['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
