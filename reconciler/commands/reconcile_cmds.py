"""``myco reconcile``, ``apply``, ``diff``, ``drain``, ``history``, ``rollback``, ``suspend``,
``resume`` (DESIGN §6).

``reconcile`` is the long-running reconciler. The short-lived verbs find the running mesh
through ``<state>/mesh.json`` (``myco up``) or ``--agent URL`` (any agent's local API) and
the active reconciler through its garden record on the fabric (or ``--reconciler URL``).
Exit codes: 0 success; 1 failure (invalid garden, not converged, refused); ``diff`` exits
0 without differences, 1 with some, 2 on errors (as ``kubectl diff`` / ``flux diff``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError, MycoError, UsageError

DEFAULT_TIMEOUT = 300.0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    mesh = argparse.ArgumentParser(add_help=False)
    mesh.add_argument("--state", metavar="DIR", help="state directory ($MYCO_HOME, ./.myco)")
    mesh.add_argument("--agent", metavar="URL", help="an agent's local API (default: mesh.json)")
    mesh.add_argument(
        "--reconciler", metavar="URL", help="the reconciler's control API (default: found)"
    )

    p = sub.add_parser(
        "reconcile",
        parents=[common],
        help="run the reconciler: watch a garden (dir or Git) and converge the mesh to it",
        description="Watch a garden and converge the mesh to it (DESIGN §6).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--watch", metavar="DIR", type=Path, help="garden directory to watch")
    src.add_argument("--git", metavar="URL", help="Git remote (or path) holding the garden")
    p.add_argument("--branch", default="main", help="Git branch (default main)")
    p.add_argument("--subdir", default="", help="garden folder inside the Git repository")
    p.add_argument("--interval", type=float, default=5.0, metavar="S", help="Git poll interval (5)")
    _member_options(p)
    p.add_argument("--state", metavar="DIR", help="state directory (overrides, fabric)")
    p.add_argument("--allow-empty", action="store_true", help="let an empty garden prune all")
    p.add_argument("--lease-ttl", type=float, default=3.0, metavar="S", help="lease TTL (3)")
    p.add_argument(
        "--notify-webhook",
        action="append",
        default=[],
        metavar="URL",
        help="POST a JSON event on sync/health changes and rollouts (repeatable)",
    )
    p.set_defaults(func=run_reconcile)

    p = sub.add_parser(
        "apply",
        parents=[common, mesh],
        help="apply a garden once and follow it to convergence",
        description=(
            "Converge the mesh to DIR: through the active reconciler if it watches DIR, "
            "else as a one-shot reconciler. Exit 0 converged, 1 failed or invalid."
        ),
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    p.add_argument("--wait", action="store_true", help="also wait until every app is Healthy")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S")
    p.add_argument("--allow-empty", action="store_true", help="let an empty garden prune all")
    _member_options(p)
    p.set_defaults(func=run_apply)

    p = sub.add_parser(
        "diff",
        parents=[common, mesh],
        help="show what a garden would change (exit 0 none, 1 some, 2 error)",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--repo", type=Path, metavar="DIR", help="spore repo (default <state>/repo)")
    p.set_defaults(func=run_diff)

    p = sub.add_parser("drain", parents=[common, mesh], help="move every instance off a node")
    p.add_argument("node")
    p.add_argument("--undo", action="store_true", help="let the node take instances again")
    p.set_defaults(func=run_drain)

    p = sub.add_parser("history", parents=[common, mesh], help="the spores an app has run")
    p.add_argument("app")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_history)

    p = sub.add_parser(
        "rollback",
        parents=[common, mesh],
        help="run an app at an earlier spore (until `myco resume APP`)",
    )
    p.add_argument("app")
    p.add_argument("revision", nargs="?", default="", help="revision, version or digest prefix")
    p.set_defaults(func=run_rollback)

    for verb, text in (
        ("suspend", "freeze an app as it is"),
        ("resume", "let an app follow the garden again"),
    ):
        p = sub.add_parser(verb, parents=[common, mesh], help=text)
        p.add_argument("app")
        p.set_defaults(func=run_app_verb, verb=verb)


def _member_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="", help="fabric member name")
    p.add_argument("--join", nargs="+", action="extend", default=[], metavar="ADDR")
    p.add_argument("--gossip-bind", default="127.0.0.1:0", metavar="ADDR")
    p.add_argument("--gossip-key", type=Path, metavar="FILE", help="fabric keyring file")
    p.add_argument("--cluster", default="myco")
    p.add_argument("--profile", choices=("local", "lan"), default="local")
    p.add_argument("--key", type=Path, metavar="FILE", help="Ed25519 key that signs spores")
    p.add_argument("--repo", type=Path, metavar="DIR", help="spore repo (default <state>/repo)")
    p.add_argument(
        "--repo-listen",
        default="127.0.0.1:0",
        metavar="ADDR",
        help="serve the repo and the control API here (default 127.0.0.1:0)",
    )
    p.add_argument("--repo-url", default="", metavar="URL", help="URL agents fetch spores from")


def _state(args: argparse.Namespace) -> Path:
    from reconciler.home import absolute_state_dir as state_dir

    return state_dir(getattr(args, "state", None))


def _split(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"bad address {addr!r}: expected HOST:PORT")
    return host or "127.0.0.1", int(port)


# -- myco reconcile ----------------------------------------------------------------------


def run_reconcile(args: argparse.Namespace) -> int:
    from reconciler.reconcile.source import DirSource, GardenSource, GitSource

    source: GardenSource
    if args.watch is not None:
        if not args.watch.is_dir():
            raise UsageError(f"--watch {args.watch}: not a directory")
        source = DirSource(args.watch.resolve())
    else:
        if args.interval <= 0:
            raise UsageError("--interval must be positive")
        source = GitSource(args.git, args.branch, args.interval, subdir=args.subdir)
    try:
        return asyncio.run(_reconcile(args, source))
    finally:
        source.close()


async def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _reconcile(args: argparse.Namespace, source: Any) -> int:
    from reconciler.reconcile.lease import LeaseConfig
    from reconciler.reconcile.loop import ReconcileSettings, load_overrides

    state = _state(args)
    state.mkdir(parents=True, exist_ok=True)
    settings = ReconcileSettings(
        allow_empty=args.allow_empty,
        lease=LeaseConfig(
            ttl_s=args.lease_ttl, renew_s=args.lease_ttl / 3, settle_s=min(1.0, args.lease_ttl / 4)
        ),
    )
    overrides_path = state / "overrides.json"
    async with _member(args, state, source, settings, load_overrides(overrides_path)) as rec:
        rec.overrides_path = overrides_path
        stop = await _stop_event()
        info = {"name": rec.fabric.name, "control_url": rec.control_url, "pid": os.getpid()}
        _write_json(state / "reconciler.json", info)
        print(
            f"reconciler {rec.fabric.name}: garden {source.description}, "
            f"repo and control API on {rec.control_url}",
            file=sys.stderr,
        )
        task = asyncio.create_task(rec.run(), name="reconciler")
        waiter = asyncio.create_task(stop.wait(), name="stop")
        helpers = _notifiers(args.notify_webhook, rec.fabric)
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, waiter, *helpers):
                t.cancel()
            for t in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
            with contextlib.suppress(asyncio.CancelledError):
                await task  # re-raises what made the reconciler stop, if anything
            with contextlib.suppress(OSError):
                (state / "reconciler.json").unlink()
    return 0


def _notifiers(urls: list[str], fabric: Any) -> list[asyncio.Task[None]]:
    """One webhook sender per URL, fed from the fabric: never in the reconcile loop's way."""
    from reconciler.observe.notify import WebhookConfig, WebhookNotifier, notify_from_fabric

    tasks = []
    for url in urls:
        notifier = WebhookNotifier(WebhookConfig(url))
        tasks.append(asyncio.create_task(notifier.run(), name=f"webhook {url}"))
        tasks.append(asyncio.create_task(notify_from_fabric(fabric, notifier), name="notify"))
    return tasks


