"""An in-memory network for tests and the simulator: latency, loss, partitions, TCP.

A datagram (UDP) arrives after ``latency`` (plus ``jitter``, plus ``set_slow`` extras) or
is lost with the link's loss probability. A stream is a TCP connection, as
:mod:`.udp` opens one per stream (``length | data``, then close), modelled packet by
packet by :func:`plan_stream`: SYN and SYN-ACK (a lost one costs the kernel's SYN
retransmission timeout, 1 s doubling, until the sender's connect timeout), data segments
of at most :data:`MSS` bytes (a lost one costs an RTO, 200 ms doubling; the receiver
gives up ``stream_timeout`` after it accepted), an ACK per segment and the FIN exchange.
The delivery delay is the sum; a stream that fails delivers nothing, as does one to a
member that is down or across a partition or blocked link. ``lossy_streams=False``
restores the old model (streams never lost, one hop of latency) for comparison.

Options: ``reorder`` (a fraction of packets held back ``reorder_delay`` seconds, so later
ones overtake them, as netem's ``reorder``) and ``burst`` (bursty loss:
:class:`GilbertElliott`, per directed link, replacing ``loss``).

Bytes are counted per sender on the wire (``bytes_sent``: IPv4+UDP headers, 28 B per
datagram; IPv4+TCP headers, 40 B per segment, no options; every retransmission, SYN,
ACK and FIN) and as payload (``payload_bytes_sent``: what the transport was handed).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from reconciler.clock import Clock
from reconciler.errors import ConfigError

from .transport import Receiver

#: Bytes of IPv4 + UDP headers on every datagram.
UDP_HEADER = 28
#: Bytes of IPv4 + TCP headers on every segment (options left out).
TCP_HEADER = 40
#: TCP payload per segment on a 1500-byte Ethernet path with timestamps (1500 - 52).
MSS = 1448
#: The length prefix :mod:`.udp` writes before a stream's data.
STREAM_FRAME = 4
#: Linux: first SYN (and SYN-ACK) retransmission timeout, doubled per retry.
SYN_RTO = 1.0
#: Linux TCP_RTO_MIN / TCP_RTO_MAX: the data retransmission timeout's bounds.
RTO_MIN = 0.2
RTO_MAX = 120.0


@dataclass(frozen=True)
class GilbertElliott:
    """Bursty loss: a two-state Markov chain (good, bad) per directed link.

    The chain steps once per packet on that link: from good to bad with probability
    ``p_enter``, from bad to good with ``p_leave``; a packet is lost with ``loss_good`` or
    ``loss_bad`` in the state it finds. Long-run loss rate: ``pi_bad * loss_bad +
    (1 - pi_bad) * loss_good`` with ``pi_bad = p_enter / (p_enter + p_leave)``; a bad
    spell lasts ``1 / p_leave`` packets on average. :meth:`with_rate` builds the classic
    Gilbert model (good loses nothing, bad loses everything) from a rate and a burst length.
    """

    p_enter: float
    p_leave: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    def __post_init__(self) -> None:
        for name in ("p_enter", "p_leave", "loss_good", "loss_bad"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"Gilbert-Elliott {name} must be in [0, 1]")
        if self.p_leave <= 0.0:
            raise ConfigError("Gilbert-Elliott p_leave must be > 0 (else a bad link stays bad)")

    @classmethod
    def with_rate(cls, rate: float, mean_burst: float) -> GilbertElliott:
        """Lose ``rate`` of the packets in bursts of ``mean_burst`` packets on average."""
        if not 0.0 <= rate < 1.0 or mean_burst < 1.0:
            raise ConfigError("bursty loss needs a rate in [0, 1) and a mean burst >= 1 packet")
        p_leave = 1.0 / mean_burst
        return cls(min(1.0, rate * p_leave / (1.0 - rate)), p_leave)

    @property
    def pi_bad(self) -> float:
        return self.p_enter / (self.p_enter + self.p_leave)

    @property
    def rate(self) -> float:
        """The long-run fraction of packets lost."""
        return self.pi_bad * self.loss_bad + (1.0 - self.pi_bad) * self.loss_good


@dataclass(slots=True)
class StreamPlan:
    """What one TCP stream does on the wire: :func:`plan_stream`'s answer."""

    #: Seconds from ``send_stream`` until the receiver holds the data; None: it failed.
    delay: float | None
    #: Segments and bytes (headers included) the sender and the receiver put on the wire.
    sender_segments: int = 0
    sender_bytes: int = 0
    receiver_segments: int = 0
    receiver_bytes: int = 0
    #: Lost SYN or SYN-ACK rounds, lost data segments (retransmitted).
    syn_retries: int = 0
    data_retries: int = 0


