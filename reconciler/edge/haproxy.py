"""``myco edge --data-plane haproxy``: the edge as HAProxy's control plane (docs/edge.md).

The pure part is :mod:`reconciler.edge.haproxy_plan` (routes → config text and runtime
commands). This module is the thin driver around it:

* :class:`RuntimeAPI` speaks HAProxy's runtime API on its unix socket (interactive mode,
  every command's answer read back, so each one is checked).
* :class:`HaproxyDriver` owns the HAProxy process and its state directory (config, map,
  runtime socket, log). ``await driver.apply(routes)`` makes HAProxy serve ``routes``:
  server changes go through the runtime API (no reload); an app that appears or goes
  rewrites the config and starts a new HAProxy that takes the listening sockets over from
  the old one (``-x`` socket transfer, ``-sf``: the old one finishes its requests).
  :meth:`HaproxyDriver.supervise` restarts HAProxy with backoff if it dies or its socket
  vanishes (the restart's config carries the whole table) and deletes drained servers once
  they carry no session.
* :func:`serve_haproxy` is the ``myco edge`` process around it: route source (fabric or
  static), stats into the fabric and the log, ``/metrics``.

For a benchmark, the driver runs in-process::

    async with HaproxyDriver.running(settings, state_dir) as driver:
        await driver.apply(routes)          # and again, with other backends, at will
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.edge.haproxy_plan import (
    Command,
    Current,
    Plan,
    Settings,
    accepted,
    app_counters,
    haproxy_addr,
    needs_reload,
    parse_stat_csv,
    plan_routes,
    reap_commands,
    render_config,
    render_map,
    runtime_commands,
    state_after_start,
)
from reconciler.edge.routing import split_endpoint
from reconciler.edge.server import StatsSink, log_stats
from reconciler.errors import EdgeError
from reconciler.records import KEY_EDGE_STATS, EdgeStatsRecord, RouteRecord

if TYPE_CHECKING:
    from reconciler.aio import Service
    from reconciler.edge.process import EdgeRunSpec
    from reconciler.edge.source import RouteSource
    from reconciler.fabric.api import FabricAPI

log = logging.getLogger("myco.edge")

HAPROXY_MISSING = "haproxy: not found; install Debian's haproxy package (apt-get install haproxy)"


def find_haproxy(binary: str = "haproxy") -> str:
    """The HAProxy executable's path, or one clear error naming the package."""
    path = shutil.which(binary)
    if path is None:
        raise EdgeError(HAPROXY_MISSING)
    return path


