"""A whole cluster on virtual time and the in-memory network: tests and the simulator.

The members run the real :class:`~.engine.Engine`; only time and the network are fake.
``loss`` applies to datagrams and to the packets of TCP streams alike (see :mod:`.memory`;
``lossy_streams=False`` keeps streams lossless), and streams time out after the
config's ``stream_timeout``, as the real transport's do.
A member may be given a :class:`~.api.RecordGuard` (signed records, docs/identity.md);
its certificate record is then published before anything else, as :class:`~.fabric.Fabric`
does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler.clock import VirtualClock

from .api import Change, Member, RecordGuard
from .config import FabricConfig
from .engine import Engine
from .keyring import Keyring
from .memory import GilbertElliott, MemoryNetwork
from .versions import version_source


class SimCluster:
    def __init__(
        self,
        config: FabricConfig | None = None,
        *,
        seed: int = 1,
        latency: float = 0.002,
        jitter: float = 0.001,
        loss: float = 0.0,
        keyring: Keyring | None = None,
        cluster: str = "myco",
        lossy_streams: bool = True,
        reorder: float = 0.0,
        reorder_delay: float = 0.01,
        burst: GilbertElliott | None = None,
    ) -> None:
        self.config = config or FabricConfig.lan()
        self.rng = random.Random(seed)
        self.clock = VirtualClock()
        self.net = MemoryNetwork(
            self.clock, latency=latency, jitter=jitter, loss=loss, rng=random.Random(seed + 1),
            lossy_streams=lossy_streams, stream_timeout=self.config.stream_timeout,
            reorder=reorder, reorder_delay=reorder_delay, burst=burst,
        )  # fmt: skip
        self.keyring = keyring
        self.cluster = cluster
        self.nodes: dict[str, Engine] = {}
        self.changes: dict[str, list[tuple[float, Change]]] = {}
        self.member_events: dict[str, list[tuple[float, Member]]] = {}
        self.on_change: Callable[[str, Change], None] | None = None
        self.on_member: Callable[[str, Member], None] | None = None
        self.record = True

    def add(
        self,
        name: str,
        *,
        addr: str | None = None,
        keyring: Keyring | None | bool = True,
        state_dir: Path | None = None,
        seeds: Sequence[str] = (),
        start: bool = True,
        cluster: str | None = None,
        config: FabricConfig | None = None,
        guard: RecordGuard | None = None,
    ) -> Engine:
        transport = self.net.transport(
            addr or f"10.0.{len(self.nodes) // 250}.{len(self.nodes) % 250 + 1}:7946"
        )
        floor, reserve = version_source(state_dir, self.clock.wall())
        self.changes[name] = []
        self.member_events[name] = []

        def changed(c: Change) -> None:
            if self.record:
                self.changes[name].append((self.clock.now(), c))
            if self.on_change is not None:
                self.on_change(name, c)

        def member(m: Member) -> None:
            if self.record:
                self.member_events[name].append((self.clock.now(), m))
            if self.on_member is not None:
                self.on_member(name, m)

        ring = self.keyring if keyring is True else keyring or None
        node = Engine(
            name,
            transport,
            self.clock,
            config or self.config,
            keyring=ring,
            cluster=cluster or self.cluster,
            rng=random.Random(self.rng.random()),
            version_floor=floor,
            incarnation=0,
            reserve_versions=reserve,
            on_change=changed,
            on_member=member,
            seeds=seeds,
            guard=guard,
        )
        if guard is not None:  # first, so peers can check what follows
            node.publish(*guard.cert_record())
        self.nodes[name] = node
        if start:
            node.start()
        return node

    def kill(self, name: str) -> Engine:
        """Stop a member abruptly (kill -9): no leave, its address goes silent."""
        node = self.nodes.pop(name)
        node.stop()
        self.net.set_down(node.addr)
        return node

    def revive_addr(self, addr: str) -> None:
        self.net.set_down(addr, False)

    def run(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def run_until(self, cond: Callable[[], bool], within: float, step: float = 0.05) -> bool:
        """Advance virtual time until ``cond()``; False if ``within`` virtual seconds pass."""
        end = self.clock.now() + within
        while self.clock.now() < end:
            if cond():
                return True
            self.clock.advance(step)
        return cond()

    def state_of(self, observer: str, target: str) -> str | None:
        m = self.nodes[observer].members.get(target)
        return None if m is None else ("alive", "suspect", "dead", "left")[m.state]

    def all_see(self, target: str, state: str, observers: Sequence[str] | None = None) -> bool:
        names = observers if observers is not None else [n for n in self.nodes if n != target]
        return all(self.state_of(o, target) == state for o in names)

    def full_mesh(self, names: Sequence[str] | None = None) -> bool:
        names = list(names if names is not None else self.nodes)
        return all(self.state_of(o, t) == "alive" for o in names for t in names if o != t)
