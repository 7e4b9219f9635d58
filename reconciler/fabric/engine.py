"""The protocol core: SWIM + Lifeguard membership and Scuttlebutt state, without I/O.

Everything arrives through :meth:`Engine.receive` and the injected clock's timers;
everything leaves through the transport's ``send_packet``/``send_stream``. So the same code
runs on asyncio sockets, on the in-memory network of the unit tests and in the simulator.
Structure and figures follow hashicorp/memberlist (state.go, suspicion.go, awareness.go);
partition healing (periodic re-join of seeds and recently known addresses) is ours.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from reconciler.clock import Clock, Handle
from reconciler.errors import PacketError

from . import codec
from ._queue import BroadcastQueue
from .api import CERT_PREFIX, PENDING, Change, JSONValue, Member, RecordGuard
from .codec import (
    ALIVE,
    DEAD,
    LEFT,
    STATE_NAMES,
    SUSPECT,
    Ack,
    Alive,
    Dead,
    Deltas,
    Digest,
    Entry,
    MemberRow,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)
from .config import FabricConfig
from .keyring import Keyring, seal, unseal
from .state import StateStore
from .transport import Transport

log = logging.getLogger("myco.fabric")

_VERSION_BLOCK = 100_000  # versions reserved (persisted) at a time


@dataclass(slots=True)
class MemberInfo:
    name: str
    addr: str
    inc: int
    state: int
    since: float


@dataclass(slots=True)
class _Probe:
    target: str
    acked: bool = False
    nacks: int = 0
    expected_nacks: int = 0
    on_ack: Callable[[], None] | None = None
    on_nack: Callable[[], None] | None = None


class _Suspicion:
    """Lifeguard suspicion: the timeout shrinks from max to min as confirmations arrive.

    Not in memberlist: a suspicion still held after half the minimum timeout is put to
    the suspect member itself, again every quarter of it (see ``Engine._ask_suspect``).
    """

    def __init__(
        self, engine: Engine, name: str, inc: int, src: str, k: int, lo: float, hi: float
    ) -> None:
        self.engine, self.name, self.inc = engine, name, inc
        self.k, self.lo, self.hi = k, lo, hi
        self.start = engine.clock.now()
        self.confirmers = {src}
        self.n = 0
        self.handle: Handle = engine.clock.call_later(self.timeout(), self._fire)
        self.asking: Handle = engine.clock.call_later(lo / 2, self._ask)

    def timeout(self) -> float:
        if self.k < 1:
            return self.lo
        frac = math.log(self.n + 1) / math.log(self.k + 1)
        return max(self.lo, self.hi - (self.hi - self.lo) * frac)

    def confirm(self, src: str) -> bool:
        if self.n >= self.k or src in self.confirmers:
            return False
        self.confirmers.add(src)
        self.n += 1
        self.handle.cancel()
        left = self.timeout() - (self.engine.clock.now() - self.start)
        self.handle = self.engine.clock.call_later(max(0.0, left), self._fire)
        return True

    def cancel(self) -> None:
        self.handle.cancel()
        self.asking.cancel()

    def _fire(self) -> None:
        self.engine._suspicion_expired(self)

    def _ask(self) -> None:
        if self.engine._ask_suspect(self):
            self.asking = self.engine.clock.call_later(self.lo / 4, self._ask)


@dataclass
class Stats:
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped_auth: int = 0
    dropped_malformed: int = 0
    handler_errors: int = 0
    refutes: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        name: str,
        transport: Transport,
        clock: Clock,
        config: FabricConfig | None = None,
        *,
        keyring: Keyring | None = None,
        cluster: str = "myco",
        rng: random.Random | None = None,
        version_floor: int = 1,
        incarnation: int = 0,
        reserve_versions: Callable[[int], None] | None = None,
        on_change: Callable[[Change], None] | None = None,
        on_member: Callable[[Member], None] | None = None,
        seeds: Sequence[str] = (),
        guard: RecordGuard | None = None,
    ) -> None:
        self.name = name
        self.guard = guard
        self.transport = transport
        self.addr = transport.addr
        self.clock = clock
        self.cfg = config or FabricConfig.lan()
        self.keyring = keyring
        self.cluster = cluster.encode()
        self.rng = rng or random.Random()
        self.on_change = on_change
        self.on_member = on_member
        self.stats = Stats()
        self.inc = incarnation
        self.awareness = 0
        self.seeds = list(dict.fromkeys(seeds))
        self.store = StateStore()
        # Too big for a packet: such an update travels by anti-entropy over TCP instead.
        self.bq = BroadcastQueue(self._wake_gossip, max_size=self.cfg.packet_budget - 64)
        self._addr_owner: dict[str, str] = {self.addr: name}
        self.members: dict[str, MemberInfo] = {
            name: MemberInfo(name, self.addr, incarnation, ALIVE, clock.now())
        }
        self._live: list[str] = []  # alive or suspect, self excluded (O(1) random picks)
        self._live_ix: dict[str, int] = {}
        self._gone: set[str] = set()  # dead or left, not reaped yet
        self._started_at = 0.0
        self._earlier: set[str] = set()  # own keys of an earlier life, withdrawn after grace
        self._probe_order: list[str] = []
        self._probe_ix = 0
        self._suspicions: dict[str, _Suspicion] = {}
        self._acks: dict[int, _Probe] = {}
        self._seq = self.rng.randrange(1 << 30)
        self._joins: dict[int, Callable[[str], None]] = {}
        self._recent: dict[str, float] = {}  # owner -> when an update of it was last seen
        self._known: dict[str, float] = {}  # addr -> last time it was worth re-joining
        self._told: dict[str, float] = {}  # suspecter -> when we last told it we are alive
        self._version = max(0, version_floor - 1)
        self._reserved = self._version
        self._reserve = reserve_versions
        self._timers: dict[str, Handle] = {}
        self._running = False
        self.leaving = False

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.transport.set_receiver(self.receive)
        self._running = True
        self._started_at = self.clock.now()
        c, r = self.cfg, self.rng
        self._every("probe", c.probe_interval * r.random(), self._probe_tick)
        self._every("gossip", c.gossip_interval * r.random(), self._gossip_tick)
        self._every("pushpull", c.push_pull_interval * r.random(), self._push_pull_tick)
        self._every("reap", c.probe_interval * (1 + r.random()), self._reap_tick)
        self._every("rejoin", c.rejoin_interval * r.random(), self._rejoin_tick)
        if c.udp_sync_interval > 0:
            self._every("sync", c.udp_sync_interval * r.random(), self._udp_sync_tick)

    def stop(self) -> None:
        self._running = False
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        for s in self._suspicions.values():
            s.cancel()
        self._suspicions.clear()

    def _every(self, name: str, delay: float, fn: Callable[[], float | None]) -> None:
        def tick() -> None:
            if not self._running:
                return
            nxt = fn()
            if nxt is not None and self._running:
                self._timers[name] = self.clock.call_later(nxt, tick)
            else:
                self._timers.pop(name, None)  # idle until woken (see _wake_gossip)

        self._timers[name] = self.clock.call_later(delay, tick)

    # --- the public face ----------------------------------------------------------------

    def next_version(self) -> int:
        self._version += 1
        if self._reserve is not None and self._version > self._reserved:
            self._reserved = self._version + _VERSION_BLOCK
            self._reserve(self._reserved)
        return self._version

    def publish(self, key: str, value: JSONValue, *, deleted: bool = False) -> int:
        if not key or len(key) > codec.MAX_KEY:
            raise ValueError("a key is 1..1024 characters")
        version = self.next_version()
        g = self.guard
        sig = g.sign(self.name, key, version, None if deleted else value) if g is not None else ""
        entry = self.store.set_own(self.name, key, value, version, deleted, sig)
        self._recent[self.name] = self.clock.now()
        self.bq.queue(("s", self.name, key), entry)
        self._emit(Change(self.name, key, None if deleted else value, version))
        if g is not None and not key.startswith(CERT_PREFIX):
            # Learn from our own records as from others' (a reconciler's own revocation
            # list hides the revoked members here too).
            for hidden in g.applied(self.name, key, version, None if deleted else value):
                self._reveal(hidden, False)
        return version

    def get(self, owner: str, key: str) -> JSONValue:
        if not self.visible(owner):
            return None
        it = self.store.get(owner, key)
        return None if it is None or it.deleted else it.value

    def visible(self, owner: str) -> bool:
        m = self.members.get(owner)
        if m is None or m.state not in (ALIVE, SUSPECT):
            return False
        return self.guard is None or not self.guard.blocked(owner)

    def view(
        self, prefix: str = "", include_gone: bool = False
    ) -> dict[tuple[str, str], JSONValue]:
        out: dict[tuple[str, str], JSONValue] = {}
        for owner in self.store.owners():
            if not include_gone and not self.visible(owner):
                continue
            for key, it in self.store.items(owner).items():
                if not it.deleted and key.startswith(prefix):
                    out[(owner, key)] = it.value
        return out

    def member_list(self) -> list[Member]:
        return [
            Member(m.name, m.addr, STATE_NAMES[m.state], m.inc)  # type: ignore[arg-type]
            for m in self.members.values()
        ]

    def live_count(self) -> int:
        return len(self._live) + 1

    def join(
        self, addrs: Iterable[str], on_reply: Callable[[str], None] | None = None
    ) -> list[int]:
        """Send a join push-pull to each address; ``on_reply(addr)`` for each answer.

        Returns the join ids, for :meth:`forget_joins` once the caller stops waiting.
        """
        nonces: list[int] = []
        for addr in addrs:
            if addr == self.addr:
                continue
            self._known[addr] = self.clock.now()
            nonce = self._next_seq()
            if on_reply is not None:
                self._joins[nonce] = on_reply
                nonces.append(nonce)
            self._send_stream(addr, [self._push_pull(nonce, join=True, reply=False)])
        return nonces

    def forget_joins(self, nonces: Iterable[int]) -> None:
        for n in nonces:
            self._joins.pop(n, None)

    def leave(self) -> None:
        """Announce a graceful leave: a dead message about ourselves, from ourselves."""
        self.leaving = True
        msg = Dead(self.name, self.inc, self.name)
        self.members[self.name].state = LEFT
        self.bq.queue(("m", self.name), msg)
        peers = self._pick(max(self.cfg.gossip_nodes, self.cfg.indirect_checks) * 2)
        for peer in peers:
            self._send_packet(self.members[peer].addr, [msg])

    def pending_broadcasts(self) -> int:
        return len(self.bq)

    # --- receiving ----------------------------------------------------------------------

    def receive(self, src: str, data: bytes, stream: bool) -> None:
        """The receive loop's body: nothing a peer sends may make this raise."""
        st = self.stats
        st.packets_in += 1
        st.bytes_in += len(data)
        try:
            ring = self.keyring  # unseal(), with one call less on the keyed path
            plain = (
                ring.decrypt(data, self.cluster)
                if ring is not None
                else unseal(None, data, self.cluster)
            )
        except PacketError:
            st.dropped_auth += 1
            return
        try:
            messages = codec.decode(plain)
        except PacketError as exc:
            st.dropped_malformed += 1
            log.debug("dropped a malformed packet from %s: %s", src, exc)
            return
        for msg in messages:
            try:
                self._dispatch(msg, stream)
            except Exception:
                st.handler_errors += 1
                log.exception("fabric: handling %s from %s failed", type(msg).__name__, src)

    def _dispatch(self, msg: Message, stream: bool) -> None:
        if not self._running:
            return
        # Commonest first: probes and acks, then the anti-entropy exchange.
        if isinstance(msg, Ping):
            self._on_ping(msg, stream)
        elif isinstance(msg, Ack):
            self._on_ack(msg.seq)
        elif isinstance(msg, Digest):
            self._on_digest(msg)
        elif isinstance(msg, Deltas):
            self._apply_deltas(msg)
        elif isinstance(msg, Entry):
            self._apply_entry(msg, rebroadcast=True)
        elif isinstance(msg, Alive):
            self._on_alive(msg)
        elif isinstance(msg, Suspect):
            self._on_suspect(msg)
        elif isinstance(msg, Dead):
            self._on_dead(msg)
        elif isinstance(msg, PingReq):
            self._on_ping_req(msg)
        elif isinstance(msg, Nack):
            p = self._acks.get(msg.seq)
            if p is not None and p.on_nack is not None:
                p.on_nack()
        elif isinstance(msg, PushPull):
            self._on_push_pull(msg)

    # --- sending ------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & ((1 << 62) - 1)
        return self._seq

    def _send_packet(self, addr: str, msgs: list[Message], piggyback: bool = True) -> None:
        self._send_parts(addr, [codec.encode_one(m) for m in msgs], piggyback)

    def _send_parts(self, addr: str, parts: list[bytes], piggyback: bool = True) -> None:
        """Send encoded messages in one packet, with broadcasts piggybacked if asked."""
        if piggyback and len(self.bq):
            used = 2 + sum(len(p) + 1 for p in parts)
            parts += self.bq.take_wire(self.cfg.packet_budget - used, self._limit())
        ring, plain = self.keyring, codec.join(parts)
        data = (
            ring.encrypt(plain, self.cluster)
            if ring is not None
            else seal(None, plain, self.cluster)
        )
        self.stats.packets_out += 1
        self.stats.bytes_out += len(data)
        self.transport.send_packet(addr, data)

    def _send_stream(self, addr: str, msgs: list[Message]) -> None:
        data = seal(self.keyring, codec.encode(msgs), self.cluster)
        self.stats.packets_out += 1
        self.stats.bytes_out += len(data)
        self.transport.send_stream(addr, data)

    def _limit(self) -> int:
        return self.cfg.retransmit_limit(len(self._live) + 1)

    def _pick(self, k: int, exclude: str = "", include_dead: bool = False) -> list[str]:
        """Up to ``k`` distinct random live members (and recently dead ones if asked)."""
        pool: Sequence[str] = self._live
        if include_dead:
            horizon = self.clock.now() - self.cfg.gossip_to_dead
            members = self.members
            dead = [
                n for n in self._gone if members[n].state == DEAD and members[n].since >= horizon
            ]
            if dead:
                pool = self._live + dead
        n = len(pool)
        if n == 0 or k <= 0:
            return []
        if n <= k + 1:
            out = [p for p in pool if p != exclude]
            self.rng.shuffle(out)
            return out[:k]
        chosen: dict[str, None] = {}
        tries = 0
        while len(chosen) < k and tries < 4 * k + 8:
            tries += 1
            p = pool[int(self.rng.random() * n)]
            if p != exclude:
                chosen[p] = None
        return list(chosen)

    def _pick_alive(self, k: int, exclude: str) -> list[str]:
        """Up to ``k`` random members that are alive, not suspect (memberlist's relays)."""
        members, out = self.members, []
        for name in self._pick(2 * k + 2, exclude=exclude):
            if members[name].state == ALIVE:
                out.append(name)
                if len(out) == k:
                    break
        return out

    # --- membership bookkeeping ---------------------------------------------------------

    def _set_live(self, name: str, live: bool) -> None:
        if live and name not in self._live_ix and name != self.name:
            self._live_ix[name] = len(self._live)
            self._live.append(name)
        elif not live and name in self._live_ix:
            i = self._live_ix.pop(name)
            last = self._live.pop()
            if last != name:
                self._live[i] = last
                self._live_ix[last] = i

    def _member_changed(self, m: MemberInfo, old_state: int | None) -> None:
        was = old_state in (ALIVE, SUSPECT)
        now = m.state in (ALIVE, SUSPECT)
        self._set_live(m.name, now)
        if m.state in (DEAD, LEFT):
            self._gone.add(m.name)
        else:
            self._gone.discard(m.name)
        if m.state == DEAD:
            self._known[m.addr] = self.clock.now()
        if was != now:
            self._reveal(m.name, now)
        if self.on_member is not None and old_state != m.state:
            self.on_member(Member(m.name, m.addr, STATE_NAMES[m.state], m.inc))  # type: ignore[arg-type]

    def _reveal(self, owner: str, visible: bool) -> None:
        if self.on_change is None:
            return
        for key, it in list(self.store.items(owner).items()):
            if not it.deleted:
                self._emit(Change(owner, key, it.value if visible else None, it.version))

    def _emit(self, change: Change) -> None:
        if self.on_change is not None:
            self.on_change(change)

    def seed_member(self, name: str, addr: str, inc: int = 0) -> None:
        """Know a member without gossip (the simulator's bootstrap of a large cluster)."""
        if name not in self.members and name != self.name:
            self.members[name] = MemberInfo(name, addr, inc, ALIVE, self.clock.now())
            self._addr_owner[addr] = name
            order = self._probe_order
            order.insert(int(self.rng.random() * (len(order) + 1)), name)
            self._set_live(name, True)

    def _add_member(self, name: str, addr: str, inc: int, broadcast: bool = True) -> None:
        m = MemberInfo(name, addr, inc, ALIVE, self.clock.now())
        self.members[name] = m
        self._addr_owner[addr] = name
        # memberlist inserts new nodes at a random position of the probe order.
        self._probe_order.insert(int(self.rng.random() * (len(self._probe_order) + 1)), name)
        self._member_changed(m, None)
        if broadcast:
            self.bq.queue(("m", name), Alive(name, addr, inc))

    def _on_alive(self, a: Alive) -> None:
        if a.name == self.name:
            if a.inc > self.inc or (a.addr != self.addr and a.inc >= self.inc):
                self._refute(a.inc)
            return
        m = self.members.get(a.name)
        if m is None:
            self._add_member(a.name, a.addr, a.inc)
            return
        reclaim = m.state in (DEAD, LEFT) and a.addr != m.addr
        if a.inc <= m.inc and not reclaim:
            return
        old = m.state
        m.inc, m.addr, m.state = a.inc, a.addr, ALIVE
        self._addr_owner[a.addr] = a.name
        if old != ALIVE:
            m.since = self.clock.now()
        s = self._suspicions.pop(a.name, None)
        if s is not None:
            s.cancel()
        self.bq.queue(("m", a.name), a)
        self._member_changed(m, old)

    def _on_suspect(self, s: Suspect) -> None:
        m = self.members.get(s.name)
        if m is None or m.state in (DEAD, LEFT):
            return
        if s.name == self.name:
            if s.inc >= m.inc:
                self._refute(s.inc)
            self._tell_alive(s.src)
            return
        if s.inc < m.inc:
            return
        old = m.state
        if old == SUSPECT:
            sus = self._suspicions.get(s.name)
            if sus is None or s.inc <= sus.inc:
                if sus is not None and sus.confirm(s.src):
                    self.bq.queue(("m", s.name), s)
                return
            # A suspicion at a higher incarnation: the member refuted the one we hold (we
            # missed its alive), so that one is over and this is a new one. memberlist
            # counts it as a confirmation of the old one, whose timer then declares a member
            # dead that has answered.
            sus.cancel()
            del self._suspicions[s.name]
        m.inc, m.state, m.since = s.inc, SUSPECT, self.clock.now()
        n = len(self._live) + 1
        k = self.cfg.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        lo, hi = self.cfg.suspicion_timeouts(n)
        self._suspicions[s.name] = _Suspicion(self, s.name, s.inc, s.src, k, lo, hi)
        self.bq.queue(("m", s.name), s)
        self._member_changed(m, old)

    def _suspicion_expired(self, sus: _Suspicion) -> None:
        if self._suspicions.get(sus.name) is not sus:
            return
        m = self.members.get(sus.name)
        if m is None or m.state != SUSPECT or m.inc != sus.inc:
            return
        log.info("fabric %s: marking %s dead (suspected, not refuted)", self.name, sus.name)
        self._on_dead(Dead(sus.name, sus.inc, self.name))

    def _on_dead(self, d: Dead) -> None:
        m = self.members.get(d.name)
        if m is None:
            return
        if d.name == self.name:
            if not self.leaving:
                if d.inc >= m.inc:
                    self._refute(d.inc)
                if d.src != self.name:
                    self._tell_alive(d.src)
            return
        if d.inc < m.inc or m.state in (DEAD, LEFT):
            return
        old = m.state
        m.inc, m.since = d.inc, self.clock.now()
        m.state = LEFT if d.src == d.name else DEAD
        s = self._suspicions.pop(d.name, None)
        if s is not None:
            s.cancel()
        self.bq.queue(("m", d.name), d)
        self._member_changed(m, old)

    def _ask_suspect(self, sus: _Suspicion) -> bool:
        """Put a suspicion we still hold to the suspect itself; False once it is over.

        Not in memberlist. The refutation spreads by gossip, and at heavy loss a member
        can miss it (or the suspect can miss the suspicion) for the whole timeout; the
        suspect answers this directly (:meth:`_tell_alive`). Asked only of suspicions that
        outlive half the minimum timeout, so the common case costs nothing.
        """
        if not self._running or self._suspicions.get(sus.name) is not sus:
            return False
        m = self.members.get(sus.name)
        if m is None or m.state != SUSPECT:
            return False
        self._send_packet(m.addr, [Suspect(sus.name, sus.inc, self.name)])
        return True

    def _tell_alive(self, suspecter: str) -> None:
        """Someone suspects us or holds us dead: tell it our incarnation directly.

        The refutation spreads by gossip too, but may never reach it (lost, or displaced
        by newer news about us in the others' queues) before its timer declares us dead.
        At most once per probe interval per suspecter.
        """
        m = self.members.get(suspecter)
        now = self.clock.now()
        if m is None or m.state not in (ALIVE, SUSPECT) or self.leaving:
            return
        if now - self._told.get(suspecter, -math.inf) < self.cfg.probe_interval:
            return
        self._told[suspecter] = now
        self._send_packet(m.addr, [Alive(self.name, self.addr, self.inc)], piggyback=False)

    def _refute(self, inc: int) -> None:
        if self.leaving:
            return
        self.inc = max(self.inc, inc) + 1
        me = self.members[self.name]
        me.inc = self.inc
        self.stats.refutes += 1
        self._awareness(+1)
        self.bq.queue(("m", self.name), Alive(self.name, self.addr, self.inc))

    def _awareness(self, delta: int) -> None:
        self.awareness = min(self.cfg.awareness_max - 1, max(0, self.awareness + delta))

    def _scale(self, t: float) -> float:
        return t * (self.awareness + 1)

    # --- probing (SWIM + Lifeguard) ------------------------------------------------------

    def _next_target(self) -> MemberInfo | None:
        order = self._probe_order
        for _ in range(len(order) + 1):
            if self._probe_ix >= len(order):
                # A full pass: drop reaped names, reshuffle (memberlist resetNodes).
                order[:] = [n for n in order if n in self.members]
                self.rng.shuffle(order)
                self._probe_ix = 0
                if not order:
                    return None
            name = order[self._probe_ix]
            self._probe_ix += 1
            m = self.members.get(name)
            if m is not None and m.state in (ALIVE, SUSPECT) and name != self.name:
                return m
        return None

    def _probe_tick(self) -> float:
        interval = self._scale(self.cfg.probe_interval)
        target = self._next_target()
        if target is not None:
            self._probe(target, interval)
        return interval

    def _probe(self, target: MemberInfo, interval: float) -> None:
        seq = self._next_seq()
        probe = _Probe(target.name)

        def acked() -> None:
            if not probe.acked:
                probe.acked = True
                self._awareness(-1)

        def nacked() -> None:
            probe.nacks += 1

        probe.on_ack, probe.on_nack = acked, nacked
        self._acks[seq] = probe
        ping: list[Message] = [Ping(seq, target.name, self.name, self.addr)]
        if target.state == SUSPECT:
            # Lifeguard's buddy system (memberlist probeNode): tell a suspect member it is
            # suspected with the ping itself, so it can refute at once.
            ping.append(Suspect(target.name, target.inc, self.name))
        self._send_packet(target.addr, ping)

        def no_direct_ack() -> None:
            if probe.acked or not self._running:
                return
            m = self.members.get(target.name)
            if m is None:
                return
            relays = self._pick_alive(self.cfg.indirect_checks, exclude=target.name)
            probe.expected_nacks = len(relays)
            req = PingReq(seq, target.name, m.addr, self.name, self.addr, True)
            for r in relays:
                self._send_packet(self.members[r].addr, [req])
            # memberlist's TCP fallback ping: a reliable path around UDP loss.
            self._send_stream(m.addr, [Ping(seq, target.name, self.name, self.addr)])

        def finish() -> None:
            self._acks.pop(seq, None)
            probe.on_ack = probe.on_nack = None  # unreachable now; no cycle left for the gc
            if probe.acked or not self._running:
                return
            delta = 0
            if probe.expected_nacks > 0:
                if probe.nacks < probe.expected_nacks:
                    delta += probe.expected_nacks - probe.nacks
            else:
                delta += 1
            self._awareness(delta)
            m = self.members.get(target.name)
            if m is not None and m.state in (ALIVE, SUSPECT):
                # Suspect it, or confirm an existing suspicion (gossiped: others count it).
                log.debug("fabric %s: probe of %s failed, suspecting", self.name, m.name)
                self._on_suspect(Suspect(m.name, m.inc, self.name))

        # Not scaled by awareness (as memberlist): waiting longer does not get UDP through,
        # while a longer interval leaves the indirect probes and the TCP ping more time.
        self.clock.call_later(self.cfg.probe_timeout, no_direct_ack)
        self.clock.call_later(interval * 0.95, finish)

    def _on_ping(self, p: Ping, stream: bool) -> None:
        if p.target != self.name:
            return  # meant for a member that had our address before
        if stream:
            # memberlist answers a TCP ping on its own connection; a stream here is one-way,
            # so the answer needs a new connection (a handshake that a lost SYN delays by a
            # second): a UDP ack goes too, whichever arrives before the prober gives up.
            self._send_stream(p.src_addr, [Ack(p.seq)])
        self._send_packet(p.src_addr, [Ack(p.seq)])

    def _on_ack(self, seq: int) -> None:
        p = self._acks.get(seq)
        if p is not None and p.on_ack is not None:
            p.on_ack()

    def _on_ping_req(self, r: PingReq) -> None:
        seq = self._next_seq()
        done = _Probe(r.target)

        def relay_ack() -> None:
            if not done.acked:
                done.acked = True
                self._send_packet(r.src_addr, [Ack(r.seq)], piggyback=False)

        done.on_ack = relay_ack
        self._acks[seq] = done
        self._send_packet(r.target_addr, [Ping(seq, r.target, self.name, self.addr)])

        def expire() -> None:
            self._acks.pop(seq, None)
            done.on_ack = None  # unreachable now; no cycle left for the gc
            if not done.acked and r.nack:
                self._send_packet(r.src_addr, [Nack(r.seq)], piggyback=False)

        # Lifeguard: the nack leaves at 80% of the probe timeout, so it arrives in time.
        self.clock.call_later(self.cfg.probe_timeout * 0.8, expire)

    # --- gossip, anti-entropy, push-pull ------------------------------------------------

    def _gossip_tick(self) -> float | None:
        if not len(self.bq):
            return None  # nothing to gossip: sleep until a broadcast is queued
        for peer in self._pick(self.cfg.gossip_nodes, include_dead=True):
            parts = self.bq.take_wire(self.cfg.packet_budget - 2, self._limit())
            if not parts:
                break
            self._send_parts(self.members[peer].addr, parts, piggyback=False)
        return self.cfg.gossip_interval

    def _wake_gossip(self) -> None:
        if self._running and "gossip" not in self._timers:
            self._every("gossip", self.cfg.gossip_interval * self.rng.random(), self._gossip_tick)

    def _visible_owners(self) -> list[str]:
        return [o for o in self.store.owners() if self.visible(o)]

    def _udp_sync_tick(self) -> float:
        """Scuttlebutt by UDP with one random peer: the whole digest if it fits a packet,
        else a sample (owners changed recently first), so a member that missed an eager
        push catches up in seconds rather than at the next push-pull."""
        c = self.cfg
        peers = self._pick(1)
        if not peers:
            return c.udp_sync_interval
        owners = self._visible_owners()
        digest = self.store.digest(owners)
        wire = codec.encode_one(Digest(self.name, self.addr, True, digest))
        if len(wire) + 1 > c.digest_udp_max:
            now = self.clock.now()
            horizon = now - c.recent_window
            for o in [o for o, t in self._recent.items() if t < horizon]:
                del self._recent[o]
            recent = [o for o in self._recent if o in digest]
            self.rng.shuffle(recent)
            sample: dict[str, int] = {}
            size = 64
            for o in recent + [owners[int(self.rng.random() * len(owners))] for _ in range(64)]:
                if o in sample:
                    continue
                size += len(o) + 24
                if size > c.digest_udp_max:
                    break
                sample[o] = digest[o]
            wire = codec.encode_one(Digest(self.name, self.addr, True, sample, partial=True))
        self._send_parts(self.members[peers[0]].addr, [wire], piggyback=False)
        return c.udp_sync_interval

    def _on_digest(self, d: Digest) -> None:
        out: list[bytes] = []
        budget = self.cfg.packet_budget - 16
        if d.partial:
            owners = [o for o in d.versions if self.visible(o)]
        else:
            owners = self._visible_owners()
        if d.reply:
            if d.partial:  # the same owners back, with 0 for those we hold nothing of
                wm = self.store.watermark
                mine = Digest(self.name, self.addr, False, {o: wm(o) for o in owners}, True)
            else:
                mine = Digest(self.name, self.addr, False, self.store.digest(owners))
            wire = codec.encode_one(mine)
            if len(wire) + 1 <= self.cfg.digest_udp_max:
                out.append(wire)
                budget -= len(wire) + 1
        deltas = self.store.deltas(d.versions, owners, budget, self.rng)
        if self._cut(deltas, d.versions, owners):
            # More than a packet holds: the whole difference goes by TCP instead.
            full = self.store.deltas(d.versions, owners, None, self.rng)
            self._send_stream(d.src_addr, [full])
        elif deltas.entries or deltas.watermarks:
            out.append(codec.encode_one(deltas))
        if out:
            self._send_parts(d.src_addr, out, piggyback=False)

    def _cut(self, deltas: Deltas, peer: dict[str, int], owners: list[str]) -> bool:
        """Whether ``deltas`` leave out something the peer lacks (the budget cut them)."""
        for owner in owners:
            mine = self.store.watermark(owner)
            if mine > peer.get(owner, 0) and deltas.watermarks.get(owner, 0) < mine:
                return True
        return False

    def _deltas_for(self, digest: dict[str, int], budget: int | None) -> Deltas:
        return self.store.deltas(digest, self._visible_owners(), budget, self.rng)

    def _apply_deltas(self, d: Deltas) -> None:
        for e in d.entries:
            self._apply_entry(e, rebroadcast=False)
        for owner, mark in d.watermarks.items():
            if owner != self.name and owner in self.members:
                self.store.raise_watermark(owner, mark)

    def _apply_entry(self, e: Entry, rebroadcast: bool) -> None:
        g = self.guard
        if e.owner == self.name:
            # Only a record we signed may move our versions on (a forged one with a huge
            # version would otherwise use them up).
            if g is None or not g.admit(e.owner, e.key, e.version, e.value, e.sig):
                self._own_echo(e)
            return
        m = self.members.get(e.owner)
        if m is None:
            return
        if g is not None:
            if not self.store.newer(e):
                return  # stale or replayed: no signature check needed
            refused = g.admit(e.owner, e.key, e.version, e.value, e.sig)
            if refused == PENDING:
                g.park(e.owner, (e, rebroadcast))
                return
            if refused:
                return
        if self.store.apply(e):
            self._recent[e.owner] = self.clock.now()
            if rebroadcast:
                self.bq.queue(("s", e.owner, e.key), e)
            if m.state in (ALIVE, SUSPECT) and (g is None or not g.blocked(e.owner)):
                self._emit(Change(e.owner, e.key, None if e.deleted else e.value, e.version))
            if g is not None:
                for hidden in g.applied(e.owner, e.key, e.version, e.value):
                    self._reveal(hidden, False)
                if e.key.startswith(CERT_PREFIX):
                    for parked in g.unpark(e.owner):
                        assert isinstance(parked, tuple)
                        self._apply_entry(parked[0], parked[1])

    def _own_echo(self, e: Entry) -> None:
        """Others hold a version of one of our keys: never let our versions go back."""
        if e.version > self._version:
            self._version = e.version
        cur = self.store.get(self.name, e.key)
        if cur is not None and cur.version >= e.version:
            return
        if cur is not None:
            self.publish(e.key, cur.value, deleted=cur.deleted)
        elif not e.deleted:  # a key of an earlier life of this member: withdraw it, but
            # only after the grace period, so a restarted owner that publishes it again
            # (an agent re-adopting its instances) never makes it vanish meanwhile.
            left = self._started_at + self.cfg.adopt_grace - self.clock.now()
            if left <= 0:
                self.publish(e.key, None, deleted=True)
                return
            if not self._earlier:
                self.clock.call_later(left, self._withdraw_earlier)
            self._earlier.add(e.key)

    def _withdraw_earlier(self) -> None:
        """The grace period is over: tombstone the earlier life's keys not published since."""
        keys, self._earlier = self._earlier, set()
        if not self._running:
            return
        for key in sorted(keys):
            if self.store.get(self.name, key) is None:
                self.publish(key, None, deleted=True)

    def _push_pull(
        self, nonce: int, join: bool, reply: bool, peer: dict[str, int] | None = None
    ) -> PushPull:
        new = tuple.__new__  # MemberRow's own __new__ is a Python call: 1000s of rows
        rows = tuple(
            [new(MemberRow, (m.name, m.addr, m.inc, m.state)) for m in self.members.values()]
        )
        deltas = (
            self._deltas_for(peer, self.cfg.max_stream_bytes // 2)
            if peer is not None
            else Deltas({}, ())
        )
        digest = self.store.digest(self._visible_owners())
        return PushPull(nonce, join, reply, self.name, self.addr, rows, digest, deltas)

    def _push_pull_tick(self) -> float:
        peers = self._pick(1)
        if peers:
            m = self.members[peers[0]]
            self._send_stream(m.addr, [self._push_pull(self._next_seq(), False, False)])
        return self.cfg.push_pull_scaled(len(self._live) + 1) * (0.9 + 0.2 * self.rng.random())

    def _on_push_pull(self, p: PushPull) -> None:
        self._merge_members(p.members)
        self._apply_deltas(p.deltas)
        if p.reply:
            cb = self._joins.pop(p.nonce, None)
            if cb is not None:
                cb(p.src_addr)
            back = self._deltas_for(p.digest, self.cfg.max_stream_bytes // 2)
            if back.entries:
                self._send_stream(p.src_addr, [back])
        else:
            self._send_stream(p.src_addr, [self._push_pull(p.nonce, p.join, True, p.digest)])

    def _merge_members(self, rows: Iterable[MemberRow]) -> None:
        """memberlist mergeRemoteState: a remote 'dead' only makes us suspect."""
        members, me = self.members, self.name
        for r in rows:
            if r.state == ALIVE:
                m = members.get(r.name)
                if (
                    m is not None
                    and r.inc <= m.inc
                    and r.name != me
                    and not (m.state >= DEAD and r.addr != m.addr)
                ):
                    continue  # what _on_alive would ignore (most rows): no Alive built
                self._on_alive(Alive(r.name, r.addr, r.inc))
            elif r.state == LEFT:
                if r.name not in self.members:
                    continue
                self._on_dead(Dead(r.name, r.inc, r.name))
            else:
                self._on_suspect(Suspect(r.name, r.inc, self.name))

    # --- reaping and partition healing --------------------------------------------------

    def _reap_tick(self) -> float:
        now = self.clock.now()
        for name in list(self._gone):
            m = self.members[name]
            if now - m.since > self.cfg.reap_after:
                del self.members[name]
                self._gone.discard(name)
                if self._addr_owner.get(m.addr) == name:
                    del self._addr_owner[m.addr]
                self.store.drop(name)
                if self.guard is not None:
                    self.guard.forget(name)
        recent = now - self.cfg.recent_window
        for o in [o for o, t in self._recent.items() if t < recent]:
            del self._recent[o]
        if self._told:
            told = now - self.cfg.probe_interval
            self._told = {n: t for n, t in self._told.items() if t >= told}
        horizon = now - self.cfg.rejoin_forget_after
        for addr in [a for a, t in self._known.items() if t < horizon]:
            del self._known[addr]
        return self.cfg.probe_interval

    def _rejoin_tick(self) -> float:
        """Re-join seeds and recently known addresses that are not live members now."""
        if not self.seeds and not self._known:
            return self.cfg.rejoin_interval

        def state_at(addr: str) -> int | None:
            owner = self._addr_owner.get(addr)
            m = self.members.get(owner) if owner is not None else None
            return None if m is None or m.addr != addr else m.state

        targets = [s for s in self.seeds if state_at(s) not in (ALIVE, SUSPECT)]
        others = [
            a for a in self._known if state_at(a) not in (ALIVE, SUSPECT, LEFT) and a not in targets
        ]
        if others:
            targets += self.rng.sample(others, min(3, len(others)))
        by_addr: dict[str, list[MemberRow]] = {}
        for n in self._gone:
            m = self.members[n]
            by_addr.setdefault(m.addr, []).append(MemberRow(m.name, m.addr, m.inc, m.state))
        me = self.members[self.name]
        digest = self.store.digest(self._visible_owners())
        for addr in targets:
            # A small join: ourselves, what we believe of the member at that address (so
            # it refutes a stale death at once) and our digest; the answer is complete.
            rows = (MemberRow(me.name, me.addr, me.inc, me.state), *by_addr.get(addr, ()))
            msg = PushPull(
                self._next_seq(), True, False, self.name, self.addr, rows, digest, Deltas({}, ())
            )
            self._send_stream(addr, [msg])
        return self.cfg.rejoin_interval
