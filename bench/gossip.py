"""Gossip simulator: the real protocol code on the in-memory network and virtual time.

``python -m bench.gossip --nodes N --loss P [--json]``: how fast a new key reaches the
members, how fast a killed member is detected, false positives over ``--minutes`` of
simulated time, and bytes sent per member per second; memberlist's figures beside ours.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from collections.abc import Sequence

from reconciler.fabric.api import Change, Member
from reconciler.fabric.config import FabricConfig
from reconciler.fabric.keyring import Keyring
from reconciler.fabric.sim import SimCluster

# memberlist's convergence model (gossip every 200 ms to 3 peers): 99.99% of members.
MEMBERLIST_T_99_99 = {(100, 0.0): 2.0, (1000, 0.0): 2.2, (100, 0.5): 3.8, (1000, 0.5): 4.4}


def run(
    nodes: int,
    loss: float,
    minutes: float = 10.0,
    seed: int = 1,
    profile: str = "lan",
    encrypt: bool = True,
) -> dict[str, object]:
    wall0 = time.perf_counter()
    cfg = FabricConfig.profile(profile)
    sim = SimCluster(
        cfg, seed=seed, loss=loss, latency=0.002, jitter=0.003,
        keyring=Keyring.generate() if encrypt else None,
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
        return _measure(sim, names, nodes, loss, minutes, profile, encrypt, wall0)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _measure(
    sim: SimCluster,
    names: list[str],
    nodes: int,
    loss: float,
    minutes: float,
    profile: str,
    encrypt: bool,
    wall0: float,
) -> dict[str, object]:

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
    bytes0 = sum(sim.net.bytes_sent.values())

    # 1. A new key published by one member.
    t0 = sim.clock.now()
    sim.nodes[names[0]].publish("bench/key", {"v": 1})
    need = math.ceil(0.9999 * nodes)
    sim.run_until(lambda: len(key_seen) >= nodes, within=60.0, step=0.05)
    times = sorted(t - t0 for t in key_seen.values())
    t_9999 = times[need - 1] if len(times) >= need else None
    t_100 = times[nodes - 1] if len(times) >= nodes else None

    # 2. A member killed (no leave): when do the first and the last of the others notice.
    killed_at = sim.clock.now()
    sim.kill(victim)
    live = nodes - 1
    sim.run_until(lambda: len(dead_seen) >= live, within=120.0, step=0.1)
    det = sorted(t - killed_at for t in dead_seen.values())

    # 3. The rest of the simulated time: false positives among live members.
    rest = minutes * 60.0 - (sim.clock.now() - warmup)
    if rest > 0:
        sim.run(rest)
    duration = sim.clock.now() - warmup
    sent = sum(sim.net.bytes_sent.values()) - bytes0
    return {
        "nodes": nodes,
        "loss": loss,
        "t_99_99_s": _r(t_9999),
        "t_100_s": _r(t_100),
        "detect_first_s": _r(det[0] if det else None),
        "detect_last_s": _r(det[-1] if len(det) >= live else None),
        "false_positives": len(false_pos),
        "bytes_per_member_s": round(sent / nodes / duration, 1),
        "simulated_s": round(duration, 1),
        "profile": profile,
        "encrypted": encrypt,
        "memberlist_t_99_99_s": MEMBERLIST_T_99_99.get((nodes, loss)),
        "wall_s": round(time.perf_counter() - wall0, 2),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gossip", description=__doc__)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--loss", type=float, default=0.0, help="packet loss, 0..1")
    p.add_argument("--minutes", type=float, default=10.0, help="simulated minutes (default 10)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile", choices=("lan", "local"), default="lan")
    p.add_argument("--no-encrypt", action="store_true", help="skip AES-GCM (faster)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.nodes < 3 or not 0.0 <= a.loss < 1.0:
        p.error("--nodes must be >= 3 and --loss in [0, 1)")
    res = run(a.nodes, a.loss, a.minutes, a.seed, a.profile, not a.no_encrypt)
    if a.json:
        print(json.dumps(res))
        return 0
    ml = res["memberlist_t_99_99_s"]
    rows = [
        ("key reaches 99.99% (s)", res["t_99_99_s"], ml if ml is not None else "n/a"),
        ("key reaches 100% (s)", res["t_100_s"], "n/a"),
        ("dead, first member (s)", res["detect_first_s"], "n/a"),
        ("dead, last member (s)", res["detect_last_s"], "n/a"),
        ("false positives", res["false_positives"], "n/a"),
        ("bytes / member / s", res["bytes_per_member_s"], "n/a"),
    ]
    print(f"nodes={a.nodes} loss={a.loss:.0%} profile={a.profile} wall={res['wall_s']}s")
    print(f"{'':26} {'ours':>10} {'memberlist':>11}")
    for label, ours, theirs in rows:
        print(f"{label:26} {ours!s:>10} {theirs!s:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
