"""The in-memory network models TCP: handshakes, segments, RTOs, timeouts, wire bytes."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from reconciler.clock import VirtualClock
from reconciler.errors import ConfigError
from reconciler.fabric.memory import (
    MSS,
    RTO_MIN,
    SYN_RTO,
    TCP_HEADER,
    UDP_HEADER,
    GilbertElliott,
    MemoryNetwork,
    plan_stream,
)

A, B = "10.0.0.1:7946", "10.0.0.2:7946"


class Scripted(random.Random):
    """A random source whose ``random()`` draws are given (then ``then`` forever)."""

    def __init__(self, draws: Iterable[float], then: float = 0.99) -> None:
        super().__init__(0)
        self._draws = list(draws)
        self._then = then

    def random(self) -> float:
        return self._draws.pop(0) if self._draws else self._then


def network(**kw: object) -> tuple[VirtualClock, MemoryNetwork, list[tuple[float, bytes, bool]]]:
    clock = VirtualClock()
    net = MemoryNetwork(clock, **kw)  # type: ignore[arg-type]
    got: list[tuple[float, bytes, bool]] = []
    net.transport(A).set_receiver(lambda src, data, stream: None)
    net.transport(B).set_receiver(lambda src, data, stream: got.append((clock.now(), data, stream)))
    return clock, net, got


def test_a_stream_takes_a_handshake_and_a_hop_without_loss() -> None:
    clock, net, got = network(latency=0.001)
    net.transport(A).send_stream(B, b"x" * 100)
    clock.advance(1.0)
    # SYN, SYN-ACK, then the data: three one-way trips.
    assert [(round(t, 6), len(d), s) for t, d, s in got] == [(0.003, 100, True)]


def test_a_lost_syn_costs_the_kernels_retransmission_timeout() -> None:
    # loss 0.5; the first draw (the SYN) is below it: lost; every later packet arrives.
    clock, net, got = network(latency=0.001, loss=0.5, rng=Scripted([0.1]))
    net.transport(A).send_stream(B, b"ping")
    clock.advance(0.9)
    assert got == []  # a second has not passed: the SYN has not been sent again
    clock.advance(1.0)
    assert len(got) == 1
    assert got[0][0] >= SYN_RTO
    assert got[0][0] == pytest.approx(SYN_RTO + 0.003)
    assert net.packets_lost == 1


def test_a_lost_data_segment_costs_an_rto_that_doubles() -> None:
    # SYN ok, SYN-ACK ok, then the one data segment is lost twice.
    draws = iter([False, False, True, True, False])
    plan = plan_stream(100, lambda forward: next(draws), lambda: 0.001, timeout=10.0)
    assert plan.delay == pytest.approx(0.002 + RTO_MIN + 2 * RTO_MIN + 0.001)
    assert plan.data_retries == 2


def test_a_stream_that_cannot_connect_within_the_timeout_delivers_nothing() -> None:
    # Every SYN lost: attempts at 0, 1 s (the next would be at 3 s, past a 2 s timeout).
    plan = plan_stream(100, lambda forward: forward, lambda: 0.001, timeout=2.0)
    assert plan.delay is None
    assert plan.sender_segments == 2
    assert plan.sender_bytes == 2 * TCP_HEADER
    assert plan.receiver_segments == 0


def test_the_receiver_gives_up_when_the_data_takes_longer_than_its_timeout() -> None:
    # Connected, then every data segment lost: RTOs 0.2, 0.4, 0.8... pass 2 s.
    draws = iter([False, False])
    plan = plan_stream(100, lambda f: next(draws, True), lambda: 0.001, timeout=2.0)
    assert plan.delay is None
    assert plan.data_retries >= 3


def test_a_partition_fails_the_stream_and_costs_only_syns() -> None:
    clock, net, got = network(latency=0.001, stream_timeout=10.0)
    net.partition([A], [B])
    net.transport(A).send_stream(B, b"y" * 5000)
    clock.advance(30.0)
    assert got == []
    assert (net.streams_sent, net.streams_failed, net.streams_delivered) == (1, 1, 0)
    # SYNs at 0, 1, 3 and 7 s, then the 10 s connect timeout; no payload went out.
    assert net.bytes_sent[A] == 4 * TCP_HEADER
    assert net.payload_bytes_sent[A] == 0
    net.heal()
    net.transport(A).send_stream(B, b"y")
    clock.advance(1.0)
    assert len(got) == 1


def test_a_down_member_gets_nothing_and_a_stream_cut_off_in_flight_is_lost() -> None:
    clock, net, got = network(latency=0.5)
    net.set_down(B)
    net.transport(A).send_stream(B, b"z")
    net.transport(A).send_packet(B, b"z")
    clock.advance(5.0)
    assert got == []
    net.set_down(B, False)
    net.transport(A).send_stream(B, b"z")  # arrives at 1.5 s; B dies at 1 s
    clock.advance(1.0)
    net.set_down(B)
    clock.advance(5.0)
    assert got == []
    assert (net.streams_refused, net.streams_failed) == (1, 1)  # a reset; cut off in flight


def test_bytes_are_counted_on_the_wire_with_headers() -> None:
    clock, net, _ = network(latency=0.001)
    net.transport(A).send_packet(B, b"d" * 100)
    assert (net.bytes_sent[A], net.payload_bytes_sent[A], net.packets_sent[A]) == (
        100 + UDP_HEADER,
        100,
        1,
    )
    net.transport(A).send_stream(B, b"s" * 3000)
    clock.advance(1.0)
    framed = 3000 + 4  # the transport's length prefix
    segments = -(-framed // MSS)
    assert segments == 3
    # Sender: SYN, ACK, 3 data segments, FIN, ACK. Receiver: SYN-ACK, 3 ACKs, FIN, ACK.
    assert net.packets_sent[A] == 1 + 7
    assert net.bytes_sent[A] == 100 + UDP_HEADER + 7 * TCP_HEADER + framed
    assert net.payload_bytes_sent[A] == 100 + 3000
    assert (net.packets_sent[B], net.bytes_sent[B]) == (6, 6 * TCP_HEADER)


def test_lossless_streams_keep_the_old_model() -> None:
    clock, net, got = network(latency=0.001, loss=0.9, lossy_streams=False)
    for _ in range(20):
        net.transport(A).send_stream(B, b"q")
    clock.advance(1.0)
    assert len(got) == 20
    assert all(t == pytest.approx(0.001) for t, _, _ in got)


def test_bursty_loss_matches_its_long_run_rate_and_burst_length() -> None:
    ge = GilbertElliott.with_rate(0.3, mean_burst=4.0)
    assert ge.rate == pytest.approx(0.3)
    clock, net, got = network(latency=0.001, burst=ge, rng=random.Random(7))
    n = 40_000
    sent = [i.to_bytes(4, "big") for i in range(n)]
    for data in sent:
        net.transport(A).send_packet(B, data)
    clock.advance(1.0)
    arrived = {d for _, d, _ in got}
    lost = [d not in arrived for d in sent]
    assert sum(lost) / n == pytest.approx(0.3, abs=0.02)
    runs, run = [], 0
    for gone in lost:
        if gone:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    # Bursts of 4 on average; independent loss at 30% would give runs of 1.43.
    assert sum(runs) / len(runs) == pytest.approx(4.0, rel=0.15)


def test_reordering_lets_later_packets_overtake() -> None:
    clock, net, got = network(latency=0.001, reorder=0.3, reorder_delay=0.01)
    for i in range(200):
        clock.advance(0.001)
        net.transport(A).send_packet(B, i.to_bytes(2, "big"))
    clock.advance(1.0)
    order = [int.from_bytes(d, "big") for _, d, _ in got]
    assert sorted(order) == list(range(200))
    assert order != sorted(order)


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"loss": 1.5}, "loss and reorder"),
        ({"stream_timeout": 0.0}, "stream_timeout"),
    ],
)
def test_bad_settings_are_one_line_errors(kw: dict[str, float], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        MemoryNetwork(VirtualClock(), **kw)  # type: ignore[arg-type]


def test_bad_burst_parameters_are_refused() -> None:
    with pytest.raises(ConfigError, match="p_leave"):
        GilbertElliott(0.1, 0.0)
    with pytest.raises(ConfigError, match="rate"):
        GilbertElliott.with_rate(1.0, 3.0)
