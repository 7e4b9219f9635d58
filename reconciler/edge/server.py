"""One edge worker: the listening socket, the proxy, the route source and the stats loop.

:func:`running_edge` is an async context manager that starts everything, yields a
:class:`RunningEdge` once the first route set is applied and the socket listens, and on
exit stops accepting, lets requests in flight finish (up to ``shutdown_grace_s``) and
cancels and awaits its tasks. Given the process's :class:`~reconciler.aio.Service`, its
long-running tasks (the route source, the stats and pool-sweep loops) are started with
:meth:`Service.spawn`: one that fails or ends stops the whole process with a
:class:`~reconciler.errors.ServiceFailed` naming it, instead of serving a stale table.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from reconciler.aio import wait_event
from reconciler.edge.aiofront import GuardedServer, aiohttp_handler
from reconciler.edge.clients import HAVE_FAST_PATH, EdgeUpstream
from reconciler.edge.config import EdgeConfig
from reconciler.edge.proxy import EdgeProxy
from reconciler.edge.routing import RouteTable
from reconciler.edge.source import RouteSource
from reconciler.edge.stats import SIGNAL_INTERVAL_S, EdgeStats
from reconciler.errors import EdgeError
from reconciler.records import RouteRecord

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from reconciler.aio import Service
    from reconciler.edge.fastserver import FastServer
    from reconciler.edge.listener import Listener

log = logging.getLogger("myco.edge")

#: Called every signal interval (1 s) with ``(apps, wall_time)``; ``apps`` is
#: EdgeStatsRecord.apps (:meth:`EdgeStats.signal`); not called again while the edge is idle.
StatsSink = Callable[[dict[str, dict[str, Any]], float], None]


def listen_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, listening TCP socket; ``reuse_port`` lets several workers share the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(4096)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise EdgeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


@dataclass
class RunningEdge:
    config: EdgeConfig
    table: RouteTable
    stats: EdgeStats
    proxy: EdgeProxy
    port: int
    #: the fast front end while it serves (None with the aiohttp server)
    fast: FastServer | None = None
    #: the accept loop of either front end while it serves (open connections, the cap)
    listener: Listener | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def set_routes(self, routes: Sequence[RouteRecord]) -> None:
        self.table.update(routes)
        self.proxy.routes_updated()


def log_stats(apps: dict[str, dict[str, Any]], at: float) -> None:
    for app, s in apps.items():
        log.info(
            "stats app=%s requests=%d 5xx=%d rps=%.1f p50=%.2fms p99=%.2fms",
            app,
            s["requests"],
            s["errors_5xx"],
            s["rps"],
            s["p50_ms"],
            s["p99_ms"],
        )


@asynccontextmanager
async def running_edge(
    config: EdgeConfig,
    source: RouteSource | None = None,
    *,
    sock: socket.socket | None = None,
    stats_sink: StatsSink | None = None,
    ready_timeout: float = 30.0,
    service: Service | None = None,
) -> AsyncIterator[RunningEdge]:
    """Run one edge worker for the duration of the ``async with`` block.

    Without a ``source`` the table starts empty and the caller sets it
    (:meth:`RunningEdge.set_routes`). With a ``service`` the worker's tasks belong to it
    (see the module docstring); without one they are owned here, and a failure is logged.
    """
    own_sock = sock is None
    if sock is None:
        sock = listen_socket(config.host, config.port)
    port = int(sock.getsockname()[1])
    table = RouteTable(config.ejection)
    stats = EdgeStats(time.monotonic())
    clients = EdgeUpstream(config)
    proxy = EdgeProxy(config, table, stats, clients)
    edge = RunningEdge(config, table, stats, proxy, port)
    # Cancelled and awaited on the way out. Without a service, not a TaskGroup of our own:
    # it would wrap the caller's own exceptions from the ``async with`` body in a group.
    tasks: list[asyncio.Task[None]] = []

    def start(what: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        if service is not None:
            task = service.spawn(what, coro)
        else:
            task = asyncio.create_task(coro, name=f"edge: {what}")
        tasks.append(task)
        return task

    try:
        if source is not None:
            ready = asyncio.Event()
            routes = start("route source", source.run(edge.set_routes, ready))
            await _wait_ready(ready, routes, ready_timeout)
        hold = asyncio.Event()
        proxy.on_hold = lambda _app: hold.set()
        start("stats loop", _stats_loop(config, stats, stats_sink, hold))
        start("pool sweep", _sweep_loop(config, clients))
        async with _front_end(edge, sock):
            log.debug("edge (%s server) listening on %s:%d", config.server, config.host, port)
            yield edge
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await clients.aclose()
        if own_sock:
            sock.close()
        for r in results:
            if service is None and isinstance(r, Exception):
                log.error("edge task failed: %s", r)


@asynccontextmanager
async def _front_end(edge: RunningEdge, sock: socket.socket) -> AsyncIterator[None]:
    """Serve ``sock`` with the configured server; on exit stop it gracefully."""
    config, proxy = edge.config, edge.proxy
    if config.server == "fast" and HAVE_FAST_PATH:
        from reconciler.edge.fastserver import FastServer

        edge.fast = FastServer(proxy, client=config.client)
        await edge.fast.start(sock)
        edge.listener = edge.fast.listener
        try:
            yield
        finally:
            await edge.fast.shutdown(config.shutdown_grace_s)
            edge.fast = edge.listener = None
        return
    if config.server == "fast":  # pragma: no cover - depends on the installation
        log.warning("edge: httptools is not installed; serving with aiohttp")
    limits = config.client
    server = GuardedServer(
        aiohttp_handler(proxy, limits),
        limits,
        access_log=None,
        keepalive_timeout=limits.keepalive_s,
    )
    runner = web.ServerRunner(
        server, handle_signals=False, shutdown_timeout=config.shutdown_grace_s
    )
    await runner.setup()
    try:
        server.start(sock)  # no aiohttp site: our listener accepts (the connection cap)
        edge.listener = server.listener
        yield
    finally:
        await server.stop_accepting()
        edge.listener = None
        await runner.cleanup()  # close idle connections, finish in-flight, close


async def _wait_ready(ready: asyncio.Event, task: asyncio.Task[None], within: float) -> None:
    waiter = asyncio.ensure_future(ready.wait())
    try:
        done, _ = await asyncio.wait({waiter, task}, timeout=within, return_when="FIRST_COMPLETED")
    finally:
        waiter.cancel()
    if waiter not in done:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise EdgeError(f"route source failed: {task.exception()}")
        raise EdgeError(f"no route table within {within:.0f}s")


async def _sweep_loop(config: EdgeConfig, clients: EdgeUpstream) -> None:
    """Close pooled upstream connections idle for longer than the keep-alive time."""
    while True:
        await asyncio.sleep(config.pool.keepalive_s / 2)
        clients.sweep()


async def _stats_loop(
    config: EdgeConfig, stats: EdgeStats, sink: StatsSink | None, hold: asyncio.Event
) -> None:
    """Publish the signal window every second (the autoscaler's input, ``edge/stats``) and
    log the log window every ``stats_interval_s``.

    An idle edge publishes once (an empty record: "this edge is here and sees nothing")
    and then only when something happens again, so the fabric is not churned by idle edges.
    ``hold`` cuts a wait short: the first request held for an app at zero is published at
    once, so the reconciler wakes the app without waiting for the next tick.
    """
    tick = min(SIGNAL_INTERVAL_S, config.stats_interval_s)
    next_log = time.monotonic() + config.stats_interval_s
    published_empty = False
    while True:
        await wait_event(hold, tick)
        hold.clear()
        now = time.monotonic()
        apps = stats.signal(now)
        if now >= next_log:
            next_log = now + config.stats_interval_s
            logged = stats.roll(now)
            if logged:
                log_stats(logged, time.time())
        if sink is None or (not apps and published_empty):
            continue
        published_empty = not apps
        try:
            sink(apps, time.time())
        except Exception:  # a stats sink must never stop the proxy
            log.exception("publishing edge stats failed")