def plan_stream(
    size: int,
    lost: Callable[[bool], bool],
    one_way: Callable[[], float],
    timeout: float,
) -> StreamPlan:
    """The fate of a ``size``-byte stream on a lossy path (the pure core of the model).

    ``lost(forward)`` says whether the next packet sender→receiver (``forward``) or back is
    lost; ``one_way()`` is the next packet's transit time. ``timeout`` is the transport's
    stream timeout: the sender's for connecting, the receiver's for reading after accept.
    Handshake rounds start at 0, 1, 3, 7... s (SYN_RTO doubling); a round succeeds when
    both its SYN and SYN-ACK arrive. Data segments go back to back; each lost one costs
    the current RTO (RTO_MIN doubling while the same segment keeps being lost, reset by
    an ACK), summed. ACK loss is not modelled (a later cumulative ACK covers it), nor
    congestion windows or fast retransmit: every loss costs a full RTO, which is
    pessimistic for streams of many segments.
    """
    plan = StreamPlan(None)
    t, rto = 0.0, SYN_RTO
    while True:  # the three-way handshake
        plan.sender_segments += 1
        plan.sender_bytes += TCP_HEADER
        if not lost(True):
            at_server = t + one_way()
            plan.receiver_segments += 1
            plan.receiver_bytes += TCP_HEADER
            if not lost(False):
                connected = at_server + one_way()
                if connected > timeout:
                    return plan
                break
        plan.syn_retries += 1
        t += rto
        rto *= 2.0
        if t >= timeout:
            return plan
    plan.sender_segments += 1  # the handshake's last ACK (data carry it again if lost)
    plan.sender_bytes += TCP_HEADER
    total = size + STREAM_FRAME
    t, rto, last = connected, RTO_MIN, 0.0
    deadline = connected + timeout  # the receiver reads for ``timeout`` after accept
    while total > 0:
        seg = min(MSS, total)
        total -= seg
        while True:
            plan.sender_segments += 1
            plan.sender_bytes += TCP_HEADER + seg
            if not lost(True):
                break
            plan.data_retries += 1
            t += rto
            rto = min(rto * 2.0, RTO_MAX)
            if t > deadline:
                return plan
        rto = RTO_MIN
        last = max(last, one_way())  # delivered in order: the slowest segment decides
        plan.receiver_segments += 1  # its ACK
        plan.receiver_bytes += TCP_HEADER
    if t + last > deadline:
        return plan
    plan.sender_segments += 2  # FIN, ACK of the receiver's FIN
    plan.sender_bytes += 2 * TCP_HEADER
    plan.receiver_segments += 2
    plan.receiver_bytes += 2 * TCP_HEADER
    plan.delay = t + last
    return plan


