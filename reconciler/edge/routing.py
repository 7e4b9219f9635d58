"""The edge's pure routing core: route table, weighted least-outstanding choice, ejection.

No I/O and no clock of its own: every decision that depends on time takes ``now``
(monotonic seconds) from the caller, so tests drive it with plain numbers.

* :class:`RouteTable` maps the first path segment to an :class:`AppRoute`; ``update``
  swaps in a new set of routes while keeping each surviving backend's balancer and
  ejection state (an in-flight request keeps the :class:`BackendState` it picked, so a
  route change never disturbs it).
* :class:`AppRoute.pick` is the power of two choices over requests in flight, weighted:
  the first candidate is nginx's smooth weighted round-robin (``ngx_http_upstream_
  round_robin.c``: every eligible peer gains its weight, the richest is chosen and pays the
  total back, so a 5:1:1 split goes a,a,b,a,c,a,a), the second a random draw by weight
  among the others; the second wins only if the first is busier, per unit of weight, than
  the second would be with this request. Idle (or evenly loaded) backends therefore get
  exactly the round-robin's sequence, and a backend with a backlog gets nothing new while
  another has room.
* :class:`Ejection` is the per-backend passive health state machine.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable

from reconciler.addr import parse_addr
from reconciler.edge.config import EjectionPolicy, RetryPolicy
from reconciler.errors import EdgeError
from reconciler.records import RouteRecord


class Outcome(enum.Enum):
    SUCCESS = "success"
    SERVER_ERROR = "5xx"
    CONNECT_FAILURE = "connect-failure"


class Ejection:
    """Passive health of one backend: healthy, or ejected until a moment.

    ``record`` feeds it the outcome of every exchange; ``available(now)`` says whether the
    balancer may choose the backend. After the ejection time passes the backend is back in
    rotation; one more failure ejects it again for longer, one success forgives it.
    """

    __slots__ = ("policy", "consecutive_5xx", "consecutive_connect", "times", "until")

    def __init__(self, policy: EjectionPolicy) -> None:
        self.policy = policy
        self.consecutive_5xx = 0
        self.consecutive_connect = 0
        self.times = 0  # ejections in a row, without a success in between
        self.until = 0.0

    def available(self, now: float) -> bool:
        return now >= self.until

    def ejected(self, now: float) -> bool:
        return now < self.until

    def record(self, outcome: Outcome, now: float) -> bool:
        """Account one outcome; True if this outcome ejected the backend."""
        if outcome is Outcome.SUCCESS:
            self.consecutive_5xx = 0
            self.consecutive_connect = 0
            if now >= self.until:
                self.times = 0
            return False
        if outcome is Outcome.SERVER_ERROR:
            self.consecutive_5xx += 1
            tripped = self.consecutive_5xx >= self.policy.consecutive_5xx
        else:
            self.consecutive_connect += 1
            tripped = self.consecutive_connect >= self.policy.consecutive_connect_failures
        if not tripped or now < self.until:
            return False
        self.times += 1
        self.consecutive_5xx = 0
        self.consecutive_connect = 0
        self.until = now + min(self.policy.base_s * self.times, self.policy.max_s)
        return True


class BackendState:
    """One backend endpoint as the balancer sees it (mutable, owned by the event loop)."""

    __slots__ = (
        "endpoint", "instance_id", "host", "port", "hostport", "weight", "current", "health",
        "inflight",
    )  # fmt: skip

    def __init__(self, endpoint: str, instance_id: str, weight: int, policy: EjectionPolicy):
        self.endpoint = endpoint
        self.instance_id = instance_id
        self.host, self.port = split_endpoint(endpoint)
        self.hostport = f"{self.host}:{self.port}"  # the Host the lean client sends
        self.weight = weight
        self.current = 0
        self.health = Ejection(policy)
        #: attempts sent to it and not finished yet (the proxy counts them: ``+= 1`` when
        #: it picks the backend, ``-= 1`` when that attempt ends, whichever way it ends)
        self.inflight = 0

    def __repr__(self) -> str:
        return f"BackendState({self.endpoint!r}, weight={self.weight})"


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` of a backend (a host and a non-zero port required)."""
    host, port = parse_addr(
        endpoint, default_host="", what="backend endpoint", error=EdgeError, allow_zero=False
    )
    if not host:
        raise EdgeError(f"bad backend endpoint {endpoint!r}: expected HOST:PORT")
    return host, port


