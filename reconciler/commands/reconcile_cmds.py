"""``myco reconcile``, ``apply``, ``diff``, ``drain``, ``history``, ``rollback``, ``suspend``,
``resume`` (docs/reconciler.md): flags and rendering only.

``reconcile`` builds a :class:`~reconciler.reconcile.service.ReconcileConfig` and runs
:func:`reconciler.reconcile.service.run`. The short-lived verbs reach the mesh through
:class:`~reconciler.client.MeshClient` (``--api URL`` or ``<state>/mesh.json``; the active
reconciler by its garden record, or ``--reconciler URL``); ``apply`` and ``diff`` are
:mod:`reconciler.reconcile.apply`. Exit codes: 0 success; 1 failure (invalid garden, not
converged, refused); ``diff`` exits 0 without differences, 1 with some, 2 on errors (as
``kubectl diff`` / ``flux diff``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from reconciler.commands.options import (
    add_api,
    add_fabric,
    add_identity,
    add_state,
    has_identity,
    identity_spec,
    join_settings,
    refuse_plaintext,
    refuse_unsigned_gossip,
)
from reconciler.commands.spore_cmds import print_build_log
from reconciler.errors import MycoError, UsageError

if TYPE_CHECKING:
    from reconciler.client import MeshClient
    from reconciler.garden import GardenResult
    from reconciler.reconcile.service import MemberConfig

DEFAULT_TIMEOUT = 300.0
T = TypeVar("T")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    mesh = argparse.ArgumentParser(add_help=False)
    add_state(mesh)
    add_api(mesh)
    mesh.add_argument(
        "--reconciler", metavar="URL", help="the reconciler's control API (default: found)"
    )

    p = sub.add_parser(
        "reconcile",
        parents=[common],
        help="run the reconciler: watch a garden (dir or Git) and converge the mesh to it",
        description="Watch a garden and converge the mesh to it (docs/reconciler.md).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--watch", metavar="DIR", type=Path, help="garden directory to watch")
    src.add_argument("--git", metavar="URL", help="Git remote (or path) holding the garden")
    p.add_argument("--branch", default="main", help="Git branch (default main)")
    p.add_argument("--subdir", default="", help="garden folder inside the Git repository")
    p.add_argument("--interval", type=float, default=5.0, metavar="S", help="Git poll interval (5)")
    _member_options(p)
    add_identity(p, "reconciler")  # --identity --ca --loopback-http
    add_state(p)
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
    p.add_argument(
        "--ca",
        type=Path,
        default=None,
        metavar="DIR",
        help="one-shot: the mesh CA directory (issuer.crt, issuer.key) to issue its own "
        "certificate from (default: the mesh identity beside --state, if it holds one)",
    )
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
    """A reconciler member's flags (``reconcile``, and ``apply`` when it runs one-shot)."""
    p.add_argument(
        "--name",
        default="",
        help="fabric member name (default: <certificate name>#PID with an identity, "
        "else reconciler-HOST-PID)",
    )
    add_fabric(p)
    p.add_argument("--key", type=Path, metavar="FILE", help="Ed25519 key that signs spores")
    p.add_argument("--repo", type=Path, metavar="DIR", help="spore repo (default <state>/repo)")
    p.add_argument(
        "--repo-listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="serve the repo and the control API here (default 127.0.0.1:0)",
    )
    p.add_argument("--repo-url", default="", metavar="URL", help="URL agents fetch spores from")
    p.add_argument(
        "--build-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="limit on one dependency build step (pip, npm, a build command; default 600)",
    )


def _member(args: argparse.Namespace, verb: str) -> MemberConfig:
    from reconciler.addr import is_loopback, parse_addr
    from reconciler.home import absolute_state_dir
    from reconciler.reconcile.service import (
        MemberConfig,
        default_member_dir,
        identity_gossip_key,
        resolve_identity,
    )

    parse_addr(args.repo_listen, what="--repo-listen", error=UsageError)
    if args.build_timeout <= 0:
        raise UsageError(f"{verb}: --build-timeout must be positive")
    state = absolute_state_dir(args.state)
    if args.gossip_key is None:  # the identity's keyring, as the service would find it
        args.gossip_key = identity_gossip_key(state)
    join = join_settings(args, verb)
    # `apply`'s --identity is its client's (add_api): a one-shot member keeps its own in
    # the default place, and serves plain HTTP if it listens on loopback only.
    one_shot = verb != "reconcile"
    loopback = is_loopback(parse_addr(args.repo_listen, error=UsageError)[0])
    identity = resolve_identity(
        identity_spec(
            verb,
            identity=None if one_shot else args.identity,
            default_dir=default_member_dir(state),
            ca=args.ca,
            loopback_http=loopback if one_shot else args.loopback_http,
            listeners=(("--repo-listen", args.repo_listen),),
        ),
        state,
    )
    secured = has_identity(identity, issues=True)
    refuse_unsigned_gossip(verb, join, secured=secured)
    refuse_plaintext(
        verb,
        "the repo and control API",
        args.repo_listen,
        secured=secured,
        insecure=join.insecure,
    )
    return MemberConfig(
        state=state,
        join=join,
        name=args.name,
        key=args.key,
        repo=args.repo,
        listen=args.repo_listen,
        public_url=args.repo_url,
        build_timeout_s=args.build_timeout,
        identity=identity,
    )