@contextlib.asynccontextmanager
async def _member(
    args: argparse.Namespace, state: Path, source: Any, settings: Any, overrides: Any
) -> Any:
    """A ReconcileLoop joined to the fabric, its repo + control API served (not yet run)."""
    from reconciler.fabric import open_fabric
    from reconciler.fabric.keyring import Keyring
    from reconciler.reconcile.builder import SporeBuilder
    from reconciler.reconcile.http import make_app
    from reconciler.reconcile.loop import ReconcileLoop
    from reconciler.repo import SporeRepo
    from reconciler.webserve import start_app

    identity = state.parent / "identity" if (state.parent / "identity").is_dir() else None
    identity = state / "identity" if (state / "identity").is_dir() else identity
    gossip_key = args.gossip_key or (identity / "gossip.key" if identity else None)
    key = args.key or (identity / "signing.key" if identity else None)
    keyring = Keyring.load(gossip_key) if gossip_key else None
    seeds = list(args.join)
    if not seeds:
        from reconciler.reconcile.remote import mesh_record

        seeds = [str(s) for s in mesh_record(state).get("seeds", [])]
    repo = SporeRepo(args.repo or state / "repo")
    name = args.name or f"reconciler-{socket.gethostname()}-{os.getpid()}"
    host, port = _split(args.repo_listen)
    async with open_fabric(
        name,
        bind=args.gossip_bind,
        seeds=seeds,
        keyring=keyring,
        cluster=args.cluster,
        profile=args.profile,
        state_dir=state / "fabric",
    ) as fabric:
        rec = ReconcileLoop(fabric, source, SporeBuilder(repo, key), settings, overrides=overrides)
        runner, served = await start_app(make_app(rec, repo), host, port, "the repo")
        try:
            url = args.repo_url or served
            rec.settings = replace(rec.settings, fetch_urls=(url.rstrip("/"),))
            rec.control_url = url.rstrip("/")
            yield rec
        finally:
            await runner.cleanup()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


