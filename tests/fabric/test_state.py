"""Scuttlebutt state: deltas under the packet bound, convergence, versions over restarts."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.fabric.api import JSONValue
from reconciler.fabric.codec import Entry, encode
from reconciler.fabric.config import FabricConfig
from reconciler.fabric.sim import SimCluster
from reconciler.fabric.state import StateStore
from reconciler.fabric.versions import VersionFile

LOCAL = FabricConfig.local()


def owner_store(owner: str, n: int, size: int = 40) -> StateStore:
    s = StateStore()
    for i in range(n):
        s.set_own(owner, f"k{i % (n // 2 + 1)}", "x" * size, i + 1, False)
    return s


def test_deltas_are_oldest_first_and_fit_the_budget() -> None:
    src = owner_store("o", 200)
    d = src.deltas({"o": 10}, ["o"], 1300, random.Random(0))
    versions = [e.version for e in d.entries]
    assert versions == sorted(versions)
    assert versions[0] > 10
    assert len(encode([d])) <= 1300
    # Cut at the budget: the watermark is the last version sent, not the owner's top.
    assert d.watermarks["o"] == versions[-1] < src.watermark("o")


def test_repeated_bounded_rounds_converge_without_gaps() -> None:
    src = owner_store("o", 300)
    dst = StateStore()
    for _ in range(100):
        d = src.deltas(dst.digest(["o"]), ["o"], 1300, random.Random(0))
        if not d.entries and dst.watermark("o") == src.watermark("o"):
            break
        for e in d.entries:
            dst.apply(e)
        for o, w in d.watermarks.items():
            dst.raise_watermark(o, w)
    assert dst.items("o") == src.items("o")
    assert dst.watermark("o") == src.watermark("o")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.text(max_size=30)), max_size=60),
    st.integers(0, 40),
    st.integers(600, 3000),
)
def test_property_deltas_are_a_prefix_above_the_digest(
    ops: list[tuple[int, bool, str]], floor: int, budget: int
) -> None:
    src = StateStore()
    for v, (k, deleted, value) in enumerate(ops, 1):
        src.set_own("o", f"k{k}", value, v, deleted)
    d = src.deltas({"o": floor}, ["o"], budget, random.Random(1))
    expected = sorted(it.version for it in src.items("o").values() if it.version > floor)
    got = [e.version for e in d.entries]
    assert got == expected[: len(got)]  # a prefix, oldest first: no gap a digest could hide
    if got:
        assert d.watermarks["o"] >= got[-1]
    if len(got) < len(expected):
        assert d.watermarks.get("o", floor) < expected[len(got)]


def test_eager_entries_do_not_move_the_watermark() -> None:
    s = StateStore()
    assert s.apply(Entry("o", "k", 7, False, 1))
    assert s.watermark("o") == 0  # only ordered deltas may claim completeness
    assert not s.apply(Entry("o", "k", 5, False, 0))  # older: ignored


def test_state_spreads_deletes_and_hides_gone_owners() -> None:
    sim = SimCluster(LOCAL)
    first = sim.add("a")
    for n in ("b", "c", "d"):
        sim.add(n).join([first.addr])
    assert sim.run_until(sim.full_mesh, within=5)
    b = sim.nodes["b"]
    b.publish("routes/x", {"w": 1})
    b.publish("routes/y", {"w": 2})
    assert sim.run_until(
        lambda: all(len(n.view("routes/")) == 2 for n in sim.nodes.values()), within=5
    )
    b.publish("routes/x", None, deleted=True)
    assert sim.run_until(
        lambda: all(n.view("routes/") == {("b", "routes/y"): {"w": 2}} for n in sim.nodes.values()),
        within=5,
    )
    seen = [c for _, c in sim.changes["a"] if c.owner == "b"]
    assert [c.value for c in seen if c.key == "routes/x"][-1] is None


def test_late_joiner_gets_everything_by_anti_entropy() -> None:
    sim = SimCluster(LOCAL)
    first = sim.add("a")
    for i in range(60):
        first.publish(f"inst/{i}", {"i": i, "pad": "p" * 50})
    late = sim.add("z")
    sim.run(1)
    late.join([first.addr])
    assert sim.run_until(lambda: len(late.view("inst/")) == 60, within=5)


def test_versions_never_go_back_across_a_restart_with_state_dir(tmp_path: Path) -> None:
    sim = SimCluster(LOCAL)
    first = sim.add("a")
    b = sim.add("b", state_dir=tmp_path)
    b.join([first.addr])
    for i in range(5):
        b.publish("node", {"gen": 1, "i": i})
    old = b.store.get("b", "node")
    assert old is not None
    assert sim.run_until(lambda: first.get("b", "node") == {"gen": 1, "i": 4}, within=5)
    sim.kill("b")
    sim.revive_addr(b.addr)
    # Restart with the wall clock set far back: the persisted mark still wins.
    sim.clock.shift_wall(-10_000)
    b2 = sim.add("b", addr=b.addr, state_dir=tmp_path)
    b2.publish("node", {"gen": 2})
    new = b2.store.get("b", "node")
    assert new is not None
    assert new.version > old.version
    assert VersionFile(tmp_path).load() >= new.version
    b2.join([first.addr])
    assert sim.run_until(lambda: first.get("b", "node") == {"gen": 2}, within=10)


def test_without_state_dir_an_earlier_life_is_outvoted_and_its_keys_withdrawn() -> None:
    sim = SimCluster(LOCAL)
    first = sim.add("a")
    b = sim.add("b")
    b.join([first.addr])
    b.publish("old-key", 1)
    b.publish("node", {"gen": 1})
    assert sim.run_until(lambda: first.get("b", "old-key") == 1, within=5)
    top = b.store.watermark("b")
    sim.kill("b")
    sim.revive_addr(b.addr)
    sim.clock.shift_wall(-10_000)  # the clock went back: the time floor is lower now
    b2 = sim.add("b", addr=b.addr)
    b2.join([first.addr])
    assert sim.run_until(lambda: b2.store.watermark("b") > top, within=10)
    b2.publish("node", {"gen": 2})
    assert sim.run_until(
        lambda: first.get("b", "node") == {"gen": 2} and first.get("b", "old-key") is None,
        within=10,
    )


def test_a_restarted_owner_that_republishes_a_key_within_the_grace_never_withdraws_it() -> None:
    """An agent restarted under its own name re-adopts its instances: their records must not
    vanish meanwhile. Keys it does not publish again are withdrawn once the grace is over."""
    sim = SimCluster(LOCAL)
    first = sim.add("a")
    b = sim.add("b")
    b.join([first.addr])
    b.publish("inst/kept", {"gen": 1})
    b.publish("inst/gone", {"gen": 1})
    assert sim.run_until(lambda: first.get("b", "inst/gone") == {"gen": 1}, within=5)
    sim.kill("b")
    sim.revive_addr(b.addr)
    b2 = sim.add("b", addr=b.addr)  # a quick restart: never declared dead
    b2.join([first.addr])
    withdrawn_early: list[float] = []

    def kept_and_watch() -> bool:
        it = first.store.get("b", "inst/kept")
        if it is not None and it.deleted:
            withdrawn_early.append(sim.clock.now())
        return False

    sim.run_until(kept_and_watch, within=LOCAL.adopt_grace / 2)
    b2.publish("inst/kept", {"gen": 2})  # re-adopted, within the grace
    assert sim.run_until(
        lambda: (
            kept_and_watch()
            or (first.get("b", "inst/kept") == {"gen": 2} and first.get("b", "inst/gone") is None)
        ),
        within=LOCAL.adopt_grace * 3,
    )
    assert withdrawn_early == []
    gone = first.store.get("b", "inst/gone")
    assert gone is not None
    assert gone.deleted  # withdrawn, not merely hidden


def test_a_value_too_big_for_a_packet_spreads_over_tcp() -> None:
    sim = SimCluster(LOCAL)
    first = sim.add("a")
    others = [sim.add(n) for n in ("b", "c")]
    for o in others:
        o.join([first.addr])
    assert sim.run_until(sim.full_mesh, within=5)
    big: JSONValue = {"blob": "x" * 5000}
    first.publish("garden", big)
    assert first.bq.transmits(("s", "a", "garden")) is None  # not gossiped in packets
    # Well before the next push-pull: the UDP digest exchange hands over to TCP.
    assert sim.run_until(
        lambda: all(o.get("a", "garden") == big for o in others),
        within=LOCAL.udp_sync_interval * 10,
    )


def test_a_member_that_missed_the_eager_push_catches_up_by_sampled_digests() -> None:
    # 80 owners: the digest no longer fits a packet, so members exchange samples of it.
    cfg = LOCAL.with_(push_pull_interval=600.0)  # rule out the TCP full sync
    sim = SimCluster(cfg)
    nodes = [sim.add(f"m{i}") for i in range(80)]
    for n in nodes:
        for o in nodes:
            if o is not n:
                n.seed_member(o.name, o.addr)
    for n in nodes:
        n.publish("node", {"n": n.name})
    sim.run(3)
    deaf = nodes[5]
    for n in nodes:
        if n is not deaf:
            sim.net.block(n.addr, deaf.addr)
    nodes[0].publish("routes/app", {"v": 2})
    sim.run(0.5)  # the eager push is over (its retransmit budget spent) ...
    assert nodes[0].bq.transmits(("s", "m0", "routes/app")) is None
    assert deaf.get("m0", "routes/app") is None  # ... and it never reached m5
    sim.net.heal()
    assert sim.run_until(lambda: deaf.get("m0", "routes/app") == {"v": 2}, within=10)
