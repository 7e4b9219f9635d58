"""``bench.scale``: the model's parts against the engine's, and its quick run.

No figure of the model at scale is asserted here (``python -m bench.scale`` measures and
evaluates its own targets). What is checked: the wire sizes the model computes are the
codec's; its broadcast queue takes the same items as the engine's; every member ends up
holding every record of its scope; scoping sends fewer bytes; the quick run's output has
its shape and evaluated targets; and, at 33 members, the model's route spread is within a
factor 2 of the real engine's on the same scenario.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.scale import (
    ACK_SIZE,
    AEAD,
    SEQ_DIGITS,
    Model,
    Scenario,
    _Queue,
    deltas_size,
    digest_size,
    members_of,
    ping_size,
    push_pull_size,
    rows_size,
    run,
    udp_wire,
)
from reconciler.fabric import codec
from reconciler.fabric._queue import BroadcastQueue
from reconciler.fabric.codec import Ack, Deltas, Digest, Entry, MemberRow, Ping, PushPull
from reconciler.fabric.keyring import Keyring, seal

ROOT = Path(__file__).resolve().parents[2]
VERSION = 1_700_000_123_456_789  # 16 digits, as the engine's versions
SEQ = 10**SEQ_DIGITS - 7


def _entry(owner: str, key: str, pad: int) -> Entry:
    return Entry(owner, key, VERSION, False, {"x": "y" * pad}, "S" * 86)


# -- wire sizes ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5])
def test_digest_and_deltas_sizes_are_the_codecs(n: int) -> None:
    owners = [f"host-{i:05d}" for i in range(n)]
    digest = Digest("host-00042", "10.0.0.43:7946", True, dict.fromkeys(owners, VERSION), True)
    keys = sum(len(o) for o in owners)
    assert digest_size("host-00042", "10.0.0.43:7946", keys, n) == len(codec.encode_one(digest))
    entries = tuple(_entry(o, f"inst/{o}", 100 + i) for i, o in enumerate(owners))
    deltas = Deltas(dict.fromkeys(owners, VERSION), entries)
    entry_bytes = sum(len(codec.encode_one(e)) for e in entries)
    assert deltas_size(keys, n, entry_bytes, n) == len(codec.encode_one(deltas))


def test_push_pull_ping_ack_and_packet_sizes_are_the_codecs() -> None:
    scn = Scenario(hosts=5, warmup_s=1, measure_s=10, route_probes=1)
    mem = members_of(scn)
    rows = tuple(MemberRow(m.name, m.addr, 1_700_000_000, 0) for m in mem)
    owners = [m.name for m in mem[:3]]
    entries = tuple(_entry(o, "node", 50) for o in owners)
    pp = PushPull(
        SEQ, False, True, mem[0].name, mem[0].addr, rows, dict.fromkeys(owners, VERSION),
        Deltas(dict.fromkeys(owners, VERSION), entries),
    )  # fmt: skip
    keys = sum(len(o) for o in owners)
    digest_obj = 2 + keys + 3 * 20 - 1
    entry_bytes = sum(len(codec.encode_one(e)) for e in entries)
    deltas_obj = deltas_size(keys, 3, entry_bytes, 3) - 6
    size = push_pull_size(mem[0].name, mem[0].addr, rows_size(mem, 10), digest_obj, deltas_obj)
    assert size == len(codec.encode_one(pp))
    ping = Ping(SEQ, mem[1].name, mem[0].name, mem[0].addr)
    assert ping_size(mem[1].name, mem[0].name, mem[0].addr) == len(codec.encode_one(ping))
    assert ACK_SIZE == len(codec.encode_one(Ack(SEQ)))
    plain = codec.encode([ping, Ack(SEQ)])
    sealed = seal(Keyring.generate(), plain, b"myco")
    assert len(sealed) == len(plain) + AEAD
    assert udp_wire(len(plain)) == len(sealed) + 28


# -- the broadcast queue -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_the_models_queue_takes_what_the_engines_queue_takes(seed: int) -> None:
    """Random puts (some replacing a key) and takes with random budgets: the same items
    in the same order, transmit limits included."""
    rng = random.Random(seed)
    limit = rng.choice([2, 4, 12])
    engine = BroadcastQueue()
    model = _Queue(limit, cap=10_000)
    order = 0
    for _ in range(300):
        if rng.random() < 0.6:
            key = rng.randrange(40)
            entry = _entry("o", f"k{key}", rng.choice([10, 100, 400, 500, 1000]))
            order += 1
            engine.queue(key, entry)
            model.put(key, order, key * 1000 + order, len(codec.encode_one(entry)) + 1)
        else:
            budget = rng.randrange(0, 1400)
            got_engine = [codec.decode(b"[" + w + b"]")[0] for w in engine.take_wire(budget, limit)]
            uids: list[int] = []
            model.take(budget, uids)
            assert [int(e.key[1:]) for e in got_engine if isinstance(e, Entry)] == [
                u // 1000 for u in uids
            ]
            assert len(engine) == len(model.items)


# -- the model's runs ----------------------------------------------------------------------


@pytest.mark.parametrize("scoped", [False, True])
def test_every_member_ends_up_holding_every_record_of_its_scope(scoped: bool) -> None:
    scn = Scenario(hosts=40, warmup_s=10, measure_s=30, route_probes=3, scoped=scoped)
    churning = Model(scn, 3)
    churning.run()
    assert not churning.converged()  # the churn goes on to the end: someone is behind
    settled = Model(scn, 3, settle_s=20.0)
    fig = settled.run()
    assert settled.converged()
    assert fig.extra["converged"] is True
    assert all(t is not None for t in fig.route_t_100)


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    return run(quick=True, limits=False, log=lambda _msg: None)


def test_quick_run_shape_scoping_and_targets(quick: dict[str, Any]) -> None:
    assert quick["simulated"] is True
    per = quick["sizes"]["60"]
    for mode in ("unscoped", "scoped"):
        fig = per[mode]
        assert fig["simulated"] is True
        assert fig["seeds"] == 1
        assert "seeds_note" in fig
        assert set(fig["bytes_per_member_s"]) == {"median", "min", "max"}
        assert set(fig["by_role_median"]) == {"agent", "edge", "reconciler"}
        assert fig["route_t_99_s"]["median"] is not None
        assert fig["route_t_100_s"]["median"] >= fig["route_t_99_s"]["median"]
    assert per["scoped"]["bytes_per_member_s"]["max"] < per["unscoped"]["bytes_per_member_s"]["min"]
    scoped_agent = per["scoped"]["by_role_median"]["agent"]["in"]
    assert scoped_agent < per["unscoped"]["by_role_median"]["agent"]["in"]
    for mode in ("unscoped", "scoped"):
        targets = quick["targets"][mode]
        assert set(targets) == {"bytes_per_member_s", "route_t_99_s"}
        for t in targets.values():
            assert set(t) == {"value", "target", "met"}
    assert isinstance(quick["all_targets_met"], bool)
    assert quick["record_bytes"]["inst"] < 1236 < quick["record_bytes"]["intents"]


def test_model_route_spread_is_within_a_factor_2_of_the_real_engines(
    quick: dict[str, Any],
) -> None:
    cal = quick["calibration"]["nominal"]
    assert quick["calibration"]["members"] == 33
    real = cal["real_engine"]["route_t_100_s"]["median"]
    model = cal["model"]["route_t_100_s"]["median"]
    assert real is not None
    assert model is not None
    assert 0.5 <= model / real <= 2.0
    assert cal["ratio_model_to_real"]["route_t_100_s"] == round(model / real, 3)


def test_bad_sizes_are_one_line_errors() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--sizes", "1000,abc"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--sizes '1000,abc': expected comma-separated host counts" in proc.stderr
    assert "Traceback" not in proc.stderr