# -- progress display ----------------------------------------------------------------------


def _status_line(app: str, s: dict[str, Any]) -> str:
    ready = f"{s.get('ready', 0)}/{s.get('desired', 0)}"
    reason = s.get("reason") or ""
    return f"  {app:<20} {s.get('sync', '?'):<11} {s.get('health', '?'):<11} {ready:>7}  {reason}"


class Progress:
    """Prints an app's status line whenever it changes."""

    def __init__(self) -> None:
        self.shown: dict[str, str] = {}

    def show(self, apps: dict[str, Any]) -> None:
        for app, s in sorted(apps.items()):
            line = _status_line(app, s if isinstance(s, dict) else {})
            if self.shown.get(app) != line:
                print(line, flush=True)
                self.shown[app] = line


def _done(apps: dict[str, Any], healthy: bool) -> tuple[bool, bool]:
    """(finished, failed) for statuses: InvalidSpec fails; --wait wants all Healthy."""
    failed = any(s.get("sync") == "InvalidSpec" for s in apps.values())
    if healthy:
        ok = all(s.get("health") in ("Healthy", "Suspended") for s in apps.values())
        degraded = any("reverted" in str(s.get("reason", "")) for s in apps.values())
        return ok or degraded, failed or degraded
    return True, failed


# -- myco apply --------------------------------------------------------------------------


