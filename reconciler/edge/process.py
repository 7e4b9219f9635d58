"""The ``myco edge`` process: event loop choice, signals, fabric wiring and workers.

The single process, and each worker, runs through :func:`reconciler.aio.run_until_signalled`
(uvloop through its ``loop_factory``): the first SIGTERM/SIGINT stops accepting and lets
requests in flight finish (up to ``shutdown_grace_s``), a second one cuts that short. The
worker's long-running tasks (route source, stats, pool sweep) belong to the service, so
one that fails (the fabric's route feed, say) stops the edge with a
:class:`~reconciler.errors.ServiceFailed` naming it rather than leaving it serving a stale
route table. Once serving, one line at info level (shown without ``-v``) says where.

With ``workers > 1`` the parent only supervises: it reserves the port (bound, never
listening, so the kernel gives it no connections), starts N worker processes that each
listen on the port with ``SO_REUSEPORT`` and run their own loop, forwards SIGTERM/SIGINT
to them and restarts one that dies (:class:`WorkerBackoff`: 0.5 s, doubling to 10 s while
it keeps dying within 30 s of its start; each death logged at error level with the count of
restarts so far); a second signal kills them (SIGKILL). Signal handlers only set a flag;
the loop acts. A worker killed takes with it only the requests it held (in its hands or
queued on its socket); new connections go to the other workers' sockets.

With an identity (``spec.identity``), the edge's fabric member signs its records and checks
everyone's, and a task renews its certificate (each worker its own, from the shared
identity directory; a join token is redeemed once, before any worker starts). Member names:
the certificate's name (or ``--name``, which must be it or ``<name>#<suffix>``); worker
``i`` is ``<name>#w<i>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import multiprocessing
import os
import signal
import socket
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Literal

from reconciler import logs
from reconciler.addr import format_addr, parse_addr
from reconciler.aio import Service, run_until_signalled, stop_tasks
from reconciler.edge.config import EdgeConfig
from reconciler.edge.server import RunningEdge, StatsSink, listen_socket, running_edge
from reconciler.edge.source import RouteSource, StaticRouteSource
from reconciler.errors import ConfigError, EdgeError, MycoError
from reconciler.fabric.api import FabricAPI
from reconciler.records import KEY_EDGE_STATS, EdgeStatsRecord, RouteRecord

if TYPE_CHECKING:
    from reconciler.fabric.fabric import Fabric
    from reconciler.fabric.joining import JoinSettings
    from reconciler.identity.enrol import IdentitySpec
    from reconciler.identity.live import LiveIdentity

log = logging.getLogger("myco.edge")

#: The identity each edge fabric member runs with, for its admin server.
_LIVE_OF: weakref.WeakKeyDictionary[object, LiveIdentity] = weakref.WeakKeyDictionary()

#: what serves ``/metrics`` on the admin address
AdminHandler = Callable[[Any], Awaitable[Any]]

LoopName = Literal["auto", "uvloop", "asyncio"]


@dataclass(frozen=True)
class EdgeRunSpec:
    """Everything one edge process (or worker) needs; picklable for worker processes."""

    config: EdgeConfig
    join: JoinSettings | None = None  # the fabric to read routes from; None: static_routes
    name: str = ""
    static_routes: tuple[RouteRecord, ...] = ()
    workers: int = 1
    loop: LoopName = "auto"
    worker_index: int = -1  # -1: the only process; >= 0: a worker of a supervisor
    verbosity: int = 0
    log_format: str = "text"
    metrics_listen: str = ""  # "host:port" for /metrics (and /ui with a fabric); "" for none
    #: who moves the bytes: this process ("python") or a local HAProxy it programs
    #: (``reconciler.edge.haproxy``; then ``workers`` is HAProxy's thread count)
    data_plane: Literal["python", "haproxy"] = "python"
    state_dir: str = ""  # the HAProxy data plane's config and socket; "": a temp dir
    identity: IdentitySpec | None = None  # --identity (and how to enrol); None: none


def loop_factory(name: LoopName) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on: uvloop if asked (or ``auto`` and installed), else asyncio."""
    if name == "asyncio":
        return None
    if importlib.util.find_spec("uvloop") is None:
        if name == "uvloop":
            raise ConfigError("--loop uvloop: uvloop is not installed (pip install uvloop)")
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(spec: EdgeRunSpec) -> int:
    """Run the edge until SIGTERM/SIGINT; the exit code."""
    if spec.verbosity <= 0:
        # A daemon: its start-up line, route changes and the per-app stats lines every
        # interval are shown without -v (per-request details stay at debug level).
        logging.getLogger("myco.edge").setLevel(logging.INFO)
    if spec.worker_index < 0 and spec.identity is not None:
        _enrol_once(spec.identity)  # before any worker: a join token is redeemed once
    if spec.workers > 1 and spec.worker_index < 0 and spec.data_plane == "python":
        return _supervise(spec)
    name = "edge" if spec.worker_index < 0 else f"edge worker {spec.worker_index}"

    parent = os.getppid()

    async def main(service: Service) -> None:
        if spec.worker_index >= 0:
            service.spawn("supervisor watch", _watch_parent(parent))
        await serve(spec, service)

    return run_until_signalled(main, name=name, loop_factory=loop_factory(spec.loop))


