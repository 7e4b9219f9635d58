"""``myco up``: a whole local mesh — reconciler, N agents, an edge — as child processes.

The mesh is an ordinary set of ``myco`` processes on loopback, wired exactly as they would
be across hosts (gossip with an encrypted keyring, spores fetched over HTTP and verified
against a trust policy). ``myco up`` only starts, watches and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from reconciler.aio import wait_event
from reconciler.errors import ConfigError, MycoError, UsageError
from reconciler.home import MeshRecord
from reconciler.mesh.identity import Identity, ensure_identity
from reconciler.mesh.supervisor import ChildSpec, Supervisor
from reconciler.observe.client import fetch_snapshot
from reconciler.observe.status import MeshStatus, build_status

log = logging.getLogger("myco.mesh")


@dataclass(frozen=True)
class UpOptions:
    garden: Path
    state: Path
    nodes: int = 3
    edge: str = "127.0.0.1:8080"
    host: str = "127.0.0.1"
    verbose: int = 0
    status: bool = True  # print status changes while running
    webhooks: tuple[str, ...] = ()  # notified by the reconciler on sync/health changes


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            return s.connect_ex((host, port)) == 0

    return check


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"expected HOST:PORT, got {addr!r}")
    return (host or "127.0.0.1"), int(port)


@dataclass(frozen=True)
class MeshPlan:
    """The processes of one local mesh and their addresses (decided before any starts)."""

    agents: list[ChildSpec]
    reconciler: ChildSpec
    edge: ChildSpec
    record: MeshRecord


def plan_mesh(opts: UpOptions, ident: Identity) -> MeshPlan:
    me = [sys.executable, "-m", "reconciler"]
    verbosity = ["-v"] * max(opts.verbose, 1)
    logs = opts.state / "logs"
    host = opts.host
    gossip = [f"{host}:{_free_port(host)}" for _ in range(opts.nodes + 2)]
    seeds = gossip[: min(3, opts.nodes)]
    agents: list[ChildSpec] = []
    apis: list[str] = []
    for i in range(opts.nodes):
        node = f"node-{i + 1}"
        api_port = _free_port(host)
        apis.append(f"http://{host}:{api_port}")
        agents.append(
            ChildSpec(
                name=node,
                argv=[
                    *me,
                    "agent",
                    *verbosity,
                    "--node",
                    node,
                    "--state",
                    str(opts.state / "agents" / node),
                    "--api",
                    f"{host}:{api_port}",
                    "--gossip-bind",
                    gossip[i],
                    "--gossip-key",
                    str(ident.gossip_key),
                    "--trust",
                    str(ident.trust),
                    "--wither-on-exit",
                    *(["--join", *[s for s in seeds if s != gossip[i]]] if i else []),
                ],
                log_path=logs / f"{node}.log",
                ready=_port_open(host, api_port),
            )
        )
    repo_port = _free_port(host)
    reconciler = ChildSpec(
        name="reconciler",
        argv=[
            *me,
            "reconcile",
            *verbosity,
            "--watch",
            str(opts.garden),
            "--state",
            str(opts.state / "reconciler"),
            "--repo",
            str(opts.state / "repo"),
            "--repo-listen",
            f"{host}:{repo_port}",
            "--key",
            str(ident.signing_key),
            "--gossip-bind",
            gossip[opts.nodes],
            "--gossip-key",
            str(ident.gossip_key),
            "--join",
            *seeds,
            *[arg for url in opts.webhooks for arg in ("--notify-webhook", url)],
        ],
        log_path=logs / "reconciler.log",
        ready=_port_open(host, repo_port),
    )
    edge_host, edge_port = split_addr(opts.edge)
    edge_admin = f"{host}:{_free_port(host)}"
    edge = ChildSpec(
        name="edge",
        argv=[
            *me,
            "edge",
            *verbosity,
            "--listen",
            opts.edge,
            "--metrics-listen",
            edge_admin,
            "--gossip-bind",
            gossip[opts.nodes + 1],
            "--gossip-key",
            str(ident.gossip_key),
            "--join",
            *seeds,
        ],
        log_path=logs / "edge.log",
        ready=_port_open(edge_host, edge_port),
    )
    record = MeshRecord(
        pid=os.getpid(),
        garden=str(opts.garden),
        edge=opts.edge,
        agent_api=apis[0],
        agent_apis=apis,
        edge_metrics=f"http://{edge_admin}/metrics",
        seeds=seeds,
        started_at=time.time(),
    )
    return MeshPlan(agents, reconciler, edge, record)


def _check(opts: UpOptions) -> None:
    if opts.nodes < 1:
        raise UsageError("up: --nodes must be at least 1")
    if not opts.garden.is_dir():
        raise ConfigError(f"garden {opts.garden} is not a directory")
    existing = MeshRecord.load(opts.state)
    if existing is not None and _alive(existing.pid):
        raise ConfigError(
            f"a mesh is already running from {opts.state} (pid {existing.pid}); "
            "stop it with `myco down`"
        )
    host, port = split_addr(opts.edge)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"the edge address {opts.edge} is not free: {exc.strerror}") from exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def run_up(opts: UpOptions, say: Callable[[str], None], stop: asyncio.Event) -> int:
    """Start the mesh, keep it until ``stop`` is set or a child dies, then stop it all."""
    _check(opts)
    opts.state.mkdir(parents=True, exist_ok=True)
    ident, created = ensure_identity(opts.state / "identity")
    if created:
        say(f"created a dev identity in {ident.root} (signing key, trust policy, gossip key)")
    plan = plan_mesh(opts, ident)
    code = 0
    async with Supervisor() as sup:
        children = {}
        for spec in plan.agents:
            children[spec.name] = (await sup.start(spec)).pid
        children["reconciler"] = (await sup.start(plan.reconciler)).pid
        children["edge"] = (await sup.start(plan.edge)).pid
        record = MeshRecord(**{**plan.record.__dict__, "children": children})
        record.save(opts.state)
        say(
            f"mesh up: {opts.nodes} agent(s), reconciler watching {opts.garden}, "
            f"edge on http://{opts.edge}  (logs in {opts.state / 'logs'}; Ctrl-C stops)"
        )
        watcher_stop = asyncio.Event()
        watcher = (
            asyncio.create_task(watch_status(record.agent_api, say, watcher_stop))
            if opts.status
            else None
        )
        try:
            reported: set[str] = set()
            agents = {spec.name for spec in plan.agents}
            while not stop.is_set():
                dead = [c for c in sup.exited() if c.spec.name not in reported]
                for c in dead:
                    reported.add(c.spec.name)
                    code_s = c.proc.returncode
                    say(f"{c.spec.name} exited with code {code_s} (see {c.spec.log_path})")
                if any(c.spec.name not in agents for c in dead) or agents <= reported:
                    # A lost node is the mesh's to heal; without reconciler or edge it is over.
                    say("the mesh cannot go on without it; stopping")
                    code = 1
                    break
                await wait_event(stop, 0.5)
        finally:
            watcher_stop.set()
            if watcher is not None:
                await watcher
            say("stopping the mesh...")
            with contextlib.suppress(FileNotFoundError):
                (opts.state / "mesh.json").unlink()
    orphans = kill_orphans(opts.state)
    if orphans:
        say(f"stopped {orphans} instance(s) left behind by a lost agent")
    say("mesh stopped")
    return code


def app_lines(status: MeshStatus) -> list[str]:
    """One line per app: what a person watching ``myco up`` wants to see change."""
    lines = []
    for app in status.apps:
        rollout = f", {app.rollout}" if app.rollout and app.rollout != "idle" else ""
        reason = f" ({app.reason})" if app.reason and app.health != "Healthy" else ""
        lines.append(
            f"{app.name}: {app.sync}/{app.health} {app.ready}/{app.desired} ready{rollout}{reason}"
        )
    return lines


async def watch_status(api: str, say: Callable[[str], None], stop: asyncio.Event) -> None:
    """Print each app's line whenever it changes, until ``stop``."""
    shown: dict[str, str] = {}
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            with contextlib.suppress(MycoError):
                status = build_status(await fetch_snapshot(session, api))
                for line in app_lines(status):
                    name = line.split(":", 1)[0]
                    if shown.get(name) != line:
                        shown[name] = line
                        say(line)
            await wait_event(stop, 1.0)


def kill_orphans(state: Path) -> int:
    """Kill instances left running by an agent that died (its own wither never ran).

    Each agent persists its instances' pid and kernel start time; a process is killed (its
    whole group) only if both still match, so a reused pid is never touched.
    """
    from reconciler.agent.runner import read_start_ticks
    from reconciler.agent.state import StateDir

    killed = 0
    for root in sorted((state / "agents").glob("*")):
        if not (root / "instances").is_dir():
            continue
        for inst in StateDir(root).load_all():
            proc = inst.proc
            if proc is None or not proc.start_ticks:
                continue
            if read_start_ticks(proc.pid) != proc.start_ticks:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
                killed += 1
    return killed


def install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
