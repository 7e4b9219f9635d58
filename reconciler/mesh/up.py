"""``myco up``: a whole local mesh — reconciler, N agents, an edge — as child processes.

The mesh is an ordinary set of ``myco`` processes on loopback, wired exactly as they would
be across hosts (gossip with an encrypted keyring, every fabric record signed by its
writer's certificate, spores fetched over HTTP and verified against a trust policy). The
dev identity's CA issues each child its certificate (``<state>/<child>/identity``, as
``myco cert issue`` does) before it starts; the reconciler holds the issuing CA too
(``--ca``), so the children renew their certificates there as they would across hosts. Their
HTTP listeners are on loopback and stay plain and open (``--loopback-http``): the verbs and
the dashboards need no credentials. ``myco up`` only starts, watches and stops them: a child that
exits is started again on the same addresses and state (see
:meth:`~reconciler.mesh.supervisor.Supervisor.supervise`), so the workloads keep serving
while the control plane is down. It runs through :func:`reconciler.aio.run_until_signalled`:
the first Ctrl-C stops every child (instances included), a second one kills them all at once.
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from reconciler.addr import format_addr, parse_addr
from reconciler.aio import Service, guard
from reconciler.client import fetch_snapshot
from reconciler.errors import ConfigError, MycoError, UsageError
from reconciler.home import MeshRecord
from reconciler.httpclient import one_attempt_session
from reconciler.mesh.identity import Identity, ensure_ca, ensure_identity
from reconciler.mesh.supervisor import Child, ChildSpec, RestartPolicy, Supervisor
from reconciler.observe.status import MeshStatus, build_status
from reconciler.ports import free_port
from reconciler.spore.deps import build_line

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
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    data_plane: str = "python"  # the edge's: "python" or "haproxy" (docs/edge.md)


def _free_port(host: str) -> int:
    return free_port(host)  # below the ephemeral range: see reconciler.ports


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _port_open(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket(_family(host), socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            return s.connect_ex((host, port)) == 0

    return check


def _all(*checks: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: all(check() for check in checks)


def edge_addr(edge: str) -> tuple[str, int]:
    """The edge's ``HOST:PORT`` (``:PORT`` is on 127.0.0.1); port 0 is refused, since a
    restarted edge must come back on the same port."""
    return parse_addr(edge, what="--edge address", error=UsageError, allow_zero=False)


@dataclass(frozen=True)
class MeshPlan:
    """The processes of one local mesh and their addresses (decided before any starts)."""

    agents: list[ChildSpec]
    reconciler: ChildSpec
    edge: ChildSpec
    record: MeshRecord
    reconciler_url: str  # its repo, control API and dashboard
    #: (role, certificate name, identity directory) of every child, issued before they start
    identities: tuple[tuple[str, str, Path], ...] = ()

    @property
    def children(self) -> list[ChildSpec]:
        """In start order (they are stopped the other way round)."""
        return [*self.agents, self.reconciler, self.edge]

    def dashboards(self) -> list[str]:
        return [
            f"{self.reconciler_url}/ui/ (reconciler)",
            f"{self.record.agent_api}/ui/ ({self.agents[0].name})",
        ]


def plan_mesh(opts: UpOptions, ident: Identity) -> MeshPlan:
    me = [sys.executable, "-m", "reconciler"]
    verbosity = ["-v"] * max(opts.verbose, 1)
    logs = opts.state / "logs"
    host = opts.host
    gossip = [format_addr(host, _free_port(host)) for _ in range(opts.nodes + 2)]
    seeds = gossip[: min(3, opts.nodes)]
    agents: list[ChildSpec] = []
    apis: list[str] = []
    identities: list[tuple[str, str, Path]] = []
    for i in range(opts.nodes):
        node = f"node-{i + 1}"
        identities.append(("agent", node, opts.state / "agents" / node / "identity"))
        api_port = _free_port(host)
        apis.append(f"http://{format_addr(host, api_port)}")
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
                    format_addr(host, api_port),
                    "--gossip-bind",
                    gossip[i],
                    "--gossip-key",
                    str(ident.gossip_key),
                    "--trust",
                    str(ident.trust),
                    "--identity",
                    str(identities[-1][2]),
                    "--loopback-http",
                    "--wither-on-exit",
                    *(["--join", *[s for s in seeds if s != gossip[i]]] if i else []),
                ],
                log_path=logs / f"{node}.log",
                ready=_port_open(host, api_port),
            )
        )
    repo_addr = format_addr(host, _free_port(host))
    identities.append(("reconciler", "reconciler", opts.state / "reconciler" / "identity"))
    reconciler = ChildSpec(
        name="reconciler",
        argv=[
            *me,
            "reconcile",
            *verbosity,
            # No fixed --name: a member restarted under its old name withdraws the records
            # of its earlier life (its routes!) at once; under a new name they stay in force
            # at the edge until the new process holds the lease and publishes its own.
            "--watch",
            str(opts.garden),
            "--state",
            str(opts.state / "reconciler"),
            "--repo",
            str(opts.state / "repo"),
            "--repo-listen",
            repo_addr,
            "--key",
            str(ident.signing_key),
            "--identity",
            str(identities[-1][2]),
            "--ca",  # it renews the others' certificates (and its own)
            str(ident.root),
            "--loopback-http",
            "--gossip-bind",
            gossip[opts.nodes],
            "--gossip-key",
            str(ident.gossip_key),
            "--join",
            *seeds,
            *[arg for url in opts.webhooks for arg in ("--notify-webhook", url)],
        ],
        log_path=logs / "reconciler.log",
        ready=_port_open(*parse_addr(repo_addr)),
    )
    edge_host, edge_port = edge_addr(opts.edge)
    edge_listen = format_addr(edge_host, edge_port)
    edge_admin = format_addr(host, _free_port(host))
    identities.append(("edge", "edge", opts.state / "edge" / "identity"))
    edge = ChildSpec(
        name="edge",
        argv=[
            *me,
            "edge",
            *verbosity,
            "--name",
            "edge",
            "--listen",
            edge_listen,
            "--metrics-listen",
            edge_admin,
            "--gossip-bind",
            gossip[opts.nodes + 1],
            "--gossip-key",
            str(ident.gossip_key),
            "--identity",
            str(identities[-1][2]),
            "--loopback-http",
            *(
                ["--data-plane", "haproxy", "--state", str(opts.state / "edge-haproxy")]
                if opts.data_plane == "haproxy"
                else []
            ),
            "--join",
            *seeds,
        ],
        log_path=logs / "edge.log",
        # the proxy and its metrics address (served a moment later) both answer
        ready=_all(_port_open(edge_host, edge_port), _port_open(*parse_addr(edge_admin))),
    )
    record = MeshRecord(
        pid=os.getpid(),
        garden=str(opts.garden),
        edge=edge_listen,
        agent_api=apis[0],
        agent_apis=apis,
        edge_metrics=f"http://{edge_admin}/metrics",
        seeds=seeds,
        started_at=time.time(),
    )
    return MeshPlan(agents, reconciler, edge, record, f"http://{repo_addr}", tuple(identities))


def issue_identities(plan: MeshPlan, ident: Identity) -> None:
    """A fresh certificate for every child, from the dev identity's issuing CA (what
    ``myco cert issue`` does); a restarted child renews its own."""
    from reconciler.identity.enrol import issue_to_dir

    issuer = ident.ca.issuer()
    now = time.time()
    for role, name, directory in plan.identities:
        issue_to_dir(issuer, role, name, directory, now=now)


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
    host, port = edge_addr(opts.edge)
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
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


async def run_up(opts: UpOptions, say: Callable[[str], None], service: Service) -> None:
    """Start the mesh and keep it (restarting children that exit) until ``service`` stops
    it; then stop every child and instance. A child that keeps crashing raises
    :class:`~reconciler.mesh.supervisor.ChildFailed` (after the mesh is stopped)."""
    _check(opts)
    opts.state.mkdir(parents=True, exist_ok=True)
    ident, created = ensure_identity(opts.state / "identity")
    if created:
        say(
            f"created a dev identity in {ident.root} (signing key, trust policy, gossip key, "
            "mesh CA)"
        )
    elif ensure_ca(ident):
        say(f"added a mesh CA to the dev identity in {ident.root}")
    plan = plan_mesh(opts, ident)
    issue_identities(plan, ident)
    sup = Supervisor(opts.restart, say)
    record_path = opts.state / "mesh.json"

    def save_record(_: Child | None = None) -> None:
        replace(plan.record, children=sup.pids()).save(opts.state)

    def force() -> None:  # the second Ctrl-C: synchronous, nothing awaited
        say("forced stop: killing every process of the mesh")
        sup.kill_all()
        kill_orphans(opts.state)
        record_path.unlink(missing_ok=True)

    service.on_force(force)
    try:
        async with sup:
            try:
                for spec in plan.children:
                    await sup.start_retrying(spec)
                save_record()
                say(
                    f"mesh up: {opts.nodes} agent(s), reconciler watching {opts.garden}, "
                    f"edge on http://{plan.record.edge}  (logs in {opts.state / 'logs'}; "
                    "Ctrl-C stops, twice forces)"
                )
                say(f"dashboard: {', '.join(plan.dashboards())}")
                say(f"edge metrics: {plan.record.edge_metrics}")
                await _watch(opts, plan, sup, say, save_record)
            finally:
                say("stopping the mesh... (Ctrl-C again to force)")
                record_path.unlink(missing_ok=True)
    finally:
        orphans = kill_orphans(opts.state)
        if orphans:
            say(f"stopped {orphans} instance(s) left behind by a lost agent")
        say("mesh stopped")


async def _watch(
    opts: UpOptions,
    plan: MeshPlan,
    sup: Supervisor,
    say: Callable[[str], None],
    on_start: Callable[[Child], None],
) -> None:
    """Supervise every child (and print status changes) until cancelled or one gives up."""
    try:
        async with asyncio.TaskGroup() as group:
            for spec in plan.children:
                group.create_task(
                    guard(f"supervising {spec.name}", sup.supervise(spec.name, on_start))
                )
            if opts.status:
                group.create_task(guard("status watch", watch_status(plan.record.agent_api, say)))
    except ExceptionGroup as eg:
        first: BaseException = eg
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


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


def status_changes(status: MeshStatus, shown: dict[str, str]) -> list[str]:
    """The lines of ``status`` not shown yet (``shown`` remembers them, per app and kind):
    each app's line, the step of a dependency build under way (``<app>: building: ...``)
    and a failed build's last output lines."""
    out: list[str] = []

    def show(key: str, text: str) -> None:
        if shown.get(key) != text:
            shown[key] = text
            out.extend(text.splitlines())

    for line in app_lines(status):
        show(line.split(":", 1)[0], line)
    for app in status.apps:
        if app.building:
            elapsed = app.building.get("elapsed_s")
            seconds = float(elapsed) if isinstance(elapsed, int | float) else 0.0
            show(f"{app.name} build", build_line(app.name, str(app.building.get("step")), seconds))
        if app.build_log:
            lines = [f"  | {line}" for line in app.build_log.splitlines()]
            show(f"{app.name} log", "\n".join([f"{app.name}: build failed; last lines:", *lines]))
        else:
            shown.pop(f"{app.name} log", None)
    return out


async def watch_status(api: str, say: Callable[[str], None], every_s: float = 1.0) -> None:
    """Print each app's line whenever it changes, and its dependency builds' steps, until
    cancelled (an agent that cannot be reached, e.g. while it restarts, is asked again
    next time)."""
    shown: dict[str, str] = {}
    timeout = aiohttp.ClientTimeout(total=2)
    async with one_attempt_session(timeout=timeout) as session:
        while True:
            with contextlib.suppress(MycoError):
                status = build_status(await fetch_snapshot(session, api))
                for line in status_changes(status, shown):
                    say(line)
            await asyncio.sleep(every_s)


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