async def serve(spec: EdgeRunSpec, service: Service, *, source: RouteSource | None = None) -> None:
    """One edge worker until cancelled; routes from ``source``, else the fabric or the
    static routes of ``spec``."""
    if spec.data_plane == "haproxy":
        from reconciler.edge.haproxy import serve_haproxy

        await serve_haproxy(spec, service, source=source)
        return
    cfg = spec.config
    sock = listen_socket(cfg.host, cfg.port, reuse_port=spec.worker_index >= 0)
    try:
        if source is None and spec.join is not None:
            await _serve_with_fabric(spec, spec.join, service, sock)
        else:
            source = source or StaticRouteSource(spec.static_routes)
            await _serve_until(spec, service, source, sock, None)
    finally:
        sock.close()


async def _serve_until(
    spec: EdgeRunSpec,
    service: Service,
    source: RouteSource,
    sock: socket.socket,
    sink: StatsSink | None,
    fabric: FabricAPI | None = None,
    gossip: str = "",
) -> None:
    async with (
        running_edge(spec.config, source, sock=sock, stats_sink=sink, service=service) as edge,
        _admin(spec, edge, fabric) as admin_url,
    ):
        member = (fabric.name, gossip) if fabric is not None else None
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        head = (
            f"edge serving on {edge.url} (pid {os.getpid()}, {spec.config.server} server, "
            f"loop {loop})"
        )
        log.info("%s", startup_line(head, spec, admin_url, member))
        try:
            await asyncio.Event().wait()  # until the first signal cancels the service
        finally:
            log.info("edge stopping: finishing %d request(s) in flight", edge.proxy.in_flight)


def startup_line(
    head: str,
    spec: EdgeRunSpec,
    admin_url: str | None,
    member: tuple[str, str] | None,
) -> str:
    """What a person needs to reach and recognise this edge, in one line (``head`` says
    where it serves and on which data plane)."""
    parts = [head]
    if admin_url is not None:
        ui = f", dashboard {admin_url}/ui/" if member is not None else ""
        parts.append(f"metrics {admin_url}/metrics{ui}")
    if member is not None:
        parts.append(f"fabric member {member[0]} gossip {member[1]}")
        if spec.identity is not None:
            parts.append(f"identity in {spec.identity.dir}")
    else:
        parts.append(f"static routes for {len(spec.static_routes)} app(s)")
    return "; ".join(parts)


async def _watch_parent(parent: int) -> None:
    """A worker outlives its supervisor by a second at most (then this task fails)."""
    while True:  # a poll: nothing signals a parent's death (short of prctl)
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            raise EdgeError(f"the edge supervisor (pid {parent}) went away")


def _enrol_once(identity: IdentitySpec) -> None:
    """Check the identity (redeeming the join token if the directory holds none yet) before
    any worker starts: one clear error, and one enrolment, for all of them."""
    from reconciler.identity.enrol import obtain

    asyncio.run(obtain(identity, "edge", "edge"))


def member_name(spec: EdgeRunSpec, live: LiveIdentity | None) -> str:
    """This process's fabric member name (see the module docstring)."""
    if live is None:
        name = spec.name or f"edge-{socket.gethostname()}-{os.getpid()}"
        return f"{name}-w{spec.worker_index}" if spec.worker_index >= 0 else name
    from reconciler.identity.names import member_name as with_suffix
    from reconciler.identity.names import owner_matches

    base = spec.name or live.name
    if not owner_matches(live.name, base):
        raise ConfigError(
            f"edge: --name {base} does not match the certificate's name {live.name}: give "
            f"{live.name} or {live.name}#SUFFIX (or leave --name out)"
        )
    if spec.worker_index < 0:
        return base
    if base == live.name:
        return with_suffix(live.name, f"w{spec.worker_index}")
    return f"{base}-w{spec.worker_index}"


