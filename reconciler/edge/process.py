"""The ``myco edge`` process: event loop choice, signals, fabric wiring and workers.

With ``workers > 1`` the parent only supervises: it reserves the port (bound, never
listening, so the kernel gives it no connections), starts N worker processes that each
listen on the port with ``SO_REUSEPORT`` and run their own loop, forwards SIGTERM/SIGINT
to them and restarts one that dies. Signal handlers only set an event; the loop acts.
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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal

from reconciler import logs
from reconciler.edge.config import EdgeConfig, parse_addr
from reconciler.edge.server import RunningEdge, StatsSink, listen_socket, running_edge
from reconciler.edge.source import RouteSource, StaticRouteSource
from reconciler.errors import ConfigError, EdgeError, MycoError
from reconciler.fabric.api import FabricAPI
from reconciler.records import KEY_EDGE_STATS, EdgeStatsRecord, RouteRecord

log = logging.getLogger("myco.edge")

LoopName = Literal["auto", "uvloop", "asyncio"]


@dataclass(frozen=True)
class EdgeRunSpec:
    """Everything one edge process (or worker) needs; picklable for worker processes."""

    config: EdgeConfig
    joins: tuple[str, ...] = ()
    gossip_key: Path | None = None
    gossip_bind: str = "127.0.0.1:0"
    name: str = ""
    static_routes: tuple[RouteRecord, ...] = ()
    workers: int = 1
    loop: LoopName = "auto"
    worker_index: int = -1  # -1: the only process; >= 0: a worker of a supervisor
    verbosity: int = 0
    log_format: str = "text"
    metrics_listen: str = ""  # "host:port" for /metrics (and /ui with a fabric); "" for none


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
        # A daemon: its route changes and the per-app stats lines every interval are
        # shown without -v (per-request details stay at debug level).
        logging.getLogger("myco.edge").setLevel(logging.INFO)
    if spec.workers > 1 and spec.worker_index < 0:
        return _supervise(spec)
    with asyncio.Runner(loop_factory=loop_factory(spec.loop)) as runner:
        runner.run(_serve(spec))
    return 0


async def _serve(spec: EdgeRunSpec) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    cfg = spec.config
    sock = listen_socket(cfg.host, cfg.port, reuse_port=spec.worker_index >= 0)
    try:
        if spec.joins:
            await _serve_with_fabric(spec, sock, stop)
        else:
            source = StaticRouteSource(spec.static_routes)
            await _serve_until(spec, source, sock, stop, None)
    finally:
        sock.close()


async def _serve_until(
    spec: EdgeRunSpec,
    source: RouteSource,
    sock: socket.socket,
    stop: asyncio.Event,
    sink: StatsSink | None,
    fabric: FabricAPI | None = None,
) -> None:
    async with (
        running_edge(spec.config, source, sock=sock, stats_sink=sink) as edge,
        _admin(spec, edge, fabric),
    ):
        log.info(
            "edge serving on %s (pid %d, %s server, loop %s)",
            edge.url,
            os.getpid(),
            spec.config.server,
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        await stop.wait()
        log.info("edge stopping: finishing %d request(s) in flight", edge.proxy.in_flight)


async def _serve_with_fabric(spec: EdgeRunSpec, sock: socket.socket, stop: asyncio.Event) -> None:
    from reconciler.edge.source import FabricRouteSource
    from reconciler.fabric import Keyring, open_fabric

    keyring = Keyring.load(spec.gossip_key) if spec.gossip_key is not None else None
    name = spec.name or f"edge-{socket.gethostname()}-{os.getpid()}"
    bind = spec.gossip_bind
    if spec.worker_index >= 0:  # every worker is a member of its own
        name = f"{name}-w{spec.worker_index}"
        host, port = parse_addr(bind)
        bind = f"{host}:{port + spec.worker_index if port else 0}"
    async with open_fabric(name, bind=bind, seeds=spec.joins, keyring=keyring) as fabric:

        def publish(apps: dict[str, dict[str, Any]], at: float) -> None:
            fabric.publish(KEY_EDGE_STATS, EdgeStatsRecord(apps=apps, at=at).to_json())

        await _serve_until(spec, FabricRouteSource(fabric), sock, stop, publish, fabric)


@contextlib.asynccontextmanager
async def _admin(
    spec: EdgeRunSpec, edge: RunningEdge, fabric: FabricAPI | None
) -> AsyncIterator[None]:
    """``/metrics`` (and ``/ui`` when in a fabric) on their own address, off the proxy port:
    on the proxy port they would shadow apps named ``metrics`` or ``ui``."""
    if not spec.metrics_listen:
        yield
        return
    from aiohttp import web

    from reconciler.observe.metrics import Metrics
    from reconciler.webserve import start_app

    host, port = parse_addr(spec.metrics_listen)
    if spec.worker_index >= 0 and port:
        port += spec.worker_index  # one admin port per worker
    metrics = Metrics("edge", fabric, scope="none")
    metrics.add_edge_stats(edge.stats.lifetime)
    app = web.Application()
    app.router.add_get("/metrics", metrics.handler)
    if fabric is not None:
        from reconciler.observe.ui import setup_ui

        setup_ui(app, fabric)
    runner, url = await start_app(app, host, port, "the edge's metrics")
    log.info("edge metrics on %s/metrics", url)
    try:
        yield
    finally:
        await runner.cleanup()


def _worker_main(spec: EdgeRunSpec) -> None:
    logs.configure(spec.verbosity, spec.log_format)
    try:
        run(spec)
    except MycoError as exc:
        logging.getLogger("myco.edge").error("worker %d: %s", spec.worker_index, exc)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass


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
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True  # only a flag: the loop below acts on it

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def start(i: int) -> BaseProcess:
        wspec = replace(spec, config=replace(cfg, port=port), worker_index=i)
        p = ctx.Process(target=_worker_main, args=(wspec,), name=f"myco-edge-w{i}", daemon=False)
        p.start()
        return p

    procs = [start(i) for i in range(spec.workers)]
    log.info("edge supervisor: %d workers on %s:%d", spec.workers, cfg.host, port)
    try:
        while not stopping:
            for i, p in enumerate(procs):
                if not p.is_alive() and not stopping:
                    log.error("edge worker %d exited with %s; restarting", i, p.exitcode)
                    time.sleep(0.5)
                    procs[i] = start(i)
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + cfg.shutdown_grace_s + 5.0
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for s, h in old.items():
            signal.signal(s, h)
        reserve.close()
    return 0
