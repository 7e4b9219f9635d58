"""An in-memory network for tests and the simulator: latency, loss and partitions.

Packets are delivered through the injected clock after ``latency`` (plus jitter), lost
with probability ``loss``; streams are never lost but do not cross a partition or reach a
member that is down. Every byte sent is counted per sender.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable

from reconciler.clock import Clock

from .transport import Receiver


class MemoryNetwork:
    def __init__(
        self,
        clock: Clock,
        *,
        latency: float = 0.001,
        jitter: float = 0.0,
        loss: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.rng = rng or random.Random(0)
        self._receivers: dict[str, Receiver] = {}
        self._down: set[str] = set()
        self._group: dict[str, int] = {}  # addr -> partition group (absent: group 0)
        self._slow: dict[str, float] = {}  # addr -> extra latency of packets to/from it
        self._blocked: set[tuple[str, str]] = set()  # (src, dst) links that drop everything
        self.bytes_sent: defaultdict[str, int] = defaultdict(int)
        self.packets_sent: defaultdict[str, int] = defaultdict(int)
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

    def _deliver(self, src: str, dst: str, data: bytes, stream: bool) -> None:
        down, blocked, group = self._down, self._blocked, self._group  # _reachable, inlined
        reachable = (
            src not in down
            and dst not in down
            and dst in self._receivers
            and not (blocked and (src, dst) in blocked)
            and (not group or group.get(src, 0) == group.get(dst, 0))
        )
        if reachable or not stream:  # a TCP connect that fails sends no payload
            self.bytes_sent[src] += len(data)
            self.packets_sent[src] += 1
        if not reachable:
            return
        if not stream and self.loss and self.rng.random() < self.loss:
            return
        if self._slow:
            delay = self.latency + self._slow.get(src, 0.0) + self._slow.get(dst, 0.0)
        else:
            delay = self.latency
        if self.jitter:
            delay += self.rng.random() * self.jitter
        receivers = self._receivers
        reachable_at_arrival = self._reachable

        def arrive() -> None:
            if reachable_at_arrival(src, dst):
                receivers[dst](src, data, stream)

        self._post(delay, arrive)


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
        self._net._deliver(self._addr, addr, data, False)

    def send_stream(self, addr: str, data: bytes) -> None:
        self._net._deliver(self._addr, addr, data, True)

    def close(self) -> None:
        self._net._receivers.pop(self._addr, None)