def worker_join(join: JoinSettings, index: int) -> JoinSettings:
    """Worker ``index``'s own gossip address: a fixed port (bind or advertised) plus ``index``."""
    host, port = parse_addr(join.bind, error=EdgeError)
    advertise = join.advertise
    if advertise is not None and ":" in advertise:
        ahost, aport = parse_addr(advertise, error=EdgeError)
        advertise = format_addr(ahost, aport + index)
    return replace(join, bind=format_addr(host, port + index if port else 0), advertise=advertise)


async def _serve_with_fabric(
    spec: EdgeRunSpec, join: JoinSettings, service: Service, sock: socket.socket
) -> None:
    from reconciler.edge.source import FabricRouteSource

    if spec.worker_index >= 0:
        join = worker_join(join, spec.worker_index)
    async with edge_member(spec, join, service) as fabric:

        def publish(apps: dict[str, dict[str, Any]], at: float) -> None:
            fabric.publish(KEY_EDGE_STATS, EdgeStatsRecord(apps=apps, at=at).to_json())

        source = FabricRouteSource(fabric)
        gossip = join.describe(fabric.addr)
        await _serve_until(spec, service, source, sock, publish, fabric, gossip)


@contextlib.asynccontextmanager
async def edge_member(
    spec: EdgeRunSpec, join: JoinSettings, service: Service
) -> AsyncIterator[Fabric]:
    """This edge process's fabric member (both data planes): named as the module docstring
    says; with an identity, signing its records and renewing its certificate."""
    live = None
    if spec.identity is not None:
        from reconciler.identity.enrol import obtain

        live = await obtain(spec.identity, "edge", join.cluster)
    name = member_name(spec, live)
    async with join.open(name, guard=live.guard if live is not None else None) as fabric:
        if live is not None:
            _LIVE_OF[fabric] = live  # for its admin server (serve_admin)
            from reconciler.clock import RealClock
            from reconciler.identity.enrol import renew_through_fabric

            renewal = renew_through_fabric(live, fabric, clock=RealClock())
            task = service.spawn("certificate renewal", renewal)
        try:
            yield fabric
        finally:
            if live is not None:
                await stop_tasks([task])


@contextlib.asynccontextmanager
async def _admin(
    spec: EdgeRunSpec, edge: RunningEdge, fabric: FabricAPI | None
) -> AsyncIterator[str | None]:
    """``/metrics`` (and ``/ui`` when in a fabric) on their own address, off the proxy port:
    on the proxy port they would shadow apps named ``metrics`` or ``ui``. Yields the URL."""
    if not spec.metrics_listen:
        yield None
        return
    from reconciler.observe.metrics import Metrics

    metrics = Metrics("edge", fabric, scope="none")
    metrics.add_edge_stats(edge.stats.lifetime)
    async with serve_admin(spec, fabric, metrics.handler) as url:
        yield url


@contextlib.asynccontextmanager
async def serve_admin(
    spec: EdgeRunSpec, fabric: FabricAPI | None, metrics: AdminHandler
) -> AsyncIterator[str]:
    """Serve ``metrics`` at ``/metrics`` (and the ``/ui`` dashboard with a fabric) on
    ``--metrics-listen`` (one port per worker); yields the URL. Both data planes use it."""
    from aiohttp import web

    from reconciler.identity.httpauth import listener_auth
    from reconciler.webserve import start_app

    host, port = parse_addr(spec.metrics_listen, what="--metrics-listen")
    if spec.worker_index >= 0 and port:
        port += spec.worker_index  # one admin port per worker
    live = _LIVE_OF.get(fabric) if fabric is not None else None
    if spec.identity is not None and spec.identity.loopback_http:
        live = None  # plain and open on loopback (myco up)
    insecure = spec.join is not None and spec.join.insecure
    auth = listener_auth(live, host, what="the edge's metrics", insecure=insecure)
    app = web.Application(middlewares=[auth.middleware])
    app.router.add_get("/metrics", metrics)
    if fabric is not None:
        from reconciler.observe.ui import setup_ui

        setup_ui(app, fabric)
    auth.check_routes(app)
    shown = spec.join.advertised_host() if spec.join is not None else None
    runner, url = await start_app(
        app,
        host,
        port,
        "the edge's metrics",
        advertise_host=shown,
        ssl_context=auth.ssl_context,
    )
    try:
        yield url
    finally:
        await runner.cleanup()


