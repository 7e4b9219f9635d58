"""One instance's life: start (or re-adopt), health-check, restart with backoff, wither.

A :class:`Supervisor` is driven by one task the agent owns (:meth:`Supervisor.lifecycle`).
Cancelling that task *detaches*: the process keeps running and a restarted agent adopts
it again from the state directory. :meth:`Supervisor.request_wither` makes the same task
drain and stop the instance for good.

An instance is told ``HOST`` (the host's advertised address) and ``PORT``, and is checked
on ``HOST:PORT``, the endpoint it is advertised at. One that answers on 127.0.0.1 but not
there binds loopback only: other hosts could not reach it, so it is restarted as unhealthy
with that reason (and, by the restart policy, ends ``failed``), never ready, never routed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import psutil

from reconciler.agent.health import check_http, port_open
from reconciler.agent.logfiles import remove_logs, rotate_if_needed, tail_lines
from reconciler.agent.nutrients import Enforcer, oom_kills
from reconciler.agent.policy import RestartTracker
from reconciler.agent.runner import LaunchSpec, ProcessRunner, ProcInfo
from reconciler.agent.state import PersistedInstance, StateDir
from reconciler.clock import Clock, RealClock
from reconciler.records import InstanceRecord, Phase

log = logging.getLogger("myco.agent")

BASE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")
LOOPBACK = "127.0.0.1"
LOOPBACK_ONLY = "listens on 127.0.0.1 only: unreachable from other hosts (bind $HOST: {host})"


@dataclass(frozen=True)
class SupervisorSettings:
    node: str
    advertise_host: str = "127.0.0.1"
    unhealthy_threshold: int = 3  # consecutive failed checks of a ready instance
    first_check_s: float = 0.01  # health polling while starting grows from here...
    max_starting_check_s: float = 0.1  # ...up to this (or the DNA's interval if shorter)
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 3
    drain_delay_s: float = 0.5  # after the edge stopped listing the endpoint
    drain_timeout_s: float = 10.0  # bound on waiting for the edge
    kill_wait_s: float = 5.0  # bound on waiting for SIGKILLed processes to vanish
    tail_lines: int = 10
    stats_every_s: float = 10.0  # how often RSS/CPU are re-published while ready


#: where a build vendors dependencies in the payload, and the variable that finds them
VENDORED = (("_vendor/python", "PYTHONPATH"), ("node_modules", "NODE_PATH"))


def vendored_paths(payload: Path, env: Mapping[str, str]) -> dict[str, str]:
    """``PYTHONPATH``/``NODE_PATH`` with the payload's vendored dependencies first.

    A Python build vendors into ``_vendor/python``, a Node build into ``node_modules``
    (Node also finds that directory beside a CommonJS script by itself; ``NODE_PATH``
    covers scripts elsewhere and ``node -e``). What the DNA's ``env`` sets comes after.
    """
    out: dict[str, str] = {}
    for rel, var in VENDORED:
        where = payload / rel
        if where.is_dir():
            out[var] = os.pathsep.join(p for p in (str(where), env.get(var, "")) if p)
    return out


Report = Callable[[InstanceRecord], None]
RouteCheck = Callable[[str], bool]  # endpoint -> still listed by some routes/* record


class Supervisor:
    def __init__(
        self,
        persisted: PersistedInstance,
        *,
        runner: ProcessRunner,
        enforcer: Enforcer,
        state: StateDir,
        session: aiohttp.ClientSession,
        settings: SupervisorSettings,
        report: Report,
        routed: RouteCheck,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.p = persisted
        self.runner = runner
        self.enforcer = enforcer
        self.state = state
        self.session = session
        self.settings = settings
        self._report = report
        self._routed = routed
        self.clock: Clock = clock or RealClock()
        self.tracker = RestartTracker(persisted.config.restart, rng or random.Random())
        self.tracker.restarts = persisted.restarts
        self._stop = asyncio.Event()
        self._wait: asyncio.Task[int | None] | None = None
        self._oom_seen = oom_kills(persisted.limits)
        self._ps: psutil.Process | None = None
        self._stats_at = 0.0
        enforcer.track(persisted.config.instance_id, persisted.config.nutrients.cpu_milli)
        c = persisted.config
        self.log_path = state.log_path(c.instance_id)
        self.record = InstanceRecord(
            instance_id=c.instance_id,
            app=c.app,
            digest=c.digest,
            version=c.version,
            node=c.node,
            phase="starting",
            endpoint=self.endpoint,
            enforcement=persisted.limits.mechanism,
            started_at=persisted.started_at,
            restarts=persisted.restarts,
        )

    # --- public -------------------------------------------------------------------------
    @property
    def instance_id(self) -> str:
        return self.p.config.instance_id

    @property
    def endpoint(self) -> str:
        return f"{self.settings.advertise_host}:{self.p.port}"

    def request_wither(self) -> None:
        self._stop.set()

    async def lifecycle(self) -> None:
        """Run until asked to wither, then drain and stop; cancel to detach instead."""
        run = asyncio.ensure_future(self._run())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not self._stop.is_set():
                await stop  # failed or exited for good: stay reported until withered
        finally:
            for t in (run, stop):
                t.cancel()
            for t in (run, stop):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if self._wait is not None and not self._wait.done():
                self._wait.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._wait
            self._wait = None
            if run.done() and not run.cancelled() and run.exception() is not None:
                log.error("supervisor of %s crashed", self.instance_id, exc_info=run.exception())
        await self._wither()

    # --- reporting ----------------------------------------------------------------------
    def _set(self, phase: Phase, **fields: object) -> None:
        pid = self.p.proc.pid if self.p.proc else None
        rss, cpu = self._usage() if phase in ("starting", "ready") else (0.0, 0.0)
        self.record = replace(
            self.record,
            phase=phase,
            pid=pid if phase in ("starting", "ready", "draining") else None,
            restarts=self.tracker.restarts,
            rss_mb=rss,
            cpu_percent=cpu,
            updated_at=self.clock.wall(),
            **fields,  # type: ignore[arg-type]
        )
        self._stats_at = self.clock.now()
        self._report(self.record)

    def _usage(self) -> tuple[float, float]:
        """RSS (MiB) and CPU % of the instance's main process since the last call."""
        pid = self.p.proc.pid if self.p.proc else None
        if pid is None:
            return 0.0, 0.0
        try:
            if self._ps is None or self._ps.pid != pid:
                self._ps = psutil.Process(pid)
                self._ps.cpu_percent(None)  # the first call only sets the baseline
            rss = self._ps.memory_info().rss / (1024 * 1024)
            return round(rss, 1), round(self._ps.cpu_percent(None), 1)
        except psutil.Error:
            return 0.0, 0.0

    def _refresh_usage(self) -> None:
        """Re-publish resource usage now and then (not on every health check)."""
        if self.clock.now() - self._stats_at < self.settings.stats_every_s:
            return
        rss, cpu = self._usage()
        self._stats_at = self.clock.now()
        if abs(rss - self.record.rss_mb) >= 1.0 or abs(cpu - self.record.cpu_percent) >= 5.0:
            self.record = replace(
                self.record, rss_mb=rss, cpu_percent=cpu, updated_at=self.clock.wall()
            )
            self._report(self.record)

    # --- running ------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        c = self.p.config
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        env.update(dict(c.env))
        env.update(
            HOST=self.settings.advertise_host,
            PORT=str(self.p.port),
            MYCO_APP=c.app,
            MYCO_INSTANCE=c.instance_id,
            MYCO_NODE=c.node,
            MYCO_VERSION=c.version,
            MYCO_DIGEST=c.digest,
        )
        env.update(vendored_paths(Path(c.cwd), env))
        return env

    async def _start(self) -> ProcInfo:
        c = self.p.config
        spec = LaunchSpec(
            instance_id=c.instance_id,
            node=c.node,
            argv=c.argv,
            cwd=Path(c.cwd),
            env=self._env(),
            log_path=self.log_path,
            limits=self.p.limits,
        )
        # posix_spawn blocks until the child has exec'd: on a busy host that is a few ms,
        # so it runs off the event loop (health checks of the others go on meanwhile).
        info = await asyncio.to_thread(self.runner.start, spec)
        self.p = replace(self.p, proc=info, started_at=self.clock.wall())
        self.p = replace(self.p, restarts=self.tracker.restarts)
        self.state.save(self.p)
        log.info("started %s pid %s (%s)", c.instance_id, info.pid, self.p.limits.mechanism)
        return info

    async def _run(self) -> None:
        info = self.p.proc
        if info is not None:
            if self.runner.adopt(info):
                log.info("re-adopted %s pid %s", self.instance_id, info.pid)
            else:
                log.info("%s: pid %s is gone or reused; starting again", self.instance_id, info.pid)
                await self._terminate(info, 0.0, wait=False)
                info = None
        while True:
            if info is None:
                info = await self._start()
            self._set("starting", started_at=self.p.started_at, message="", healthy=False)
            self._wait = asyncio.ensure_future(self.runner.wait(info))
            unhealthy_msg = await self._watch()
            if unhealthy_msg:
                await self._terminate(info, self.p.config.restart.stop_grace_s, wait=True)
            code = await self._wait
            self._wait = None
            self.p = replace(self.p, proc=None)
            self.state.save(self.p)
            ooms = oom_kills(self.p.limits)
            oom = ooms > self._oom_seen
            self._oom_seen = ooms
            why = unhealthy_msg or f"exited with code {code}"
            if oom:
                mb = self.p.config.nutrients.memory_mb
                why = f"killed by the OOM killer (memory limit {mb} MiB)"
            verdict = self.tracker.record_failure(self.clock.now(), code, bool(unhealthy_msg))
            log.info("%s: %s; %s", self.instance_id, why, verdict.reason)
            if verdict.crash_loop:
                lines = tail_lines(self.log_path, self.settings.tail_lines)
                msg = f"{verdict.reason}; last: {why}"
                if lines:
                    msg += "\n" + "\n".join(lines)
                self._set("failed", last_exit_code=code, healthy=False, message=msg)
                return
            if not verdict.restart:
                self._set("exited", last_exit_code=code, healthy=False, message=why)
                return
            self._set(
                "starting",
                last_exit_code=code,
                healthy=False,
                message=f"{why}; restart in {verdict.delay_s:.2f}s",
            )
            await self.clock.sleep(verdict.delay_s)
            info = None

    async def _watch(self) -> str:
        """Health-check until the process ends ("") or turns unhealthy (the reason)."""
        assert self._wait is not None
        h = self.p.config.health
        start = self.clock.now()
        ready = False
        bad = 0
        loopback_only = 0  # consecutive checks answered on 127.0.0.1 but not on HOST
        step = self.settings.first_check_s
        while True:
            sleeper = asyncio.ensure_future(self.clock.sleep(step if not ready else h.interval_s))
            try:
                await asyncio.wait({self._wait, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sleeper
            if self._wait.done():
                return ""
            rotate_if_needed(self.log_path, self.settings.log_max_bytes, self.settings.log_keep)
            if not ready and not await port_open(
                self.settings.advertise_host, self.p.port, h.timeout_s
            ):
                ok = False  # not even listening yet: skip the (dearer) HTTP request
                if await self._answers_on_loopback_only(h.timeout_s):
                    loopback_only += 1
                    if loopback_only >= self.settings.unhealthy_threshold:
                        return LOOPBACK_ONLY.format(host=self.settings.advertise_host)
                else:
                    loopback_only = 0
            else:
                ok = await check_http(self.session, self.endpoint, h.path, h.timeout_s)
            if ok:
                bad = 0
                if not ready:
                    ready = True
                    self._set("ready", healthy=True, message="")
                else:
                    self._refresh_usage()
                continue
            if not ready:
                if self.clock.now() - start > h.grace_s:
                    return f"not healthy within {h.grace_s:g}s"
                cap = min(h.interval_s, self.settings.max_starting_check_s)
                step = min(step * 1.5, max(cap, self.settings.first_check_s))
                continue
            bad += 1
            if bad >= self.settings.unhealthy_threshold:
                return f"failed {bad} health checks in a row"
            if self.record.healthy:
                self._set("ready", healthy=False, message=f"health check failed ({bad})")

    async def _answers_on_loopback_only(self, timeout_s: float) -> bool:
        """Whether the instance listens on 127.0.0.1 (its advertised endpoint being closed)."""
        if self.settings.advertise_host == LOOPBACK:
            return False
        return await port_open(LOOPBACK, self.p.port, min(timeout_s, 0.5))

    async def _terminate(self, info: ProcInfo, grace: float, *, wait: bool) -> None:
        """SIGTERM to the whole group and cgroup, ``grace``, then SIGKILL; until none left."""
        c = self.p.config
        lim = self.p.limits

        def members() -> set[int]:
            return self.runner.members(info, c.instance_id, c.node, lim)

        if members():
            self.runner.signal(info, c.instance_id, c.node, lim, signal.SIGTERM)
            deadline = self.clock.now() + grace
            while members() and self.clock.now() < deadline:
                await self.clock.sleep(0.02)
        deadline = self.clock.now() + self.settings.kill_wait_s
        while members():
            self.runner.signal(info, c.instance_id, c.node, lim, signal.SIGKILL)
            if self.clock.now() > deadline:
                log.error("%s: processes %s survive SIGKILL", c.instance_id, sorted(members()))
                break
            await self.clock.sleep(0.01)
        if wait and self._wait is None:
            self._wait = asyncio.ensure_future(self.runner.wait(info))

    async def _wither(self) -> None:
        info = self.p.proc
        c = self.p.config
        if info is not None and self.runner.adopt(info):
            self._set("draining", healthy=False, message="withering")
            deadline = self.clock.now() + self.settings.drain_timeout_s
            while self._routed(self.endpoint) and self.clock.now() < deadline:
                await self.clock.sleep(0.05)
            await self.clock.sleep(min(self.settings.drain_delay_s, self.settings.drain_timeout_s))
            await self._terminate(info, c.restart.stop_grace_s, wait=True)
            if self._wait is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._wait
                self._wait = None
        elif info is not None:
            await self._terminate(info, 0.0, wait=False)
        self.enforcer.remove(self.p.limits)
        self.state.forget(c.instance_id)
        remove_logs(self.log_path)
        self._set("exited", healthy=False, message="withered")
        log.info("withered %s", c.instance_id)
