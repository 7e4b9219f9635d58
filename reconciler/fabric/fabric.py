"""The asyncio face of the fabric: :class:`Fabric` implements :class:`~.api.FabricAPI`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from reconciler.clock import Clock, RealClock
from reconciler.errors import FabricError

from .api import Change, JSONValue, Member, RecordGuard
from .config import FabricConfig
from .engine import Engine, Stats
from .keyring import Keyring
from .memory import MemoryNetwork
from .transport import Transport
from .udp import UdpTcpTransport
from .versions import version_source

log = logging.getLogger("myco.fabric")

_END = object()


class Subscription:
    """An async iterator of :class:`Change`; registered as soon as it is created."""

    def __init__(self, fabric: Fabric, prefix: str) -> None:
        self.prefix = prefix
        self._queue: asyncio.Queue[Change | object] = asyncio.Queue()
        self._fabric = fabric

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Change:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # later calls end too
            raise StopAsyncIteration
        assert isinstance(item, Change)
        return item

    def _put(self, item: Change | object) -> None:
        self._queue.put_nowait(item)

    async def aclose(self) -> None:
        self._fabric._subs.discard(self)
        self._put(_END)


class Fabric:
    """One member of the control fabric over any transport (see :func:`open_fabric`)."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        config: FabricConfig | None = None,
        keyring: Keyring | None = None,
        cluster: str = "myco",
        seeds: Sequence[str] = (),
        state_dir: Path | str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        guard: RecordGuard | None = None,
    ) -> None:
        if not name or len(name) > 256:
            raise FabricError("a member name is 1..256 characters")
        self.config = config or FabricConfig.local()
        self._clock = clock or RealClock()
        floor, reserve = version_source(
            Path(state_dir) if state_dir is not None else None, self._clock.wall()
        )
        self._subs: set[Subscription] = set()
        self.engine = Engine(
            name,
            transport,
            self._clock,
            self.config,
            keyring=keyring,
            cluster=cluster,
            rng=rng,
            version_floor=floor,
            incarnation=int(self._clock.wall()),
            reserve_versions=reserve,
            on_change=self._on_change,
            seeds=seeds,
            guard=guard,
        )
        self.guard = guard
        self._transport = transport
        self._closed = False
        self._refused: dict[str, int] = {}  # source host -> packets refused (wrong key/cluster)

    # FabricAPI.

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def addr(self) -> str:
        return self.engine.addr

    @property
    def stats(self) -> Stats:
        return self.engine.stats

    def publish(self, key: str, value: JSONValue) -> None:
        try:
            self.engine.publish(key, value)
        except ValueError as exc:
            raise FabricError(str(exc)) from exc

    def delete(self, key: str) -> None:
        if self.engine.store.get(self.name, key) is not None:
            self.engine.publish(key, None, deleted=True)

    def get(self, owner: str, key: str) -> JSONValue:
        return self.engine.get(owner, key)

    def version(self, owner: str, key: str) -> int | None:
        """The version of ``owner``'s ``key`` held here (tombstones included), or None."""
        it = self.engine.store.get(owner, key)
        return None if it is None else it.version

    def view(
        self, prefix: str = "", *, include_gone: bool = False
    ) -> dict[tuple[str, str], JSONValue]:
        return self.engine.view(prefix, include_gone)

    def subscribe(self, prefix: str = "") -> AsyncIterator[Change]:
        sub = Subscription(self, prefix)
        if self._closed:
            sub._put(_END)
        else:
            self._subs.add(sub)
        return sub

    def members(self) -> Sequence[Member]:
        return self.engine.member_list()

    def alive_members(self) -> list[str]:
        return sorted(m.name for m in self.members() if m.state in ("alive", "suspect"))

    async def join(self, addrs: Sequence[str]) -> int:
        """Contact ``addrs`` and merge; returns how many answered within the join timeout."""
        wanted = {a for a in addrs if a != self.addr}
        if not wanted:
            return 0
        answered: set[str] = set()
        done = asyncio.Event()

        def on_reply(addr: str) -> None:
            answered.add(addr)
            if len(answered) >= len(wanted):
                done.set()

        nonces = self.engine.join(sorted(wanted), on_reply)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.join_timeout):
                    await done.wait()
        finally:
            self.engine.forget_joins(nonces)
        return len(answered)

    async def leave(self) -> None:
        """Announce a graceful leave and give the news a few gossip rounds to spread."""
        if self.engine.leaving:
            return
        self.engine.leave()
        await asyncio.sleep(self.config.gossip_interval * 3)

    # Life cycle.

    def start(self) -> None:
        if self.guard is not None:  # first, so peers can check what follows
            key, value = self.guard.cert_record()
            self.engine.publish(key, value)
        self.engine.start()
        self._transport.set_receiver(self._receive)  # the engine's, watched for refusals

    def _receive(self, src: str, data: bytes, stream: bool) -> None:
        stats = self.engine.stats
        before = stats.dropped_auth
        self.engine.receive(src, data, stream)
        if stats.dropped_auth != before:
            host = src.rpartition(":")[0] or src
            seen = self._refused.get(host, 0)
            self._refused[host] = seen + 1
            if not seen:
                log.warning(
                    "fabric %s: refused packets from %s: they are sealed with another "
                    "cluster name or gossip key (check --cluster and --gossip-key on both)",
                    self.name,
                    host,
                )

    def identity_renewed(self) -> None:
        """The guard holds a renewed certificate: publish it (peers check it, then use it)."""
        if self.guard is not None:
            key, value = self.guard.cert_record()
            self.engine.publish(key, value)

    def refused_records(self) -> dict[str, int]:
        """Records of others refused by the guard, by reason (signature, authorization...)."""
        counts = getattr(self.guard, "refused", None)
        return dict(counts) if counts else {}

    @property
    def refused(self) -> dict[str, int]:
        """Packets refused (another cluster name or key), by source host."""
        return dict(self._refused)

    def unanswered_warning(self, waited_s: float) -> str:
        """The warning for a member no peer has answered after ``waited_s`` seconds."""
        text = f"fabric {self.name}: no member answered from {self.addr} after {waited_s:g} s"
        if self._refused:
            hosts = ", ".join(sorted(self._refused))
            text += f"; packets from {hosts} were refused (another --cluster or --gossip-key?)"
        else:
            text += (
                f"; check that the seeds are up, that they can reach {self.addr} "
                "(--advertise) and that every member shares --cluster and --gossip-key"
            )
        return text + "; still trying"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.engine.stop()
        for sub in list(self._subs):
            sub._put(_END)
        self._subs.clear()
        closer = getattr(self._transport, "close", None)
        if closer is not None:
            res = closer()
            if asyncio.iscoroutine(res):
                await res

    def _on_change(self, change: Change) -> None:
        for sub in self._subs:
            if change.key.startswith(sub.prefix):
                sub._put(change)