def _worker_main(spec: EdgeRunSpec) -> None:
    # Out of the terminal's process group: a Ctrl-C reaches the supervisor only, which
    # stops the workers (SIGTERM, then SIGKILL on a second signal); were it to reach the
    # workers too, the supervisor's SIGTERM would count as their second, forcing, signal.
    os.setpgid(0, 0)
    logs.configure(spec.verbosity, spec.log_format)
    try:
        run(spec)
    except MycoError as exc:
        logging.getLogger("myco.edge").error("worker %d: %s", spec.worker_index, exc)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass


@dataclass
class WorkerBackoff:
    """Delays before restarting one worker (pure: the caller measures its uptime).

    The first restart waits ``initial_s``; each quick crash after it (within
    ``stable_after_s`` of its start) doubles the wait up to ``max_s``, so a worker that
    cannot start (a broken config, a port taken) is retried calmly, not in a tight loop.
    """

    initial_s: float = 0.5
    max_s: float = 10.0
    stable_after_s: float = 30.0
    quick_crashes: int = 0

    def next_delay(self, uptime_s: float) -> float:
        if uptime_s >= self.stable_after_s:
            self.quick_crashes = 0
        delay = min(self.max_s, self.initial_s * 2.0**self.quick_crashes)
        self.quick_crashes += 1
        return delay


def _describe_exit(exitcode: int | None) -> str:
    """``was killed by SIGKILL`` / ``exited with code 1`` for a process's exit code."""
    if exitcode is None:
        return "is gone"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _supervise(spec: EdgeRunSpec) -> int:
    cfg = spec.config
    # Reserve the port (and learn it, if 0) without listening: the kernel hands
    # connections only to the workers' listening sockets of the SO_REUSEPORT group.
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    reserve = socket.socket(family, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserve.bind((cfg.host, cfg.port))
    except OSError as exc:
        reserve.close()
        raise EdgeError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from exc
    port = int(reserve.getsockname()[1])
    ctx = multiprocessing.get_context("spawn")
    signals = 0

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal signals
        signals += 1  # only a count: the loops below act on it

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def start(i: int) -> BaseProcess:
        wspec = replace(spec, config=replace(cfg, port=port), worker_index=i)
        p = ctx.Process(target=_worker_main, args=(wspec,), name=f"myco-edge-w{i}", daemon=False)
        p.start()
        return p

    procs = [start(i) for i in range(spec.workers)]
    backoff = [WorkerBackoff() for _ in procs]
    started = [time.monotonic() for _ in procs]
    restart_at: dict[int, float] = {}  # worker index -> when to start it again
    restarts = 0
    log.info("edge supervisor: %d workers on %s:%d", spec.workers, cfg.host, port)
    try:
        while not signals:
            now = time.monotonic()
            for i, p in enumerate(procs):
                if i in restart_at:
                    if now >= restart_at[i]:
                        del restart_at[i]
                        procs[i], started[i] = start(i), now
                        log.info("edge worker %d restarted (pid %s)", i, procs[i].pid)
                    continue
                if p.is_alive():
                    continue
                uptime = now - started[i]
                delay = backoff[i].next_delay(uptime)
                restarts += 1
                restart_at[i] = now + delay
                log.error(
                    "edge worker %d (pid %s) %s after %.1fs; restarting it in %gs "
                    "(%d worker restart(s) so far)",
                    i, p.pid, _describe_exit(p.exitcode), uptime, delay, restarts,
                )  # fmt: skip
            time.sleep(0.1)  # a poll: signal handlers only count, this loop acts
    finally:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + cfg.shutdown_grace_s + 5.0
        for p in procs:
            # a short join at a time, so that a second signal is acted on promptly
            while p.is_alive() and time.monotonic() < deadline and signals < 2:
                p.join(min(0.1, max(0.0, deadline - time.monotonic())))
            if p.is_alive():
                if signals >= 2:
                    log.warning("edge supervisor: second signal, killing worker %s", p.name)
                p.kill()
                p.join()
        for s, h in old.items():
            signal.signal(s, h)
        reserve.close()
    return 0
