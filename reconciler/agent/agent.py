"""The agent driver: fabric in, processes out (docs/agent.md).

It reads ``intents/<node>`` from the fabric, asks the pure :func:`converge` what to do,
and does it: sprout (fetch → verify → extract → supervise) or wither. It publishes
``node`` and ``inst/<id>``. Every instance is one task in the agent's task group; stopping
the agent cancels them, which *detaches* the processes (they keep running, and the next
agent on this state directory adopts them).

Safety rules the driver adds to the pure decision:

* no intent visible (the fabric has not synced yet after a restart, or the reconciler is
  gone) changes nothing: only an intent that leaves an instance out withers it;
* an intent from a lease epoch older than the newest one seen is ignored; the newest
  epoch is kept in the state directory, so a restart does not forget it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import psutil

from reconciler.agent.converge import Start, Stop, converge, free_credits, pick_intent
from reconciler.agent.fetch import FetchSettings, Prepared, SporeCache
from reconciler.agent.nutrients import Enforcer
from reconciler.agent.peers import announced, peers_holding
from reconciler.agent.platform import check_platform, detect, spore_platform
from reconciler.agent.runner import LocalRunner, ProcessRunner
from reconciler.agent.state import InstanceConfig, PersistedInstance, StateDir
from reconciler.agent.supervisor import Supervisor, SupervisorSettings
from reconciler.aio import first_error, guard, wait_event
from reconciler.clock import Clock, RealClock
from reconciler.errors import FabricError, MycoError, TemporaryError
from reconciler.fabric.api import FabricAPI
from reconciler.fabric.joining import JoinSettings
from reconciler.files import atomic_write
from reconciler.httpclient import one_attempt_session
from reconciler.records import (
    KEY_NODE,
    PREFIX_ROUTES,
    InstanceRecord,
    IntentInstance,
    IntentRecord,
    NodeRecord,
    Nutrients,
    instance_key,
    intents_key,
)
from reconciler.spore.trust import TrustPolicy

if TYPE_CHECKING:
    from reconciler.identity.live import LiveIdentity

log = logging.getLogger("myco.agent")


def default_capacity() -> Nutrients:
    return Nutrients(
        (os.cpu_count() or 1) * 1000, int(psutil.virtual_memory().total // (1024 * 1024))
    )


@dataclass(frozen=True)
class AgentConfig:
    node: str
    state_dir: Path
    fabric: JoinSettings = field(default_factory=JoinSettings)  # how it joins the fabric
    api_bind: str = "127.0.0.1:0"  # off loopback: needs the agent's identity, or --insecure
    api_open_access: bool = False  # loopback only: ask no credentials, even with an identity
    trust: tuple[Path, ...] = ()
    capacity: Nutrients = field(default_factory=default_capacity)
    labels: tuple[tuple[str, str], ...] = ()
    advertise_host: str = "127.0.0.1"
    enforcement: str = "auto"  # auto | cgroup2 | cgroup1 | rlimit
    resync_s: float = 1.0
    drain_delay_s: float = 0.5
    drain_timeout_s: float = 10.0
    fetch: FetchSettings = field(default_factory=FetchSettings)
    wither_on_exit: bool = False  # stop the instances too when the agent stops (myco up)
    platforms: tuple[str, ...] | None = None  # platform tags run here; None: detect at start
    exit_wither_timeout_s: float = 30.0


@dataclass
class _Failed:
    digest: str
    retry_at: float | None  # None: permanent until the intent changes


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        fabric: FabricAPI,
        trust: TrustPolicy,
        *,
        runner: ProcessRunner | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        live: LiveIdentity | None = None,
    ) -> None:
        """``live``: the agent's identity (its API serves mutual TLS, and spores are fetched
        from the repo and from peers with its client certificate); None: plain HTTP."""
        self.config = config
        self.live = live
        self.fabric = fabric
        self.trust = trust
        self.runner: ProcessRunner = runner or LocalRunner()
        self.clock = clock or RealClock()
        self.rng = rng or random.Random()
        self.state = StateDir(config.state_dir)
        self.enforcer = Enforcer(config.node, prefer=config.enforcement)
        self.settings = SupervisorSettings(
            node=config.node,
            advertise_host=config.advertise_host,
            drain_delay_s=config.drain_delay_s,
            drain_timeout_s=config.drain_timeout_s,
        )
        self.api_url = ""
        self.platforms: tuple[str, ...] = config.platforms or ()  # see run()
        self.records: dict[str, InstanceRecord] = {}
        self.records_json: dict[str, dict[str, Any]] = {}  # as published (API reuses it)
        self._sups: dict[str, Supervisor] = {}
        self._digests: dict[str, str] = {}  # instance -> digest, for every local instance
        self._nutrients: dict[str, Nutrients] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._withering: set[str] = set()
        self._failed: dict[str, _Failed] = {}
        self._ports: set[int] = set()
        self._dirty = asyncio.Event()
        self._exiting = False
        self._tg: asyncio.TaskGroup | None = None
        self._session: aiohttp.ClientSession | None = None
        self.cache: SporeCache | None = None
        self.max_epoch = self._load_epoch()
        self.intent_revision = ""
        self.intent_seen_at = 0.0  # wall time the current intent was first acted on
        self.metrics: dict[str, int] = {
            "sprouts_total": 0,
            "withers_total": 0,
            "sprout_failures_total": 0,
            "intents_ignored_total": 0,
        }
        self.ready = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        """Run until cancelled; instances are detached, never stopped, on the way out.

        The fabric watch must last as long as the agent: if it ends (the fabric stopped)
        or fails, the agent stops with :class:`~reconciler.errors.ServiceFailed`, so the
        ``myco agent`` process does not run on half alive.
        """
        from reconciler.agent.api import serve_api  # api imports this module

        try:
            async with (
                one_attempt_session() as session,  # health checks of the instances
                self._mesh_session() as mesh,  # the repo and peers: mutual TLS
                asyncio.TaskGroup() as tg,
            ):
                self._session = session
                self._tg = tg
                self.cache = SporeCache(
                    self.config.state_dir,
                    self.trust,
                    mesh,
                    self.config.fetch,
                    peers=lambda d: peers_holding(self.fabric, d, self.config.node, self.rng),
                    on_verified=lambda _: self.publish_node(),
                )
                if self.config.platforms is None:
                    self.platforms = await detect()
                    log.info("platforms: %s", ", ".join(self.platforms))
                self.enforcer.remove_stale(self.state.instance_ids())
                api = await serve_api(
                    self,
                    self.config.api_bind,
                    self.live,
                    open_access=self.config.api_open_access,
                )
                try:
                    self._adopt_all()
                    tg.create_task(self._reverify_held(), name="agent-reverify")
                    self.publish_node()
                    watch = guard("the fabric watch", self._watch_fabric())
                    tg.create_task(watch, name="agent-watch")
                    self.ready.set()
                    try:
                        await self._loop()
                    except asyncio.CancelledError:
                        if self.config.wither_on_exit:
                            await self._wither_all()
                        raise
                finally:
                    await self.cache.aclose()
                    await api.cleanup()
                    # empty cgroups of gone instances; those left to be re-adopted stay
                    await self.enforcer.cleanup_settled(self.state.instance_ids())
        except BaseExceptionGroup as eg:  # report the task that failed, not the group
            raise first_error(eg) from None

    def _mesh_session(self) -> aiohttp.ClientSession:
        """The session for other members' HTTPS (the repo, peers): this agent's client
        certificate, the mesh root as the only trust anchor. Renewal reloads the context
        in place, so new connections show the new certificate."""
        if self.live is None:
            return one_attempt_session()
        return one_attempt_session(connector=aiohttp.TCPConnector(ssl=self.live.client_ssl))

    async def _reverify_held(self) -> None:
        """Serve the spores of re-adopted instances again (they are not fetched anew)."""
        assert self.cache is not None
        try:
            await self.cache.verify_held(sorted(set(self._digests.values())))
        except Exception:  # serving to peers is a bonus: never take the agent down
            log.exception("re-verifying held spores failed")

    def serves_spore(self, digest: str) -> bool:
        """Whether peers may fetch ``digest`` here (held and verified by this process)."""
        return self.cache is not None and self.cache.serves(digest)

    async def _watch_fabric(self) -> None:
        # A change to our intents wakes the loop at once; the periodic pass catches
        # anything missed (level-triggered).
        async for _ in self.fabric.subscribe(intents_key(self.config.node)):
            self._dirty.set()

    async def _loop(self) -> None:
        while True:
            try:
                self.converge_once()
            except MycoError as exc:
                log.warning("convergence pass failed: %s", exc)
            except Exception:  # a bug in one pass must not stop the node's agent
                log.exception("convergence pass failed")
            await wait_event(self._dirty, self.config.resync_s)
            self._dirty.clear()

    # --- convergence --------------------------------------------------------------------
    def current_intent(self) -> IntentRecord | None:
        key = intents_key(self.config.node)
        records: list[tuple[str, IntentRecord]] = []
        for (owner, k), value in self.fabric.view(key).items():
            if k != key or value is None:
                continue
            try:
                records.append((owner, IntentRecord.from_json(value)))
            except FabricError as exc:
                log.warning("ignoring malformed intent from %s: %s", owner, exc)
        best = pick_intent(records, self.max_epoch)
        if best is None and records:
            self.metrics["intents_ignored_total"] += 1
        return best

    def converge_once(self) -> None:
        intent = self.current_intent()
        if intent is None:
            return
        if intent.revision != self.intent_revision or intent.epoch > self.max_epoch:
            self.intent_revision = intent.revision
            self.intent_seen_at = self.clock.wall()
        if intent.epoch > self.max_epoch:
            self.max_epoch = intent.epoch
            self._save_epoch()
        now = self.clock.now()
        local = dict(self._digests)
        for iid, f in list(self._failed.items()):
            if f.retry_at is not None and now >= f.retry_at:
                del self._failed[iid]  # try again
            else:
                local[iid] = f.digest
        for action in converge(intent.instances, local, self._withering):
            if isinstance(action, Start):
                self._sprout(action.intent)
            elif isinstance(action, Stop):
                self._stop(action.instance_id, action.reason)

    def _sprout(self, intent: IntentInstance) -> None:
        assert self._tg is not None
        iid = intent.instance_id
        self._digests[iid] = intent.digest
        self._nutrients[iid] = intent.nutrients
        self.metrics["sprouts_total"] += 1
        self._tasks[iid] = self._tg.create_task(self._instance(intent), name=f"inst-{iid}")
        self.publish_node()

    def _stop(self, iid: str, reason: str) -> None:
        log.info("withering %s: %s", iid, reason)
        if iid in self._failed:
            del self._failed[iid]
            self._forget(iid)
            return
        self._withering.add(iid)
        sup = self._sups.get(iid)
        if sup is not None:
            sup.request_wither()
        else:
            task = self._tasks.get(iid)
            if task is not None:
                task.cancel()  # still fetching: nothing runs yet

    async def _wither_all(self) -> None:
        """Stop every instance (the agent is exiting with ``wither_on_exit``)."""
        self._exiting = True  # no waiting for the edge: the whole mesh is going away
        for iid in list(self._tasks):
            self._stop(iid, "the agent is exiting (wither on exit)")
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.exit_wither_timeout_s)
            if pending:
                log.error("%d instance(s) not withered before exit", len(pending))

    def _forget(self, iid: str) -> None:
        self._digests.pop(iid, None)
        self._nutrients.pop(iid, None)
        self.records.pop(iid, None)
        self.records_json.pop(iid, None)
        with contextlib.suppress(FabricError):
            self.fabric.delete(instance_key(iid))
        self.publish_node()

    async def _instance(self, intent: IntentInstance) -> None:
        iid = intent.instance_id
        assert self.cache is not None
        withered = False
        sup: Supervisor | None = None
        try:
            self.report(
                InstanceRecord(
                    iid,
                    intent.app,
                    intent.digest,
                    intent.version,
                    self.config.node,
                    "fetching",
                    updated_at=self.clock.wall(),
                )
            )
            prepared = await self.cache.prepare(intent.digest, intent.fetch_urls)
            sup = self._new_supervisor(intent, prepared)
            await sup.lifecycle()
            withered = True
        except asyncio.CancelledError:
            if sup is None and iid in self._withering:
                withered = True  # cancelled while fetching because it was withered
            else:
                raise
        except Exception as exc:  # one instance's failure never takes the agent down
            self.metrics["sprout_failures_total"] += 1
            if not isinstance(exc, MycoError):
                log.error("unexpected error sprouting %s", iid, exc_info=True)
            delay = exc.delay if isinstance(exc, TemporaryError) else None
            retry_at = None if delay is None else self.clock.now() + max(delay, 1.0)
            log.warning("cannot sprout %s: %s", iid, exc)
            self._failed[iid] = _Failed(intent.digest, retry_at)
            self._digests.pop(iid, None)
            self.report(
                InstanceRecord(
                    iid,
                    intent.app,
                    intent.digest,
                    intent.version,
                    self.config.node,
                    "fetching" if retry_at is not None else "failed",
                    message=str(exc),
                    updated_at=self.clock.wall(),
                )
            )
        finally:
            self._tasks.pop(iid, None)
            sup_gone = self._sups.pop(iid, None)
            if sup_gone is not None:
                self._ports.discard(sup_gone.p.port)
            if withered:
                self._withering.discard(iid)
                self.metrics["withers_total"] += 1
                self._forget(iid)
                self._dirty.set()  # a digest change waits for this to start again

    def _new_supervisor(self, intent: IntentInstance, prepared: Prepared) -> Supervisor:
        m = prepared.manifest
        check_platform(spore_platform(m), self.platforms)  # never start a foreign build
        iid = intent.instance_id
        cfg = InstanceConfig(
            instance_id=iid,
            app=intent.app,
            digest=intent.digest,
            node=self.config.node,
            argv=(*m.command, *m.args),
            cwd=str(prepared.payload),
            version=m.version,
            env=tuple(m.env),
            nutrients=m.nutrients,
            health=m.health,
            restart=m.restart,
        )
        limits = self.enforcer.prepare(iid, m.nutrients)
        persisted = PersistedInstance(cfg, self._alloc_port(), limits)
        self.state.save(persisted)
        return self._supervise(persisted)

    def _supervise(self, persisted: PersistedInstance) -> Supervisor:
        assert self._session is not None
        sup = Supervisor(
            persisted,
            runner=self.runner,
            enforcer=self.enforcer,
            state=self.state,
            session=self._session,
            settings=self.settings,
            report=self.report,
            routed=self.routed,
            clock=self.clock,
            rng=self.rng,
        )
        self._sups[persisted.config.instance_id] = sup
        self._ports.add(persisted.port)
        return sup

    def _adopt_all(self) -> None:
        assert self._tg is not None
        for persisted in self.state.load_all():
            c = persisted.config
            if c.node != self.config.node:
                log.warning("state for %s belongs to node %s; skipped", c.instance_id, c.node)
                continue
            sup = self._supervise(persisted)
            self._digests[c.instance_id] = c.digest
            self._nutrients[c.instance_id] = c.nutrients
            self._tasks[c.instance_id] = self._tg.create_task(
                self._adopted(sup), name=f"inst-{c.instance_id}"
            )

    async def _adopted(self, sup: Supervisor) -> None:
        iid = sup.instance_id
        try:
            await sup.lifecycle()
        finally:
            self._tasks.pop(iid, None)
            self._sups.pop(iid, None)
            self._ports.discard(sup.p.port)
        self._withering.discard(iid)
        self.metrics["withers_total"] += 1
        self._forget(iid)
        self._dirty.set()

    def _alloc_port(self) -> int:
        """A port free on every interface now and not given to another instance here."""
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("", 0))
                port = int(s.getsockname()[1])
            if port not in self._ports:
                self._ports.add(port)
                return port
        raise MycoError("no free port found")

    # --- reporting ----------------------------------------------------------------------
    def report(self, record: InstanceRecord) -> None:
        self.records[record.instance_id] = record
        body = record.to_json()
        self.records_json[record.instance_id] = body
        try:
            self.fabric.publish(instance_key(record.instance_id), body)
        except FabricError as exc:
            log.warning("cannot publish %s: %s", record.instance_id, exc)

    def node_record(self) -> NodeRecord:
        placed = [self._nutrients[i] for i in self._digests if i in self._nutrients]
        return NodeRecord(
            node_id=self.config.node,
            gossip_addr=str(getattr(self.fabric, "addr", "")),
            api_url=self.api_url,
            capacity=self.config.capacity,
            free=free_credits(self.config.capacity, placed),
            labels=dict(self.config.labels),
            draining=False,
            insecure=self.config.fabric.insecure,
            spores=announced(self._digests.values(), self.cache.verified() if self.cache else ()),
            platforms=self.platforms,
        )

    def publish_node(self) -> None:
        with contextlib.suppress(FabricError):
            self.fabric.publish(KEY_NODE, self.node_record().to_json())

    def routed(self, endpoint: str) -> bool:
        """Whether any ``routes/*`` record still sends traffic to ``endpoint``."""
        if self._exiting:
            return False
        for value in self.fabric.view(PREFIX_ROUTES).values():
            if not isinstance(value, dict):
                continue
            backends = value.get("backends")
            if not isinstance(backends, list):
                continue
            for b in backends:
                if isinstance(b, dict) and b.get("endpoint") == endpoint:
                    return True
        return False

    # --- epoch --------------------------------------------------------------------------
    def _load_epoch(self) -> int:
        try:
            return int(json.loads((self.config.state_dir / "epoch.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _save_epoch(self) -> None:
        atomic_write(
            self.config.state_dir / "epoch.json", json.dumps({"epoch": self.max_epoch}).encode()
        )

    # --- views for the API ----------------------------------------------------------------
    def instances(self) -> Sequence[InstanceRecord]:
        return [self.records[k] for k in sorted(self.records)]
