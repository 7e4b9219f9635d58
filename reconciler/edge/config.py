"""Settings of the edge router, validated once and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from reconciler.errors import ConfigError


@dataclass(frozen=True)
class Timeouts:
    """Upstream timeouts in seconds; ``total`` 0 means no limit on the whole exchange."""

    connect: float = 2.0
    read: float = 30.0  # between two reads from the backend, headers included
    total: float = 300.0


@dataclass(frozen=True)
class EjectionPolicy:
    """Passive outlier ejection, as Envoy's outlier detection does it.

    A connect failure ejects at once; ``consecutive_5xx`` server errors in a row eject.
    The ejection lasts ``base_s`` times the number of times the backend was ejected in a
    row, capped at ``max_s``; a success after a recovery resets that count.
    """

    consecutive_5xx: int = 5
    consecutive_connect_failures: int = 1
    base_s: float = 5.0
    max_s: float = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """How many backends one request may try, and on what.

    A request that could not connect is always retried on another backend (nothing was
    sent). A 502/503/504 answer is retried only for idempotent methods whose request had
    no body, because a body already streamed upstream cannot be replayed.
    """

    max_attempts: int = 3
    retry_on_status: frozenset[int] = frozenset({502, 503, 504})
    idempotent_methods: frozenset[str] = frozenset(
        {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}
    )


@dataclass(frozen=True)
class PoolLimits:
    """The upstream connection pool.

    ``keepalive_s`` must stay below the backends' idle timeout so the edge closes an idle
    connection before the backend does (otherwise a request can race the backend's close).
    """

    limit: int = 1024
    limit_per_backend: int = 256
    keepalive_s: float = 4.0


@dataclass(frozen=True)
class ClientLimits:
    """What the client-facing servers allow a client (nginx's names and defaults).

    ``header_s`` is for a whole request head (nginx's ``client_header_timeout``; a fresh
    connection must send its first head within it too), ``body_s`` between two reads of
    a request body (``client_body_timeout``), ``keepalive_s`` for an idle keep-alive
    connection (``keepalive_timeout``), ``tunnel_idle_s`` for an upgraded connection
    with no byte either way (0: none). ``max_connections`` open client connections per
    worker: at the cap the server stops accepting (the kernel's backlog holds the rest)
    and accepts again below it.
    """

    header_s: float = 60.0
    body_s: float = 60.0
    keepalive_s: float = 75.0
    tunnel_idle_s: float = 300.0
    max_connections: int = 1024


ServerKind = Literal["fast", "aiohttp"]
SERVER_KINDS: tuple[ServerKind, ...] = ("fast", "aiohttp")


@dataclass(frozen=True)
class EdgeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    timeouts: Timeouts = field(default_factory=Timeouts)
    ejection: EjectionPolicy = field(default_factory=EjectionPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pool: PoolLimits = field(default_factory=PoolLimits)
    client: ClientLimits = field(default_factory=ClientLimits)
    stats_interval_s: float = 10.0
    shutdown_grace_s: float = 10.0
    #: bodies at most this large (known Content-Length) are read whole, not streamed
    small_body_bytes: int = 64 * 1024
    #: Retry-After seconds sent with "no backend" 503 answers
    retry_after_s: int = 1
    #: GETs without a body take the lean httptools client when it is installed
    fast_path: bool = True
    #: the client-facing server: httptools in an asyncio.Protocol, or aiohttp's
    server: ServerKind = "fast"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"edge: port {self.port} out of range")
        if self.server not in SERVER_KINDS:
            raise ConfigError(f"edge: unknown server {self.server!r} (fast or aiohttp)")
        if self.retry.max_attempts < 1:
            raise ConfigError("edge: retry.max_attempts must be at least 1")
        if self.timeouts.connect <= 0 or self.timeouts.read <= 0 or self.timeouts.total < 0:
            raise ConfigError("edge: timeouts must be positive (total may be 0: no limit)")
        if self.ejection.consecutive_5xx < 1 or self.ejection.consecutive_connect_failures < 1:
            raise ConfigError("edge: ejection thresholds must be at least 1")
        if self.pool.limit < 1 or self.pool.limit_per_backend < 1 or self.pool.keepalive_s <= 0:
            raise ConfigError("edge: pool limits must be positive")
        c = self.client
        if c.header_s <= 0 or c.body_s <= 0 or c.keepalive_s <= 0 or c.tunnel_idle_s < 0:
            raise ConfigError(
                "edge: client timeouts must be positive (the tunnel idle timeout may be 0: none)"
            )
        if c.max_connections < 1:
            raise ConfigError("edge: max connections must be at least 1")
