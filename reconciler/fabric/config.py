"""Settings of one fabric member: memberlist's LAN defaults and a fast local profile."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from reconciler.errors import ConfigError

Profile = Literal["lan", "local"]


@dataclass(frozen=True)
class FabricConfig:
    """Timers and bounds of the protocol; defaults are memberlist's ``DefaultLANConfig``."""

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    #: Dead members are still gossiped to for this long (memberlist GossipToTheDeadTime).
    gossip_to_dead: float = 30.0
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    push_pull_interval: float = 30.0
    #: Lifeguard local health awareness: the probe interval is stretched up to this factor.
    awareness_max: int = 8
    #: Dead or left members are forgotten (reaped) this long after they died.
    reap_after: float = 30.0
    #: A restarted member withdraws the keys of its earlier life that it has not published
    #: again this long after it started (an agent re-adopting its instances republishes
    #: them first: withdrawing at once would make them vanish for a moment).
    adopt_grace: float = 10.0
    #: Seeds and recently known addresses are re-joined this often (partition healing).
    rejoin_interval: float = 10.0
    #: An address of a member that died is retried for this long.
    rejoin_forget_after: float = 3600.0
    #: Plain-text budget of one UDP packet (memberlist's UDPBufferSize is 1400 with crypto).
    packet_budget: int = 1300
    stream_timeout: float = 10.0
    join_timeout: float = 5.0
    max_stream_bytes: int = 64 * 1024 * 1024
    #: Anti-entropy digests smaller than this go by UDP every gossip round, else by TCP.
    digest_udp_max: int = 900
    #: A digest is sent by UDP to one random peer this often (0 disables).
    udp_sync_interval: float = 1.0
    #: Owners updated this recently come first in a sampled digest (large clusters).
    recent_window: float = 30.0

    def __post_init__(self) -> None:
        for name in ("probe_interval", "probe_timeout", "gossip_interval", "push_pull_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"fabric setting {name} must be > 0")
        if self.probe_timeout > self.probe_interval:
            raise ConfigError("fabric probe_timeout must not exceed probe_interval")
        if self.suspicion_mult < 1 or self.suspicion_max_timeout_mult < 1:
            raise ConfigError("fabric suspicion multipliers must be >= 1")
        if self.packet_budget < 512:
            raise ConfigError("fabric packet_budget must be >= 512")

    @classmethod
    def lan(cls) -> FabricConfig:
        return cls()

    @classmethod
    def local(cls) -> FabricConfig:
        """A fast profile for a mesh on one machine and for tests (about 5x the LAN pace)."""
        return cls(
            probe_interval=0.2,
            probe_timeout=0.1,
            gossip_interval=0.05,
            gossip_to_dead=5.0,
            suspicion_mult=3,
            push_pull_interval=2.0,
            reap_after=5.0,
            adopt_grace=3.0,
            rejoin_interval=0.5,
            rejoin_forget_after=600.0,
            stream_timeout=2.0,
            join_timeout=2.0,
            udp_sync_interval=0.2,
            recent_window=10.0,
        )

    @classmethod
    def profile(cls, name: str) -> FabricConfig:
        if name == "lan":
            return cls.lan()
        if name == "local":
            return cls.local()
        raise ConfigError(f"unknown fabric profile {name!r} (lan or local)")

    def with_(self, **changes: object) -> FabricConfig:
        return replace(self, **changes)  # type: ignore[arg-type]

    # Derived figures, as memberlist computes them.

    def retransmit_limit(self, n: int) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def suspicion_timeouts(self, n: int) -> tuple[float, float]:
        """(min, max) suspicion timeout for a cluster of ``n`` members."""
        scale = max(1.0, math.log10(max(1, n)))
        lo = self.suspicion_mult * scale * self.probe_interval
        return lo, lo * self.suspicion_max_timeout_mult

    def push_pull_scaled(self, n: int) -> float:
        """memberlist's pushPullScale: slower full syncs above 32 members."""
        if n <= 32:
            return self.push_pull_interval
        mult = math.ceil(math.log2(n) - math.log2(32)) + 1.0
        return self.push_pull_interval * mult
