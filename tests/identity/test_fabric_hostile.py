"""Hostile members of a signed fabric, on real UDP/TCP on 127.0.0.1.

Every attacker holds the gossip key (so packets alone keep nobody out) and some
certificate: a valid one for *another* agent, a suffixed or colliding member name, an
expired one, one not valid yet, one from another CA, or none. The honest members are a
reconciler ``r1``, an agent ``h1`` and an agent ``h3`` that hears only through ``h1``.
:func:`bench.identity.hostile_run` plays the whole set (the benchmark counts the same
thing); the tests below check each promise of docs/identity.md against its result, then
a few paths on their own (a replay, parking, a poisoned watermark) where a smaller set-up
says more.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from bench.identity import (
    FORGED_VERSION,
    HostileResult,
    Injector,
    Links,
    Pki,
    entry_of,
    forged_sig,
    hostile_run,
    loopback_member,
    until,
)
from reconciler.fabric.api import Change, JSONValue
from reconciler.fabric.codec import Deltas, Entry
from reconciler.fabric.config import FabricConfig
from reconciler.fabric.keyring import Keyring
from reconciler.fabric.sim import SimCluster

REASONS = {"unauthorized", "bad-signature", "expired", "not-yet-valid", "wrong-ca", "unsigned"}


@pytest.fixture(scope="module")
def hostile() -> HostileResult:
    return asyncio.run(hostile_run())


def test_no_hostile_record_is_stored_shown_or_forwarded(hostile: HostileResult) -> None:
    # The set really was played (a shrinking set would make "nothing accepted" cheap).
    for label in (
        "h9 intents/h1", "h9 routes/billing", "h9 lease", "h9 garden", "h9 revocations",
        "h9 certs/h1", "h9 node as h1", "h9 inst/h9-as-h1", "h9#x intents/h1",
        "fake h1 node", "fake h1 intents/h3", "h1#evil node", "h5 inst", "h6 inst",
        "h7 inst", "h8 inst", "forged own echo h1", "forged own echo r1",
        "r1 intents signed by h9", "r1 intents tampered", "h9 after revocation",
    ):  # fmt: skip
        assert label in hostile.attempted
    assert len(hostile.attempted) >= 30
    # ... and no honest member holds or shows any of it (nor h1's records replayed under
    # the sibling name h1#evil), h3 included: h1 forwarded nothing it refused.
    assert hostile.accepted == {}
    assert hostile.hostile_accepted == 0


def test_refusals_are_counted_by_reason(hostile: HostileResult) -> None:
    for member in ("r1", "h1"):
        counted = hostile.refused[member]
        assert REASONS | {"revoked"} <= set(counted), (member, counted)
    # h3 hears only through h1: nothing hostile ever reached it to be refused.
    assert hostile.refused["h3"] == {}


def test_honest_records_still_flow(hostile: HostileResult) -> None:
    assert hostile.honest_ok == {
        "r1's newest intent at h1 and h3": True,
        "h1's records at r1 and h3": True,
        "allowed records of attackers arrive": True,
    }


def test_revocation_hides_the_revoked_member_everywhere(hostile: HostileResult) -> None:
    assert hostile.revoked_hidden == {
        "h9's records hidden everywhere": True,
        "h9 refused as revoked": True,
    }


def test_a_forged_echo_does_not_move_version_counters(hostile: HostileResult) -> None:
    assert hostile.own_version
    assert all(v < FORGED_VERSION for v in hostile.own_version.values())


# --- single paths -----------------------------------------------------------------------


async def test_a_replayed_older_intent_does_nothing() -> None:
    pki = Pki.create("replay")
    ring, links = Keyring.generate(), Links()
    r1_id, h9_id = pki.member("reconciler", "r1"), pki.member("agent", "h9")
    async with contextlib.AsyncExitStack() as stack:
        r1 = await stack.enter_async_context(loopback_member("r1", ring, pki.guard(r1_id), links))
        h1 = await stack.enter_async_context(
            loopback_member("h1", ring, pki.guard(pki.member("agent", "h1")), links, [r1.addr])
        )
        changes = h1.subscribe("intents/")
        r1.publish("intents/h1", {"node": "h1", "epoch": 1, "instances": ["old"]})
        await until(lambda: h1.get("r1", "intents/h1") is not None, 10, "the first intent")
        old = entry_of(h1, "r1", "intents/h1")
        r1.publish("intents/h1", {"node": "h1", "epoch": 2, "instances": ["new"]})
        newest = r1.version("r1", "intents/h1")
        await until(lambda: h1.version("r1", "intents/h1") == newest, 10, "the newer intent")
        seen: list[Change] = []
        while True:  # drain what was delivered so far
            try:
                async with asyncio.timeout(0.05):
                    seen.append(await anext(changes))
            except TimeoutError:
                break
        assert [c.value["epoch"] for c in seen if isinstance(c.value, dict)] == [1, 2]

        # Replayed straight into the engine, and as a sealed packet from outside.
        h1.engine._apply_entry(old, rebroadcast=True)
        injector = Injector(ring)
        try:
            injector.send(h1.addr, [old])
            # A marker behind it on the same socket: once it is refused, the replay (sent
            # first) has been handled too.
            marker: JSONValue = {"node": "h1", "epoch": 99}
            assert newest is not None
            v = newest + 1
            sig = forged_sig(h9_id, "r1", "intents/h1", v, marker)
            injector.send(h1.addr, [Entry("r1", "intents/h1", v, False, marker, sig)])
            await until(lambda: h1.refused_records().get("bad-signature", 0) >= 1, 10, "the marker")
        finally:
            injector.close()
        assert h1.version("r1", "intents/h1") == newest
        assert h1.get("r1", "intents/h1") == {"node": "h1", "epoch": 2, "instances": ["new"]}
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await anext(changes)
        # The owner itself hears the replay as an echo of an older version: nothing moves.
        before = r1.engine._version
        r1.engine._apply_entry(old, rebroadcast=True)
        assert r1.engine._version == before
        assert r1.version("r1", "intents/h1") == newest


def _signed_sim(names: dict[str, str], seed: int = 3) -> tuple[SimCluster, Pki]:
    sim = SimCluster(FabricConfig.lan(), seed=seed, keyring=Keyring.generate())
    pki = Pki.create("sim", now=sim.clock.wall())
    for name, role in names.items():
        ident = pki.member(role, name, now=sim.clock.wall())
        sim.add(name, guard=pki.guard(ident, wall=sim.clock.wall))
    for e in sim.nodes.values():
        for o in sim.nodes.values():
            if o is not e:
                e.seed_member(o.name, o.addr)
    return sim, pki


def test_records_that_arrive_before_their_certificate_wait_for_it() -> None:
    sim, pki = _signed_sim({"r1": "reconciler"})
    r1 = sim.nodes["r1"]
    h2 = pki.member("agent", "h2", now=sim.clock.wall())
    h2_guard = pki.guard(h2, wall=sim.clock.wall)
    r1.seed_member("h2", "10.0.9.9:7946")
    node: JSONValue = {"node_id": "h2"}
    r1._apply_entry(Entry("h2", "node", 5, False, node, h2_guard.sign("h2", "node", 5, node)), True)
    assert r1.get("h2", "node") is None  # parked: not stored, not shown, not refused
    assert r1.store.get("h2", "node") is None
    assert r1.guard is not None
    key, cert = h2_guard.cert_record()
    r1._apply_entry(Entry("h2", key, 4, False, cert, h2_guard.sign("h2", key, 4, cert)), True)
    assert r1.get("h2", "node") == node  # admitted once the certificate came
    assert getattr(r1.guard, "refused", None) == {}


@pytest.mark.parametrize("poison", [False, True])
def test_a_forged_watermark_does_not_stop_anti_entropy(poison: bool) -> None:
    """Any keyring holder can send a ``deltas`` message claiming an owner's watermark is
    huge. Were it believed, the victim (and everyone it syncs with) would never again ask
    for that owner's records: a missed eager push of the reconciler would never be
    repaired. The claim is capped at what the member holds."""
    sim, _ = _signed_sim({"r1": "reconciler", "h1": "agent", "h2": "agent", "h9": "agent"})
    sim.run(10.0)
    r1, h1, h9 = sim.nodes["r1"], sim.nodes["h1"], sim.nodes["h9"]
    if poison:
        h9._send_packet(h1.addr, [Deltas({"r1": FORGED_VERSION}, ())], piggyback=False)
    sim.run(1.0)
    assert h1.store.watermark("r1") <= r1.store.watermark("r1")
    # h1 misses every eager push of a new intent ...
    for other in sim.nodes.values():
        if other is not h1:
            sim.net.block(other.addr, h1.addr, both=False)
    r1.publish("intents/h1", {"node": "h1", "epoch": 1})
    sim.run(3.0)
    sim.net.heal()
    # ... and anti-entropy brings it within seconds, poisoned or not.
    assert sim.run_until(lambda: h1.get("r1", "intents/h1") is not None, within=30.0)
    assert all(e.store.watermark("r1") <= r1.store.watermark("r1") for e in sim.nodes.values())
