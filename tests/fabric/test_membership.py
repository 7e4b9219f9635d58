"""SWIM + Lifeguard membership on virtual time and the in-memory network."""

from __future__ import annotations

import pytest

from reconciler.fabric.codec import Suspect
from reconciler.fabric.config import FabricConfig
from reconciler.fabric.engine import Engine, _Suspicion
from reconciler.fabric.sim import SimCluster

LOCAL = FabricConfig.local()


def cluster(n: int = 5, config: FabricConfig = LOCAL, **kw: object) -> SimCluster:
    sim = SimCluster(config, **kw)  # type: ignore[arg-type]
    first = sim.add("m0")
    for i in range(1, n):
        sim.add(f"m{i}").join([first.addr])
    assert sim.run_until(sim.full_mesh, within=10), "the cluster did not form"
    return sim


def was_marked(sim: SimCluster, target: str, state: str) -> list[str]:
    """Observers that ever marked ``target`` as ``state``."""
    return [
        obs
        for obs, events in sim.member_events.items()
        if any(m.name == target and m.state == state for _, m in events)
    ]


def test_join_forms_full_membership() -> None:
    sim = cluster(5)
    for node in sim.nodes.values():
        assert sorted(m.name for m in node.member_list()) == [f"m{i}" for i in range(5)]


def test_suspect_is_refuted_with_a_higher_incarnation() -> None:
    sim = cluster(5)
    victim = sim.nodes["m3"]
    before = victim.inc
    # m1 accuses m3; the accusation spreads, m3 hears it and refutes.
    sim.nodes["m1"]._on_suspect(Suspect("m3", before, "m1"))
    assert sim.state_of("m1", "m3") == "suspect"
    assert sim.run_until(lambda: victim.inc > before and sim.all_see("m3", "alive"), within=5)
    assert victim.stats.refutes >= 1
    sim.run(10)
    assert was_marked(sim, "m3", "dead") == []
    assert all(n.members["m3"].inc == victim.inc for n in sim.nodes.values())


def test_indirect_probe_saves_a_member_the_prober_cannot_reach() -> None:
    sim = cluster(5)
    a, x = sim.nodes["m1"], sim.nodes["m4"]
    sim.net.block(a.addr, x.addr)  # the direct path (UDP and TCP) is broken both ways
    sim.run(30)
    assert was_marked(sim, "m4", "suspect") == []
    assert sim.all_see("m4", "alive")


def test_without_relays_the_unreachable_member_is_suspected() -> None:
    # The control for the test above: with no one to relay, the probe fails.
    sim = cluster(2)
    a, x = sim.nodes["m0"], sim.nodes["m1"]
    sim.net.block(a.addr, x.addr)
    assert sim.run_until(lambda: bool(was_marked(sim, "m1", "suspect")), within=5)


def test_nacks_keep_awareness_low_when_the_target_is_really_gone() -> None:
    sim = cluster(6)
    sim.kill("m5")
    assert sim.run_until(lambda: sim.all_see("m5", "dead"), within=30)
    # Relays answered with nacks, so the probers did not blame themselves.
    assert all(n.awareness <= 1 for n in sim.nodes.values())


def test_a_member_that_hears_nothing_stretches_its_probe_interval() -> None:
    sim = cluster(6)
    deaf = sim.nodes["m2"]
    for other in sim.nodes.values():
        if other is not deaf:
            sim.net.block(other.addr, deaf.addr, both=False)  # m2 receives nothing
    assert sim.run_until(lambda: deaf.awareness >= 3, within=10)
    assert deaf._scale(LOCAL.probe_interval) >= 4 * LOCAL.probe_interval
    sim.net.heal()
    assert sim.run_until(lambda: deaf.awareness == 0, within=60)


def test_suspicion_timeout_shrinks_with_independent_confirmations() -> None:
    sim = cluster(3)
    node = sim.nodes["m0"]
    lo, hi = 1.0, 6.0
    s = _Suspicion(node, "m1", 0, "m2", k=3, lo=lo, hi=hi)
    assert s.timeout() == pytest.approx(hi)
    assert s.confirm("a")
    t1 = s.timeout()
    assert not s.confirm("a")  # the same confirmer counts once
    assert s.confirm("b")
    t2 = s.timeout()
    assert s.confirm("c")
    assert hi > t1 > t2 > s.timeout() == pytest.approx(lo)
    assert not s.confirm("d")  # no more than k
    s.handle.cancel()
    assert _Suspicion(node, "m1", 0, "m2", k=0, lo=lo, hi=hi).timeout() == lo


def test_a_suspicion_at_a_higher_incarnation_replaces_the_one_held() -> None:
    # The suspect refuted the first suspicion and was suspected again; we missed the
    # refutation. The new suspicion starts afresh (memberlist would count it as a
    # confirmation of the old one and shorten the old timer).
    sim = cluster(5)
    m0 = sim.nodes["m0"]
    inc = m0.members["m3"].inc
    m0._on_suspect(Suspect("m3", inc, "m1"))
    held = m0._suspicions["m3"]
    m0._on_suspect(Suspect("m3", inc + 1, "m2"))
    now = m0._suspicions["m3"]
    assert now is not held
    assert (now.inc, now.n, m0.members["m3"].inc) == (inc + 1, 0, inc + 1)