class MemoryNetwork:
    def __init__(
        self,
        clock: Clock,
        *,
        latency: float = 0.001,
        jitter: float = 0.0,
        loss: float = 0.0,
        rng: random.Random | None = None,
        lossy_streams: bool = True,
        stream_timeout: float = 10.0,
        reorder: float = 0.0,
        reorder_delay: float = 0.01,
        burst: GilbertElliott | None = None,
    ) -> None:
        if not 0.0 <= loss <= 1.0 or not 0.0 <= reorder <= 1.0:
            raise ConfigError("memory network: loss and reorder must be in [0, 1]")
        if stream_timeout <= 0 or latency < 0 or jitter < 0 or reorder_delay < 0:
            raise ConfigError("memory network: times must be >= 0 (stream_timeout > 0)")
        self.clock = clock
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.rng = rng or random.Random(0)
        self.lossy_streams = lossy_streams
        self.stream_timeout = stream_timeout
        self.reorder = reorder
        self.reorder_delay = reorder_delay
        self.burst = burst
        self._bad: set[tuple[str, str]] = set()  # links in the bad state (bursty loss)
        self._receivers: dict[str, Receiver] = {}
        self._down: set[str] = set()
        self._group: dict[str, int] = {}  # addr -> partition group (absent: group 0)
        self._slow: dict[str, float] = {}  # addr -> extra latency of packets to/from it
        self._blocked: set[tuple[str, str]] = set()  # (src, dst) links that drop everything
        #: Wire bytes (headers included) and wire packets per sender.
        self.bytes_sent: defaultdict[str, int] = defaultdict(int)
        self.packets_sent: defaultdict[str, int] = defaultdict(int)
        #: What the transport was handed to send, per sender (no headers, no retransmits).
        self.payload_bytes_sent: defaultdict[str, int] = defaultdict(int)
        #: Packets the network dropped for loss (datagrams and TCP segments).
        self.packets_lost = 0
        #: Streams handed over, delivered, failed (timed out, or cut off by a partition or
        #: a death in flight) and refused (sent to a member that is down: a reset); the
        #: rest are in flight.
        self.streams_sent = 0
        self.streams_delivered = 0
        self.streams_failed = 0
        self.streams_refused = 0
        self._next_port = 1
        # A delivery is never cancelled: the virtual clock's handle-less ``post``.
        post = getattr(clock, "post", None)
        self._post: Callable[[float, Callable[[], None]], object] = (
            post if post is not None else clock.call_later
        )

    def transport(self, addr: str | None = None) -> MemoryTransport:
        if addr is None:
            addr = f"10.0.0.1:{self._next_port}"
            self._next_port += 1
        return MemoryTransport(self, addr)

    # Faults.

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: members in different groups cannot reach each other."""
        self._group = {addr: i + 1 for i, g in enumerate(groups) for addr in g}

    def heal(self) -> None:
        self._group = {}
        self._blocked.clear()

    def block(self, src: str, dst: str, both: bool = True) -> None:
        """Drop everything sent from ``src`` to ``dst`` (and back, if ``both``)."""
        self._blocked.add((src, dst))
        if both:
            self._blocked.add((dst, src))

    def set_down(self, addr: str, down: bool = True) -> None:
        """A member that is down neither sends nor receives (a killed process)."""
        if down:
            self._down.add(addr)
        else:
            self._down.discard(addr)

    def set_slow(self, addr: str, extra_latency: float) -> None:
        if extra_latency > 0:
            self._slow[addr] = extra_latency
        else:
            self._slow.pop(addr, None)

    def _reachable(self, src: str, dst: str) -> bool:
        if src in self._down or dst in self._down or dst not in self._receivers:
            return False
        if self._blocked and (src, dst) in self._blocked:
            return False
        return not self._group or self._group.get(src, 0) == self._group.get(dst, 0)

    # The link model.

    def _lost(self, src: str, dst: str) -> bool:
        """Whether the next packet from ``src`` to ``dst`` is lost (and count it)."""
        ge = self.burst
        if ge is None:
            if not self.loss or self.rng.random() >= self.loss:
                return False
        else:
            link, bad = (src, dst), self._bad
            was_bad = link in bad
            p = ge.loss_bad if was_bad else ge.loss_good
            gone = bool(p) and self.rng.random() < p
            if was_bad:
                if self.rng.random() < ge.p_leave:
                    bad.discard(link)
            elif self.rng.random() < ge.p_enter:
                bad.add(link)
            if not gone:
                return False
        self.packets_lost += 1
        return True

    def _transit(self, src: str, dst: str) -> float:
        """One packet's time in flight from ``src`` to ``dst``."""
        if self._slow:
            delay = self.latency + self._slow.get(src, 0.0) + self._slow.get(dst, 0.0)
        else:
            delay = self.latency
        if self.jitter:
            delay += self.rng.random() * self.jitter
        if self.reorder and self.rng.random() < self.reorder:
            delay += self.reorder_delay
        return delay

    def _arrive(self, delay: float, src: str, dst: str, data: bytes, stream: bool) -> None:
        receivers = self._receivers
        reachable_at_arrival = self._reachable

        def arrive() -> None:
            if reachable_at_arrival(src, dst):
                if stream:
                    self.streams_delivered += 1
                receivers[dst](src, data, stream)
            elif stream:  # cut off by a partition or a death while in flight
                self.streams_failed += 1

        self._post(delay, arrive)

    def _send_datagram(self, src: str, dst: str, data: bytes) -> None:
        down, blocked, group = self._down, self._blocked, self._group  # _reachable, inlined
        self.bytes_sent[src] += len(data) + UDP_HEADER
        self.payload_bytes_sent[src] += len(data)
        self.packets_sent[src] += 1
        if (
            src in down
            or dst in down
            or dst not in self._receivers
            or (blocked and (src, dst) in blocked)
            or (group and group.get(src, 0) != group.get(dst, 0))
        ):
            return
        if (self.loss or self.burst is not None) and self._lost(src, dst):
            return
        self._arrive(self._transit(src, dst), src, dst, data, False)

    def _send_stream(self, src: str, dst: str, data: bytes) -> None:
        if src in self._down:  # a killed process sends nothing
            return
        self.streams_sent += 1
        if not self._reachable(src, dst):
            # A closed port or a killed process answers the SYN with a reset; across a
            # partition the SYNs go unanswered until the connect timeout.
            if dst in self._down or dst not in self._receivers:
                syns = 1
                self.streams_refused += 1
            else:
                syns = _syn_attempts(self.stream_timeout)
                self.streams_failed += 1
            self.bytes_sent[src] += syns * TCP_HEADER
            self.packets_sent[src] += syns
            return
        self.payload_bytes_sent[src] += len(data)
        if not self.lossy_streams:  # the old model: one hop, never lost
            self.bytes_sent[src] += len(data) + TCP_HEADER
            self.packets_sent[src] += 1
            self._arrive(self._transit(src, dst), src, dst, data, True)
            return
        lossy = bool(self.loss) or self.burst is not None

        def lost(forward: bool) -> bool:
            return lossy and (self._lost(src, dst) if forward else self._lost(dst, src))

        plan = plan_stream(len(data), lost, lambda: self._transit(src, dst), self.stream_timeout)
        self.bytes_sent[src] += plan.sender_bytes
        self.packets_sent[src] += plan.sender_segments
        self.bytes_sent[dst] += plan.receiver_bytes
        self.packets_sent[dst] += plan.receiver_segments
        if plan.delay is None:
            self.streams_failed += 1
            return
        self._arrive(plan.delay, src, dst, data, True)


def _syn_attempts(timeout: float) -> int:
    """SYNs sent before giving up on an unanswered connect (at 0, 1, 3, 7... s)."""
    n, t, rto = 1, SYN_RTO, SYN_RTO
    while t < timeout:
        n, rto = n + 1, rto * 2.0
        t += rto
    return n


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, addr: str) -> None:
        self._net = network
        self._addr = addr

    @property
    def addr(self) -> str:
        return self._addr

    def set_receiver(self, receiver: Receiver) -> None:
        self._net._receivers[self._addr] = receiver

    def send_packet(self, addr: str, data: bytes) -> None:
        self._net._send_datagram(self._addr, addr, data)

    def send_stream(self, addr: str, data: bytes) -> None:
        self._net._send_stream(self._addr, addr, data)

    def close(self) -> None:
        self._net._receivers.pop(self._addr, None)