@contextlib.asynccontextmanager
async def open_fabric(
    name: str,
    bind: str = "127.0.0.1:0",
    seeds: Sequence[str] = (),
    keyring: Keyring | None = None,
    cluster: str = "myco",
    profile: str = "local",
    state_dir: Path | str | None = None,
    *,
    config: FabricConfig | None = None,
    advertise: str | None = None,
    leave_on_exit: bool = True,
    guard: RecordGuard | None = None,
) -> AsyncIterator[Fabric]:
    """A member on the real UDP+TCP transport, joined to ``seeds``; left and stopped on exit.

    An unreachable seed is not an error: the member keeps re-joining seeds in the
    background, which is also how two halves of a healed partition find each other.
    """
    cfg = config or FabricConfig.profile(profile)
    transport = await UdpTcpTransport.open(
        bind, advertise, max_stream_bytes=cfg.max_stream_bytes, stream_timeout=cfg.stream_timeout
    )
    try:
        fabric = Fabric(
            name, transport, config=cfg, keyring=keyring, cluster=cluster, seeds=seeds,
            state_dir=state_dir, guard=guard,
        )  # fmt: skip
    except BaseException:
        await transport.close()
        raise
    fabric.start()
    try:
        if seeds:
            answered = await fabric.join(seeds)
            if not answered and not [m for m in fabric.alive_members() if m != name]:
                log.warning("%s", fabric.unanswered_warning(cfg.join_timeout))
        yield fabric
    finally:
        if leave_on_exit and not fabric._closed:
            with contextlib.suppress(Exception):
                await fabric.leave()
        await fabric.close()


@contextlib.asynccontextmanager
async def open_memory_fabric(
    name: str,
    network: MemoryNetwork,
    seeds: Sequence[str] = (),
    *,
    keyring: Keyring | None = None,
    cluster: str = "myco",
    config: FabricConfig | None = None,
    state_dir: Path | str | None = None,
    addr: str | None = None,
    guard: RecordGuard | None = None,
) -> AsyncIterator[Fabric]:
    """A member on an in-memory network (real asyncio time): for other parts' tests.

    Make the network with ``MemoryNetwork(RealClock())``.
    """
    transport = network.transport(addr)
    fabric = Fabric(
        name, transport, config=config or FabricConfig.local(), keyring=keyring,
        cluster=cluster, seeds=seeds, state_dir=state_dir, clock=network.clock, guard=guard,
    )  # fmt: skip
    fabric.start()
    try:
        if seeds:
            await fabric.join(seeds)
        yield fabric
    finally:
        await fabric.close()