class AppRoute:
    """The backends of one app that may get new requests, with their balancer state."""

    __slots__ = ("app", "prefix", "backends", "draining", "epoch", "hold_s", "rng")

    def __init__(
        self,
        app: str,
        prefix: str,
        backends: list[BackendState],
        draining: frozenset[str],
        epoch: int = 0,
        hold_s: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.backends = backends
        self.draining = draining
        self.epoch = epoch
        #: with no backend at all (an app at zero), hold a request this long while it wakes
        self.hold_s = hold_s
        #: the second choice's draws (seeded in tests)
        self.rng = rng if rng is not None else random.Random()

    def pick(
        self, now: float, exclude: frozenset[str] | set[str] = frozenset()
    ) -> BackendState | None:
        """The available backend not in ``exclude`` to send the next request to.

        Power of two choices, weighted: the first candidate is the smooth weighted
        round-robin's, the second is drawn at random by weight among the others; the
        second wins only when the first has more requests in flight per unit of weight
        than the second would have with this one added (``f/wf > (s+1)/ws``), else the
        first. One candidate: it. The caller counts the request in ``inflight``.
        """
        first: BackendState | None = None
        total = 0
        for b in self.backends:
            if b.endpoint in exclude or now < b.health.until:
                continue
            b.current += b.weight
            total += b.weight
            if first is None or b.current > first.current:
                first = b
        if first is None:
            return None
        first.current -= total
        if first.inflight == 0 or total == first.weight:
            return first  # nothing is less loaded than an idle backend; or the only one
        point = self.rng.random() * (total - first.weight)
        second = first
        for b in self.backends:
            if b is first or b.endpoint in exclude or now < b.health.until:
                continue
            second = b
            point -= b.weight
            if point < 0:
                break
        # in flight per unit of weight, compared without division: the second wins when
        # the first is busier than the second would be with this request added
        if first.inflight * second.weight > (second.inflight + 1) * first.weight:
            return second
        return first

    def has_candidate(self, now: float, exclude: frozenset[str] | set[str] = frozenset()) -> bool:
        """Whether :meth:`pick` would find a backend (without moving the balancer)."""
        return any(b.endpoint not in exclude and now >= b.health.until for b in self.backends)

    def next_recovery(self, now: float) -> float | None:
        """Seconds until the first ejected backend comes back, None if none is ejected."""
        waits = [b.health.until - now for b in self.backends if b.health.until > now]
        return min(waits) if waits else None


class RouteTable:
    """Routes by the first path segment: ``/billing/x`` → the route with prefix ``/billing``."""

    def __init__(
        self, policy: EjectionPolicy | None = None, rng: random.Random | None = None
    ) -> None:
        self.policy = policy or EjectionPolicy()
        #: shared by every route's second choice (seed it for reproducible picks)
        self.rng = rng if rng is not None else random.Random()
        self._by_segment: dict[str, AppRoute] = {}
        self._states: dict[tuple[str, str], BackendState] = {}
        self.version = 0

    def update(self, records: Iterable[RouteRecord]) -> None:
        """Replace the whole table (level-triggered); surviving backends keep their state.

        Two records for one prefix: the higher ``epoch`` wins (a newer reconciler lease).
        """
        chosen: dict[str, RouteRecord] = {}
        for rec in records:
            seg = prefix_segment(rec.prefix or "/" + rec.app)
            if seg is None:
                continue
            old = chosen.get(seg)
            if old is None or (rec.epoch, rec.app) > (old.epoch, old.app):
                chosen[seg] = rec
        states: dict[tuple[str, str], BackendState] = {}
        table: dict[str, AppRoute] = {}
        for seg, rec in chosen.items():
            draining = frozenset(rec.draining)
            live: list[BackendState] = []
            for b in rec.backends:
                key = (seg, b.endpoint)
                if b.endpoint in draining or b.weight <= 0 or key in states:
                    continue
                try:
                    split_endpoint(b.endpoint)
                except EdgeError:
                    continue
                st = self._states.get(key)
                if st is None:
                    st = BackendState(b.endpoint, b.instance_id, b.weight, self.policy)
                else:
                    st.weight = b.weight
                    st.instance_id = b.instance_id
                states[key] = st
                live.append(st)
            table[seg] = AppRoute(
                rec.app, "/" + seg, live, draining, rec.epoch, rec.hold_s, self.rng
            )
        self._by_segment = table
        self._states = states
        self.version += 1

    def match(self, path: str) -> tuple[AppRoute, str] | None:
        """The route for ``path`` and the rest of the path (prefix stripped, never empty)."""
        if not path.startswith("/"):
            return None
        end = path.find("/", 1)
        seg = path[1:] if end < 0 else path[1:end]
        route = self._by_segment.get(seg)
        if route is None:
            return None
        return route, ("/" if end < 0 else path[end:])

    def routes(self) -> list[AppRoute]:
        return list(self._by_segment.values())

    def backend(self, app_segment: str, endpoint: str) -> BackendState | None:
        return self._states.get((app_segment, endpoint))


def prefix_segment(prefix: str) -> str | None:
    """``/billing`` → ``billing``; a prefix must be exactly one path segment."""
    seg = prefix.strip("/")
    if not seg or "/" in seg:
        return None
    return seg


def should_retry(
    policy: RetryPolicy,
    method: str,
    attempts: int,
    *,
    connect_failed: bool = False,
    status: int | None = None,
    body_sent: bool = False,
) -> bool:
    """Whether a request may go to another backend after ``attempts`` tries.

    Never once a byte of the request body went upstream (it cannot be replayed). A failed
    connect sent nothing, so any method may retry; a 502/503/504 answer only for
    idempotent methods.
    """
    if attempts >= policy.max_attempts or body_sent:
        return False
    if connect_failed:
        return True
    return (
        status is not None
        and status in policy.retry_on_status
        and method.upper() in policy.idempotent_methods
    )