def run_apply(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        raise UsageError(f"{args.dir}: not a directory")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    return asyncio.run(_apply(args))


async def _apply(args: argparse.Namespace) -> int:
    from reconciler.garden import read_garden
    from reconciler.reconcile.remote import active_control_url, agent_url, control, snapshot

    state = _state(args)
    result = await asyncio.to_thread(read_garden, args.dir)
    for problem in result.problems:
        print(str(problem), file=sys.stderr)
    if args.dry_run:
        lines = await _diff(args, state, result)
        for line in lines:
            print(line)
        if not lines:
            print("no changes")
        return 1 if result.problems else 0

    url = args.reconciler
    holder = ""
    if not url and (args.agent or (state / "mesh.json").exists()):
        snap = await snapshot(agent_url(args.agent, state))
        holder, url = active_control_url(snap, time.time())
    if url:
        return await _apply_through(args, url, holder or url, result, control)
    return await _apply_one_shot(args, state, result)


async def _apply_through(
    args: argparse.Namespace, url: str, holder: str, result: Any, control: Any
) -> int:
    """An active reconciler exists: it must watch DIR; follow it to convergence."""
    status = await control(url, "GET", "/v1/status")
    source = str(status.get("source", ""))
    same = bool(source) and await asyncio.to_thread(_same_dir, source, args.dir)
    if not same:
        raise ConfigError(
            f"reconciler {holder} is active on {source or '?'}: change that garden "
            f"(or commit to it) instead of applying {args.dir}"
        )
    revision = result.garden.revision
    print(f"applying {args.dir} through reconciler {status.get('name', holder)}", flush=True)
    progress = Progress()
    deadline = time.monotonic() + args.timeout
    while True:
        status = await control(url, "GET", "/v1/status")
        apps = status.get("apps") or {}
        progress.show(apps)
        if status.get("revision") == revision and status.get("converged"):
            finished, failed = _done(apps, args.wait)
            if finished:
                return 1 if failed or result.problems else 0
        if time.monotonic() > deadline:
            print(f"myco: error: not converged after {args.timeout:g}s", file=sys.stderr)
            return 1
        await asyncio.sleep(0.25)


def _same_dir(a: str, b: Path) -> bool:
    return Path(a).resolve() == b.resolve()


async def _apply_one_shot(args: argparse.Namespace, state: Path, result: Any) -> int:
    """No reconciler runs: be one until the mesh has converged, then hand the lease back."""
    from reconciler.reconcile.lease import LeaseConfig
    from reconciler.reconcile.loop import ReconcileSettings
    from reconciler.reconcile.source import StaticSource

    source = StaticSource(result, description=str(args.dir.resolve()))
    settings = ReconcileSettings(
        allow_empty=args.allow_empty, resync_s=0.5, lease=LeaseConfig(1.5, 0.3, 0.3)
    )
    if not args.join and not (state / "mesh.json").exists():
        raise ConfigError("no mesh found: give --join ADDR (and --gossip-key), or run `myco up`")
    async with _member(args, state, source, settings, None) as rec:
        task = asyncio.create_task(rec.run(), name="apply")
        progress = Progress()
        deadline = time.monotonic() + args.timeout
        code = 1
        try:
            while not task.done():
                if (
                    rec.lease.holder
                    and not rec.lease.active
                    and rec.lease.holder != rec.fabric.name
                ):
                    raise ConfigError(f"reconciler {rec.lease.holder} became active; stopping")
                apps = {a: s.to_json() for a, s in rec.statuses.items()}
                progress.show(apps)
                if rec.converged.is_set() and rec.passes > 0:
                    finished, failed = _done(apps, args.wait)
                    if finished:
                        code = 1 if failed or result.problems else 0
                        break
                if time.monotonic() > deadline:
                    print(f"myco: error: not converged after {args.timeout:g}s", file=sys.stderr)
                    break
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return code


# -- myco diff -----------------------------------------------------------------------------


def run_diff(args: argparse.Namespace) -> int:
    try:
        if not args.dir.is_dir():
            raise UsageError(f"{args.dir}: not a directory")
        return asyncio.run(_diff_cmd(args))
    except MycoError as exc:
        print(f"myco: error: {exc}", file=sys.stderr)
        return max(2, exc.exit_code)


async def _diff_cmd(args: argparse.Namespace) -> int:
    from reconciler.garden import read_garden

    result = await asyncio.to_thread(read_garden, args.dir)
    lines = await _diff(args, _state(args), result)
    for line in lines:
        print(line)
    return 1 if lines else 0


async def _diff(args: argparse.Namespace, state: Path, result: Any) -> list[str]:
    from reconciler.core.model import DesiredApp
    from reconciler.reconcile.builder import Overrides, SporeBuilder, desired_from
    from reconciler.reconcile.diff import UNBUILT, diff_lines
    from reconciler.reconcile.mirror import FabricMirror
    from reconciler.reconcile.remote import active_control_url, agent_url, snapshot
    from reconciler.records import KEY_GARDEN
    from reconciler.repo import SporeRepo
    from reconciler.spore.build import dna_key

    snap = await snapshot(agent_url(args.agent, state))
    repo_dir = getattr(args, "repo", None) or state / "repo"
    builder = SporeBuilder(SporeRepo(repo_dir), None) if repo_dir.is_dir() else None
    holder, _ = active_control_url(snap, time.time())
    record = snap.get(holder, KEY_GARDEN) if holder else None
    overrides = Overrides.from_json(record.get("overrides") if isinstance(record, dict) else None)
    desired = await asyncio.to_thread(
        desired_from, result.garden, builder, overrides=overrides, build=False
    )
    apps = dict(desired.apps)
    for name, app in apps.items():
        if not app.digest:
            key = await asyncio.to_thread(dna_key, app.spec.dna)
            apps[name] = DesiredApp(app.spec, UNBUILT + key[:16])
    desired = replace(desired, apps=apps)
    mirror = FabricMirror(snap)
    actual = mirror.actual(0, adopt=True)
    epochs = [r.epoch for r in actual.intents.values()] + [r.epoch for r in actual.routes.values()]
    actual = replace(actual, epoch=max(epochs, default=0))
    return diff_lines(desired, actual, time.time())


# -- control verbs -------------------------------------------------------------------------


async def _control_url(args: argparse.Namespace) -> str:
    from reconciler.reconcile.remote import active_control_url, agent_url, snapshot

    if args.reconciler:
        return str(args.reconciler)
    state = _state(args)
    snap = await snapshot(agent_url(args.agent, state))
    holder, url = active_control_url(snap, time.time())
    if not holder:
        raise ConfigError("no active reconciler in the mesh (is `myco reconcile` running?)")
    if not url:
        raise ConfigError(f"the active reconciler {holder} publishes no control API")
    return url


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> dict[str, Any]:
    from reconciler.reconcile.remote import control

    async def go() -> dict[str, Any]:
        return await control(await _control_url(args), method, path, body)

    return asyncio.run(go())


def _print_message(reply: dict[str, Any]) -> int:
    print(reply.get("message", "ok"))
    return 0


def run_drain(args: argparse.Namespace) -> int:
    verb = "undrain" if args.undo else "drain"
    return _print_message(_call(args, "POST", f"/v1/nodes/{args.node}/{verb}"))


def run_app_verb(args: argparse.Namespace) -> int:
    return _print_message(_call(args, "POST", f"/v1/apps/{args.app}/{args.verb}"))


def run_rollback(args: argparse.Namespace) -> int:
    return _print_message(
        _call(args, "POST", f"/v1/apps/{args.app}/rollback", {"to": args.revision})
    )


def run_history(args: argparse.Namespace) -> int:
    reply = _call(args, "GET", f"/v1/apps/{args.app}/history")
    entries = reply.get("history") or []
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print(f"no history for {args.app}")
        return 0
    fmt: Callable[[float], str] = lambda t: time.strftime(  # noqa: E731
        "%Y-%m-%d %H:%M:%S", time.localtime(t)
    )
    print(f"  {'WHEN':<19}  {'VERSION':<12} {'SPORE':<12}  REVISION")
    for i, e in enumerate(entries):
        mark = "*" if i == len(entries) - 1 else " "
        print(
            f"{mark} {fmt(float(e.get('at', 0))):<19}  {str(e.get('version') or '?'):<12} "
            f"{str(e.get('digest', ''))[:12]:<12}  {str(e.get('revision', ''))[:12]}"
        )
    return 0