def _client(args: argparse.Namespace) -> MeshClient:
    from reconciler.client import MeshClient
    from reconciler.commands.options import client_credentials
    from reconciler.home import absolute_state_dir

    return MeshClient(
        args.api,
        state=absolute_state_dir(args.state),
        reconciler=args.reconciler,
        credentials=client_credentials(args),
    )


def _with_client(args: argparse.Namespace, call: Callable[[MeshClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with _client(args) as client:
            return await call(client)

    return asyncio.run(go())


# -- myco reconcile ----------------------------------------------------------------------


def run_reconcile(args: argparse.Namespace) -> int:
    from reconciler.reconcile.service import GardenSpec, ReconcileConfig, run

    if args.lease_ttl <= 0:
        raise UsageError("--lease-ttl must be positive")
    config = ReconcileConfig(
        member=_member(args, "reconcile"),
        garden=GardenSpec(
            watch=args.watch,
            git=args.git or "",
            branch=args.branch,
            subdir=args.subdir,
            interval_s=args.interval,
        ),
        allow_empty=args.allow_empty,
        lease_ttl_s=args.lease_ttl,
        webhooks=tuple(args.notify_webhook),
    )
    return run(config)


# -- progress display ----------------------------------------------------------------------


def _status_line(app: str, s: Mapping[str, Any]) -> str:
    ready = f"{s.get('ready', 0)}/{s.get('desired', 0)}"
    reason = s.get("reason") or ""
    return f"  {app:<20} {s.get('sync', '?'):<11} {s.get('health', '?'):<11} {ready:>7}  {reason}"


class Progress:
    """Prints an app's status line whenever it changes; build steps and a failed build's
    last output lines go to stderr."""

    def __init__(self) -> None:
        self.shown: dict[str, str] = {}
        self.logs: dict[str, str] = {}
        self.builds: set[str] = set()  # polled through a reconciler: print each line once

    def note(self, text: str) -> None:
        print(text, flush=True)

    def build(self, line: str) -> None:
        if line not in self.builds:
            print(f"myco: {line}", file=sys.stderr, flush=True)
            self.builds.add(line)

    def apps(self, apps: Mapping[str, Mapping[str, Any]]) -> None:
        for app, s in sorted(apps.items()):
            s = s if isinstance(s, Mapping) else {}
            line = _status_line(app, s)
            if self.shown.get(app) != line:
                print(line, flush=True)
                self.shown[app] = line
            log = str(s.get("build_log") or "")
            if log and self.logs.get(app) != log:
                self.logs[app] = log
                print_build_log(app, log)


# -- myco apply / diff -------------------------------------------------------------------


async def _read_garden(path: Path) -> GardenResult:
    from reconciler.garden import read_garden

    return await asyncio.to_thread(read_garden, path)


def _print_diff(lines: list[str]) -> None:
    for line in lines:
        print(line)


def run_apply(args: argparse.Namespace) -> int:
    from reconciler.reconcile.apply import ApplyOptions, apply, diff_against

    if not args.dir.is_dir():
        raise UsageError(f"{args.dir}: not a directory")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    member = _member(args, "apply")
    opts = ApplyOptions(args.dir, args.wait, args.timeout, args.allow_empty)

    async def go(client: MeshClient) -> int:
        result = await _read_garden(args.dir)
        for problem in result.problems:
            print(str(problem), file=sys.stderr)
        if args.dry_run:
            lines = await diff_against(client, result, args.repo)
            _print_diff(lines)
            if not lines:
                print("no changes")
            return 1 if result.problems else 0
        return 0 if await apply(client, member, result, opts, Progress()) else 1

    return _with_client(args, go)


def run_diff(args: argparse.Namespace) -> int:
    from reconciler.reconcile.apply import diff_against

    async def go(client: MeshClient) -> int:
        lines = await diff_against(client, await _read_garden(args.dir), args.repo)
        _print_diff(lines)
        return 1 if lines else 0

    try:
        if not args.dir.is_dir():
            raise UsageError(f"{args.dir}: not a directory")
        return _with_client(args, go)
    except MycoError as exc:  # diff's own exit codes: 2 for any error
        print(f"myco: error: {exc}", file=sys.stderr)
        return max(2, exc.exit_code)


# -- control verbs -------------------------------------------------------------------------


def run_drain(args: argparse.Namespace) -> int:
    print(_with_client(args, lambda c: c.drain(args.node, undo=args.undo)))
    return 0


def run_app_verb(args: argparse.Namespace) -> int:
    print(_with_client(args, lambda c: c.app_action(args.app, args.verb)))
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    print(_with_client(args, lambda c: c.rollback(args.app, args.revision)))
    return 0


def run_history(args: argparse.Namespace) -> int:
    entries = _with_client(args, lambda c: c.history(args.app))
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print(f"no history for {args.app}")
        return 0
    print(f"  {'WHEN':<19}  {'VERSION':<12} {'SPORE':<12}  REVISION")
    for i, e in enumerate(entries):
        mark = "*" if i == len(entries) - 1 else " "
        print(
            f"{mark} {_when(float(e.get('at', 0))):<19}  {str(e.get('version') or '?'):<12} "
            f"{str(e.get('digest', ''))[:12]:<12}  {str(e.get('revision', ''))[:12]}"
        )
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