def test_a_member_that_missed_the_refutation_hears_it_from_the_suspect() -> None:
    # No push-pull to repair it: only the suspect itself can tell m1 in time.
    cfg = LOCAL.with_(push_pull_interval=1e6)
    sim = cluster(5, config=cfg)
    m1, m3 = sim.nodes["m1"], sim.nodes["m3"]
    old = m3.inc
    sim.nodes["m2"]._on_suspect(Suspect("m3", old, "m2"))
    assert sim.run_until(lambda: m3.inc > old and sim.all_see("m3", "alive"), within=5)
    sim.run(2.0)  # the refutation has been gossiped to the end of its retransmits
    # m1 missed it all: it still knows the old incarnation, and now suspects it.
    m1.members["m3"].inc = old
    m1._on_suspect(Suspect("m3", old, "m2"))
    assert sim.state_of("m1", "m3") == "suspect"
    _, longest = cfg.suspicion_timeouts(5)
    assert sim.run_until(lambda: sim.state_of("m1", "m3") == "alive", within=longest)
    sim.run(longest)
    assert was_marked(sim, "m3", "dead") == []


@pytest.mark.parametrize("seed", [2, 4])
def test_no_false_death_at_30_percent_loss_of_datagrams_and_tcp_segments(seed: int) -> None:
    sim = cluster(10, seed=seed, loss=0.3)
    sim.member_events = {name: [] for name in sim.member_events}
    sim.run(60.0)
    assert sim.net.packets_lost > 0  # the loss was real, on UDP and TCP
    assert sim.net.streams_failed > 0
    suspected = was_marked(sim, "m4", "suspect") + was_marked(sim, "m7", "suspect")
    assert suspected, "30% loss makes probes fail: members are suspected and refute"
    dead = {
        (o, m.name) for o, evs in sim.member_events.items() for _, m in evs if m.state == "dead"
    }
    assert dead == set()


def test_killed_member_is_declared_dead_within_the_suspicion_window() -> None:
    sim = cluster(5)
    killed_at = sim.clock.now()
    sim.kill("m2")
    lo, hi = LOCAL.suspicion_timeouts(5)
    bound = LOCAL.probe_interval * 5 + hi  # a probe round plus the longest suspicion
    assert sim.run_until(lambda: sim.all_see("m2", "dead"), within=bound)
    assert sim.clock.now() - killed_at >= lo


def test_dead_members_are_reaped_and_their_state_dropped() -> None:
    sim = cluster(4)
    sim.nodes["m3"].publish("node", {"n": 3})
    assert sim.run_until(lambda: sim.nodes["m0"].get("m3", "node") == {"n": 3}, within=5)
    sim.kill("m3")
    assert sim.run_until(lambda: sim.all_see("m3", "dead"), within=10)
    assert sim.nodes["m0"].view("node") == {}
    assert ("m3", "node") in sim.nodes["m0"].view("node", include_gone=True)
    assert sim.run_until(
        lambda: all("m3" not in n.members for n in sim.nodes.values()), within=LOCAL.reap_after + 3
    )
    assert sim.nodes["m0"].view("node", include_gone=True) == {}


def test_graceful_leave_is_shown_as_left_not_dead() -> None:
    sim = cluster(4)
    leaver = sim.nodes["m2"]
    leaver.leave()
    sim.run(0.5)
    leaver.stop()
    sim.net.set_down(leaver.addr)
    del sim.nodes["m2"]
    assert sim.run_until(lambda: sim.all_see("m2", "left"), within=5)
    sim.run(3)
    assert was_marked(sim, "m2", "dead") == []
    assert was_marked(sim, "m2", "suspect") == []


def test_partition_heals_after_both_sides_forgot_each_other() -> None:
    sim = cluster(4)
    for i, n in enumerate(sim.nodes.values()):
        n.publish("node", {"i": i})
    a = [sim.nodes["m0"].addr, sim.nodes["m1"].addr]
    b = [sim.nodes["m2"].addr, sim.nodes["m3"].addr]
    sim.net.partition(a, b)
    assert sim.run_until(
        lambda: (
            all("m2" not in sim.nodes[o].members for o in ("m0", "m1"))
            and all("m0" not in sim.nodes[o].members for o in ("m2", "m3"))
        ),
        within=30,
    ), "each side should have reaped the other"
    sim.net.heal()
    assert sim.run_until(sim.full_mesh, within=10)
    assert sim.run_until(
        lambda: all(len(n.view("node")) == 4 for n in sim.nodes.values()), within=10
    )


def test_restarted_member_at_a_new_address_rejoins() -> None:
    sim = cluster(4)
    sim.kill("m1")
    assert sim.run_until(lambda: sim.all_see("m1", "dead"), within=10)
    again = sim.add("m1", addr="10.9.9.9:7946")
    again.join([sim.nodes["m0"].addr])
    assert sim.run_until(sim.full_mesh, within=10)
    assert all(n.members["m1"].addr == "10.9.9.9:7946" for n in sim.nodes.values())


def test_engine_rejects_bad_keys() -> None:
    sim = cluster(1)
    node: Engine = sim.nodes["m0"]
    with pytest.raises(ValueError, match="key"):
        node.publish("", 1)