class RuntimeAPI:
    """HAProxy's runtime API on a unix socket: a batch of commands, one answer each."""

    def __init__(self, path: str, timeout_s: float = 20.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    async def run(self, commands: Sequence[str]) -> list[str]:
        """Send ``commands`` in interactive mode (pipelined) and return their answers."""
        if not commands:
            return []
        payload = ("prompt\n" + "\n".join(commands) + "\nquit\n").encode()
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_unix_connection(self.path, limit=1 << 22)
                try:

                    async def send() -> None:
                        writer.write(payload)
                        await writer.drain()

                    sent = asyncio.ensure_future(send())
                    raw = await reader.read()
                    await sent
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            raise EdgeError(f"haproxy runtime API {self.path}: {exc or 'timed out'}") from exc
        # Interactive mode: every answer (the first is prompt's own, empty) ends in "\n> ".
        parts = raw.decode(errors="replace").split("\n> ")
        answers = parts[1 : 1 + len(commands)]
        if len(answers) < len(commands):
            raise EdgeError(
                f"haproxy runtime API {self.path}: {len(answers)} answers to "
                f"{len(commands)} commands"
            )
        return answers

    async def ping(self) -> bool:
        try:
            answers = await self.run(["show info"])
        except EdgeError:
            return False
        return "Pid:" in answers[0]


class HaproxyDriver:
    """One HAProxy process (and its successors) serving the route table given to
    :meth:`apply`; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        state_dir: Path,
        *,
        binary: str = "haproxy",
        start_timeout_s: float = 15.0,
    ) -> None:
        self.base = settings
        self.state_dir = state_dir
        self.binary = find_haproxy(binary)
        self.start_timeout_s = start_timeout_s
        self.plan = Plan()
        self.current: Current = {}
        self.generation = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.api: RuntimeAPI | None = None
        self.restarts = 0
        self._retiring: set[asyncio.subprocess.Process] = set()
        self._reapers: set[asyncio.Future[None]] = set()
        self._lock = asyncio.Lock()
        self._stopping = False
        self._problems: frozenset[str] = frozenset()
        self._broken = False

    # -- public -------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, settings: Settings, state_dir: Path, *, binary: str = "haproxy"
    ) -> AsyncIterator[HaproxyDriver]:
        """An HAProxy serving an empty table for the block's duration, stopped after it."""
        driver = cls(settings, state_dir, binary=binary)
        try:
            await driver.apply(())
            yield driver
        finally:
            await driver.stop()

    @property
    def socket_path(self) -> str:
        return str(self.state_dir / "admin.sock")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def apply(self, routes: Sequence[RouteRecord]) -> Plan:
        """Make HAProxy serve ``routes`` (level-triggered: the whole table each time).

        Refused addresses are logged and left out, the others applied. Raises
        :class:`EdgeError` if HAProxy cannot be (re)started with the new table.
        """
        resolved = await self._resolve(routes)
        async with self._lock:
            plan = plan_routes(routes, resolved)
            self._report(plan.problems)
            if self.proc is None or needs_reload(self.plan.backends, plan):
                await self._start(plan)
                return plan
            self.plan = plan
            await self._run(runtime_commands(self.current, plan))
            return plan

    async def supervise(self, tick_s: float = 0.5) -> None:
        """Until cancelled: restart a dead HAProxy (backoff 0.5 s doubling to 10 s, reset
        after a minute up), or one whose socket vanished; delete drained servers."""
        backoff = 0.5
        up_since = time.monotonic()
        while True:
            proc = self.proc
            if proc is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(tick_s):
                        await proc.wait()
            else:
                await asyncio.sleep(tick_s)
            if self._stopping:
                return
            async with self._lock:  # not while apply() starts a successor
                reason = self._trouble()
                if reason is not None:
                    log.error("haproxy %s; restarting in %.1fs", reason, backoff)
                    await self._kill(self.proc)
                    self.proc = None
            if reason is None:
                if time.monotonic() - up_since > 60:
                    backoff = 0.5
                await self.reap()
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            async with self._lock:
                if self._stopping:
                    return
                if self.proc is not None:  # apply() started one meanwhile
                    continue
                try:
                    await self._start(self.plan)
                    self.restarts += 1
                    up_since = time.monotonic()
                except EdgeError as exc:
                    log.error("haproxy restart failed: %s", exc)

    async def reap(self) -> None:
        """Delete the servers that left the table once their sessions have ended."""
        async with self._lock:
            desired = self.plan.servers()
            if self.api is None or all(k in desired for k in self.current):
                return
            try:
                rows = parse_stat_csv((await self.api.run(["show stat"]))[0])
            except EdgeError as exc:
                log.warning("%s", exc)
                self._broken = True
                return
            _, sessions = app_counters(rows, self.plan)
            await self._run(reap_commands(self.current, self.plan, sessions))

    async def stat_rows(self) -> tuple[int, Plan, list[dict[str, str]]]:
        """``show stat`` of the running HAProxy, with its generation and plan."""
        async with self._lock:
            if self.api is None:
                return self.generation, self.plan, []
            answer = (await self.api.run(["show stat"]))[0]
            return self.generation, self.plan, parse_stat_csv(answer)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop HAProxy: requests in flight finish (up to the grace), then it is killed."""
        self._stopping = True
        grace = self.base.stop_grace_s if grace_s is None else grace_s
        procs = [p for p in (self.proc, *self._retiring) if p is not None]
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
        for p in procs:
            try:
                async with asyncio.timeout(grace + 1.0):
                    await p.wait()
            except TimeoutError:
                await self._kill(p)
        self.proc = None
        self.api = None
        for sock in self.state_dir.glob("admin*.sock"):  # HAProxy leaves some behind
            with contextlib.suppress(OSError):
                sock.unlink()

    def kill_now(self) -> None:
        """For a forced stop: SIGKILL every HAProxy process at once."""
        for p in (self.proc, *self._retiring):
            if p is not None and p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()

    # -- inside -------------------------------------------------------------------------

    def _settings(self, generation: int) -> Settings:
        from dataclasses import replace

        return replace(
            self.base,
            socket_path=str(self.state_dir / f"admin-{generation}.sock"),
            map_path=str(self.state_dir / "apps.map"),
        )

    def _trouble(self) -> str | None:
        if self.proc is None:
            return "is not running"
        if self.proc.returncode is not None:
            return f"exited with status {self.proc.returncode}"
        if self.api is not None and not os.path.exists(self.api.path):
            return f"runtime socket {self.api.path} vanished"
        if self._broken:
            return "runtime API stopped answering"
        return None

    async def _start(self, plan: Plan) -> None:
        """A new HAProxy on ``plan``'s config, taking the listeners over from the old one."""
        gen = self.generation + 1
        settings = self._settings(gen)
        cfg = self.state_dir / "haproxy.cfg"
        _write(Path(settings.map_path), render_map(plan))
        _write(cfg, render_config(settings, plan))
        old = self.proc if self.proc is not None and self.proc.returncode is None else None
        argv = [self.binary, "-db", "-f", str(cfg)]
        if old is not None and self.api is not None:
            argv += ["-x", self.api.path, "-sf", str(old.pid)]
        logfile = self.state_dir / "haproxy.log"
        with logfile.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err
            )
        api = RuntimeAPI(settings.socket_path)
        deadline = time.monotonic() + self.start_timeout_s
        while not await api.ping():
            if proc.returncode is not None or time.monotonic() > deadline:
                await self._kill(proc)
                raise EdgeError(f"haproxy did not start: {_tail(logfile)}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.02):
                    await proc.wait()
        if old is not None:
            self._retire(old)
        if self.api is not None and self.api.path != settings.socket_path:
            with contextlib.suppress(OSError):
                os.unlink(self.api.path)  # the old process's; it stops serving it anyway
        self.proc, self.api, self.generation = proc, api, gen
        self.plan, self.current, self._broken = plan, state_after_start(plan), False
        link = Path(self.socket_path)
        tmp = link.with_name("admin.sock.new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(Path(settings.socket_path).name)
        tmp.replace(link)
        log.info(
            "haproxy %s (pid %d, config %s): %d app(s), %d server(s)",
            "started" if old is None else "reloaded",
            proc.pid,
            cfg,
            len(plan.backends),
            len(self.current),
        )

    def _retire(self, proc: asyncio.subprocess.Process) -> None:
        """The old process finishes its requests and exits; it is reaped in the background."""
        self._retiring.add(proc)

        async def reap() -> None:
            await proc.wait()
            self._retiring.discard(proc)

        task = asyncio.ensure_future(reap())
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    async def _run(self, commands: list[Command]) -> None:
        if not commands or self.api is None:
            return
        try:
            answers = await self.api.run([c.text for c in commands])
        except EdgeError as exc:
            log.error("%s", exc)
            self._broken = True  # the supervisor restarts HAProxy on the whole table
            return
        refused: set[tuple[str, str]] = set()
        for cmd, answer in zip(commands, answers, strict=True):
            if accepted(cmd, answer):
                if cmd.after is None:
                    self.current.pop(cmd.key, None)
                else:
                    self.current[cmd.key] = cmd.after
            elif cmd.key not in refused:
                refused.add(cmd.key)
                log.warning("haproxy refused %r: %s", cmd.text, answer.strip() or "no answer")

    def _report(self, problems: Sequence[str]) -> None:
        now = frozenset(problems)
        for p in sorted(now - self._problems):
            log.warning("route problem: %s", p)
        self._problems = now

    async def _resolve(self, routes: Sequence[RouteRecord]) -> dict[str, str]:
        hosts: set[str] = set()
        for rec in routes:
            for b in rec.backends:
                try:
                    host, port = split_endpoint(b.endpoint)
                except EdgeError:
                    continue
                if haproxy_addr(host, port) is None:
                    hosts.add(host)
        out: dict[str, str] = {}
        loop = asyncio.get_running_loop()
        for host in sorted(hosts):
            try:
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError:
                continue
            if infos:
                out[host] = str(infos[0][4][0])
        return out

    async def _kill(self, proc: asyncio.subprocess.Process | None) -> None:
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _tail(logfile: Path, lines: int = 3) -> str:
    try:
        text = logfile.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    wanted = [t for t in text if "ALERT" in t] or text
    return " | ".join(t.strip() for t in wanted[-lines:]) or "no output"


class HaproxyStats:
    """Per-app figures from HAProxy's counters, in ``EdgeStatsRecord.apps``'s shape.

    HAProxy keeps no latency quantiles: ``p50_ms`` carries its average total time over its
    last 1024 requests and ``p99_ms`` is 0. Counters restart with each new HAProxy process
    (a reload), which is accounted for.
    """

    def __init__(self, now: float) -> None:
        self._since = now
        self._gen = -1
        self._last: dict[str, int] = {}
        self._last_5xx: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def roll(
        self, generation: int, plan: Plan, rows: list[dict[str, str]], now: float
    ) -> dict[str, dict[str, Any]]:
        apps, _ = app_counters(rows, plan)
        if generation != self._gen:
            self._gen, self._last, self._last_5xx = generation, {}, {}
        span = max(now - self._since, 1e-9)
        out: dict[str, dict[str, Any]] = {}
        for app, (req, err, avg_ms) in sorted(apps.items()):
            d_req = max(0, req - self._last.get(app, 0))
            d_err = max(0, err - self._last_5xx.get(app, 0))
            self._last[app], self._last_5xx[app] = req, err
            self.totals[app] = self.totals.get(app, 0) + d_req
            self.errors[app] = self.errors.get(app, 0) + d_err
            if not d_req:
                continue
            out[app] = {
                "requests": d_req,
                "errors_5xx": d_err,
                "rps": round(d_req / span, 3),
                "error_rate": round(d_err / d_req, 4),
                "p50_ms": avg_ms,
                "p99_ms": 0.0,
                "total_requests": self.totals[app],
            }
        self._since = now
        return out


def settings_for(spec: EdgeRunSpec) -> Settings:
    cfg = spec.config
    return Settings(
        listen_host=cfg.host,
        listen_port=cfg.port,
        socket_path="",
        map_path="",
        threads=max(1, spec.workers),
        connect_timeout_s=cfg.timeouts.connect,
        read_timeout_s=cfg.timeouts.read,
        retries=max(0, cfg.retry.max_attempts - 1),
        retry_after_s=cfg.retry_after_s,
        stop_grace_s=cfg.shutdown_grace_s,
    )


async def serve_haproxy(
    spec: EdgeRunSpec, service: Service, *, source: RouteSource | None = None
) -> None:
    """The ``myco edge --data-plane haproxy`` process until cancelled."""
    find_haproxy()
    if spec.config.port == 0:
        raise EdgeError("edge: --data-plane haproxy needs a fixed --listen port")
    if source is None and spec.join is not None:
        from reconciler.edge.process import edge_member
        from reconciler.edge.source import FabricRouteSource

        async with edge_member(spec, spec.join, service) as fabric:

            def publish(apps: dict[str, dict[str, Any]], at: float) -> None:
                fabric.publish(KEY_EDGE_STATS, EdgeStatsRecord(apps=apps, at=at).to_json())

            member = (fabric.name, spec.join.describe(fabric.addr))
            source = FabricRouteSource(fabric, report=False)  # reported once HAProxy has it
            await _serve(spec, service, source, publish, fabric, member)
        return
    from reconciler.edge.source import StaticRouteSource

    await _serve(spec, service, source or StaticRouteSource(spec.static_routes), None, None, None)


@contextlib.contextmanager
def _state_dir(given: str) -> Any:
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="myco-edge-haproxy-") as tmp:
        yield Path(tmp)


async def _serve(
    spec: EdgeRunSpec,
    service: Service,
    source: RouteSource,
    sink: StatsSink | None,
    fabric: FabricAPI | None,
    member: tuple[str, str] | None,
) -> None:
    from reconciler.aio import stop_tasks, wait_event
    from reconciler.edge.source import report_served

    with _state_dir(spec.state_dir) as state:
        driver = HaproxyDriver(settings_for(spec), state)
        service.on_force(driver.kill_now)
        tasks: list[asyncio.Task[None]] = []
        latest: list[Sequence[RouteRecord]] = []
        changed = asyncio.Event()
        ready = asyncio.Event()

        def on_routes(routes: Sequence[RouteRecord]) -> None:
            latest[:] = [list(routes)]
            changed.set()

        async def apply_loop() -> None:
            while True:
                await changed.wait()
                changed.clear()
                routes = latest[0]
                try:
                    await driver.apply(routes)
                except EdgeError as exc:  # the old table stays in force
                    log.error("route table not applied: %s", exc)
                    continue
                if fabric is not None:
                    report_served(fabric, routes)

        async def stats_loop() -> None:
            stats = HaproxyStats(time.monotonic())
            while True:
                await asyncio.sleep(spec.config.stats_interval_s)
                try:
                    gen, plan, rows = await driver.stat_rows()
                except EdgeError as exc:
                    log.warning("edge stats: %s", exc)
                    continue
                apps = stats.roll(gen, plan, rows, time.monotonic())
                if apps:
                    log_stats(apps, time.time())
                    if sink is not None:
                        try:
                            sink(apps, time.time())
                        except Exception:  # a stats sink must never stop the edge
                            log.exception("publishing edge stats failed")

        try:
            tasks.append(service.spawn("route source", source.run(on_routes, ready)))
            if not await wait_event(ready, 30.0):
                raise EdgeError("no route table within 30s")
            changed.clear()
            await driver.apply(latest[0])
            if fabric is not None:
                report_served(fabric, latest[0])
            tasks.append(service.spawn("haproxy routes", apply_loop()))
            tasks.append(service.spawn("haproxy supervisor", driver.supervise()))
            tasks.append(service.spawn("stats loop", stats_loop()))
            async with _admin(spec, driver, fabric) as admin_url:
                from reconciler.edge.process import startup_line

                head = _startup_head(spec, driver)
                log.info("%s", startup_line(head, spec, admin_url, member))
                try:
                    await asyncio.Event().wait()  # until the first signal cancels the service
                finally:
                    log.info("edge stopping: haproxy finishes the requests in flight")
        finally:
            await stop_tasks(tasks)
            await driver.stop()


def _startup_head(spec: EdgeRunSpec, driver: HaproxyDriver) -> str:
    cfg = spec.config
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return (
        f"edge serving on http://{host}:{cfg.port} (pid {os.getpid()}, haproxy data plane "
        f"pid {driver.pid}, runtime API {driver.socket_path})"
    )


@contextlib.asynccontextmanager
async def _admin(
    spec: EdgeRunSpec, driver: HaproxyDriver, fabric: FabricAPI | None
) -> AsyncIterator[str | None]:
    """``/metrics`` (and ``/ui`` with a fabric) on ``--metrics-listen``: HAProxy's answers
    by app and class (read from its counters at scrape time)."""
    if not spec.metrics_listen:
        yield None
        return
    from aiohttp import web

    from reconciler.edge.process import serve_admin
    from reconciler.observe.metrics import Metrics

    metrics = Metrics("edge", fabric, scope="none")
    snapshot: dict[tuple[str, ...], float] = {}

    async def refresh() -> None:
        try:
            _, plan, rows = await driver.stat_rows()
        except EdgeError:
            return
        snapshot.clear()
        for row in rows:
            be = plan.backends.get(row.get("pxname", ""))
            if be is None or row.get("svname") != "BACKEND":
                continue
            for cls in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"):
                snapshot[(be.app, cls)] = float(row.get(f"hrsp_{cls}") or 0)

    metrics.counter_callback(
        "myco_edge_haproxy_responses",
        "HAProxy's answers by app and status class (since its last reload)",
        lambda: dict(snapshot),
        labels=("app", "class"),
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        await refresh()
        return await metrics.handler(request)

    async with serve_admin(spec, fabric, handler) as url:
        yield url
