"""The packet decoder and the receive loop: nothing a peer sends may escape them."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import PacketError
from reconciler.fabric import codec
from reconciler.fabric.codec import (
    Ack,
    Alive,
    Dead,
    Deltas,
    Digest,
    Entry,
    MemberRow,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)
from reconciler.fabric.config import FabricConfig
from reconciler.fabric.keyring import Keyring
from reconciler.fabric.sim import SimCluster

FIXTURE_CHECK = HealthCheck.function_scoped_fixture

SAMPLES: list[codec.Message] = [
    Ping(1, "a", "b", "10.0.0.1:1"),
    PingReq(2, "a", "10.0.0.1:1", "b", "10.0.0.2:1", True),
    Ack(3),
    Nack(4),
    Alive("a", "10.0.0.1:1", 5),
    Suspect("a", 5, "b"),
    Dead("a", 5, "a"),
    Entry("a", "routes/x", 9, False, {"w": [1, 2.5, None, "s"]}),
    Entry("a", "gone", 10, True, None),
    Digest("b", "10.0.0.2:1", True, {"a": 9}),
    Deltas({"a": 9}, (Entry("a", "k", 9, False, 1),)),
    PushPull(
        7,
        True,
        False,
        "b",
        "10.0.0.2:1",
        (MemberRow("a", "10.0.0.1:1", 1, 0),),
        {"a": 1},
        Deltas({}, ()),
    ),  # fmt: skip
]


def test_every_message_round_trips() -> None:
    assert codec.decode(codec.encode(SAMPLES)) == SAMPLES


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe",
        b"{}",
        b"[1]",
        b"[[99, 1]]",
        b'[[1, -1, "a", "b", "c"]]',
        b'[[1, 1, "", "b", "c"]]',
        b"[[3, true]]",
        b"[[3, 1.5]]",
        b"[[3, 99999999999999999999999]]",
        b'[[8, "a", "k", 1, 2, 0]]',
        b'[[5, "a", "b", NaN]]',
        b"[" * 100_000,
        b'[[11, 1, 0, 0, "a", "b", [["x", "y", 1, 9]], {}, {}, []]]',
        ("[[3, " + "9" * 5000 + "]]").encode(),
    ],
)
def test_malformed_packets_raise_packet_error_only(raw: bytes) -> None:
    with pytest.raises(PacketError):
        codec.decode(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_escape_the_decoder(raw: bytes) -> None:
    try:
        codec.decode(raw)
    except PacketError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, max_size=5))
def test_random_json_never_escapes_the_decoder(obj: list[object]) -> None:
    try:
        codec.decode(json.dumps(obj).encode())
    except PacketError:
        pass


@pytest.fixture(scope="module")
def sim() -> SimCluster:
    s = SimCluster(FabricConfig.local())
    a = s.add("a")
    s.add("b").join([a.addr])
    s.run(1)
    return s


@settings(max_examples=400, deadline=None, suppress_health_check=[FIXTURE_CHECK])
@given(
    st.sampled_from(range(len(SAMPLES))),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.booleans(),
)
def test_mutated_packets_never_escape_the_receive_loop(
    sim: SimCluster, which: int, flips: list[tuple[int, int]], stream: bool
) -> None:
    node = sim.nodes["a"]
    raw = bytearray(b"\x00" + codec.encode([SAMPLES[which]]))
    for pos, byte in flips:
        raw[pos % len(raw)] = byte
    node.receive("10.0.0.2:1", bytes(raw), stream)  # must not raise
    sim.run(0.3)
    assert node.stats.handler_errors == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[FIXTURE_CHECK])
@given(st.lists(json_values, max_size=4))
def test_structured_garbage_never_escapes_the_receive_loop(
    sim: SimCluster, obj: list[object]
) -> None:
    node = sim.nodes["a"]
    node.receive("10.0.0.2:1", b"\x00" + json.dumps(obj).encode(), False)
    assert node.stats.handler_errors == 0


def test_a_member_without_the_key_can_neither_join_nor_inject() -> None:
    ring = Keyring.generate()
    sim = SimCluster(FabricConfig.local(), keyring=ring)
    a = sim.add("a")
    sim.add("b").join([a.addr])
    assert sim.run_until(sim.full_mesh, within=5)
    intruder = sim.add("evil", keyring=Keyring.generate())
    intruder.publish("intents/a", {"run": "bad"})
    intruder.join([a.addr])
    plain = sim.add("plain", keyring=None)
    plain.join([a.addr])
    sim.run(5)
    for name in ("a", "b"):
        node = sim.nodes[name]
        assert set(node.members) == {"a", "b"}
        assert node.view("intents/") == {}
    assert sim.nodes["a"].stats.dropped_auth > 0
    # Another cluster name with the same key does not authenticate either.
    other = sim.add("other", cluster="elsewhere")
    other.join([a.addr])
    sim.run(3)
    assert set(sim.nodes["a"].members) == {"a", "b"}


def test_key_rotation_without_downtime() -> None:
    old = Keyring.generate()
    rings = {n: Keyring(old.keys) for n in ("a", "b", "c")}
    sim = SimCluster(FabricConfig.local())
    first = sim.add("a", keyring=rings["a"])
    for n in ("b", "c"):
        sim.add(n, keyring=rings[n]).join([first.addr])
    assert sim.run_until(sim.full_mesh, within=5)
    new = Keyring.generate().primary
    for step in ("install", "use", "remove"):
        for i, ring in enumerate(rings.values()):
            if step == "install":
                ring.install(new)
            elif step == "use":
                ring.use(new)
            else:
                ring.remove(old.primary)
            sim.run(0.3)  # the members change one at a time, as an operator would
            first.publish("tick", f"{step}{i}")
        sim.run(2)
    assert sim.full_mesh()
    sim.run(5)
    assert sim.full_mesh()
    assert all(n.get("a", "tick") == "remove2" for n in sim.nodes.values())
    dead = [m for evs in sim.member_events.values() for _, m in evs if m.state == "dead"]
    assert dead == []


# --- the simulator's fast paths give the same bytes and the same answers ----------------


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, max_size=5))
def test_fast_encoder_writes_what_the_stdlib_encoder_writes(obj: list[object]) -> None:
    try:
        slow = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # infinity: both refuse it
        with pytest.raises(ValueError, match="JSON compliant"):
            codec.dumps(obj)
        return
    assert codec.dumps(obj) == slow.encode()


def test_packets_of_pre_encoded_messages_are_byte_identical() -> None:
    parts = [codec.encode_one(m) for m in SAMPLES]
    assert codec.join(parts) == codec.encode(SAMPLES)
    assert codec.join([]) == codec.encode([]) == b"[]"
    assert [codec.wire_size(m) for m in SAMPLES] == [len(p) + 1 for p in parts]


def test_a_circular_value_is_still_a_value_error() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="[Cc]ircular"):
        codec.dumps(loop)


@pytest.mark.parametrize(
    "raw", [b"[[3,1]]", b" [[3,1]]", b"[[3,1]] ", b"[ [3 , 1] ]", b"[[3,1]][", b"[[3,1]]]"]
)
def test_decoder_fast_path_agrees_with_the_full_decoder(raw: bytes) -> None:
    try:
        want: object = json.loads(raw)
    except ValueError:
        want = PacketError
    if want is PacketError:
        with pytest.raises(PacketError):
            codec.decode(raw)
    else:
        assert codec.decode(raw) == [Ack(1)]


def test_queue_hands_out_encoded_broadcasts_like_the_messages() -> None:
    from reconciler.fabric._queue import BroadcastQueue

    def filled() -> BroadcastQueue:
        q = BroadcastQueue()
        for i, m in enumerate(SAMPLES[4:9]):
            q.queue(i, m)
        return q

    a, b = filled(), filled()
    for _ in range(3):
        assert b.take_wire(300, 2) == [codec.encode_one(m) for m in a.take(300, 2)]
    assert len(a) == len(b)


def test_nonces_are_distinct_across_pool_refills() -> None:
    ring = Keyring.generate()
    nonces = {ring.encrypt(b"x", b"c")[1:13] for _ in range(10_000)}
    assert len(nonces) == 10_000
