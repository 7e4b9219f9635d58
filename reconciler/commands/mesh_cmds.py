"""``myco up`` / ``myco down`` / ``myco init``: a local mesh and its identity (docs/deploy.md)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from reconciler.mesh.up import UpOptions


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "up",
        parents=[common],
        help="run a whole local mesh: reconciler, agents and edge on loopback",
        description="Run a local mesh (reconciler watching GARDEN, N agents, an edge) until "
        "Ctrl-C, which stops every process it started.",
    )
    p.add_argument("garden", nargs="?", default="garden", metavar="GARDEN", help="(./garden)")
    p.add_argument("--nodes", type=int, default=3, metavar="N", help="agents to run (3)")
    p.add_argument("--edge", default="127.0.0.1:8080", metavar="HOST:PORT", help="(127.0.0.1:8080)")
    p.add_argument("--state", metavar="DIR", help="state directory ($MYCO_HOME or ./.myco)")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument(
        "--data-plane",
        choices=("python", "haproxy"),
        default="python",
        help="the edge's data plane: itself (python) or a local HAProxy it programs",
    )
    p.add_argument(
        "--notify-webhook",
        action="append",
        default=[],
        metavar="URL",
        help="POST JSON events on sync/health changes and rollouts (repeatable)",
    )
    p.add_argument("--wait-timeout", type=float, default=60.0, metavar="S", help=argparse.SUPPRESS)
    p.set_defaults(func=_up)

    d = sub.add_parser("down", parents=[common], help="stop a mesh started with `myco up -d`")
    d.add_argument("--state", metavar="DIR", help="state directory ($MYCO_HOME or ./.myco)")
    d.add_argument("--timeout", type=float, default=60.0, metavar="S", help="(60)")
    d.set_defaults(func=_down)

    r = sub.add_parser(
        "run",
        parents=[common],
        help="the seed's form: run one spore from a repo on a local mesh",
        description="Verify spore DIGEST from the repo and run it as APP on a local mesh "
        "(as `myco up`, with a one-app garden made from the spore).",
    )
    r.add_argument("--repo", required=True, metavar="DIR", help="the spore repo")
    r.add_argument("--digest", required=True, metavar="SHA256", help="the spore to run")
    r.add_argument("--app", required=True, metavar="NAME", help="its app name")
    r.add_argument("--instances", type=int, default=1, metavar="N", help="(1)")
    r.add_argument("--nodes", type=int, default=3, metavar="N", help="agents to run (3)")
    r.add_argument("--edge", default="127.0.0.1:8080", metavar="[HOST]:PORT", help="(:8080)")
    r.add_argument(
        "--trust",
        nargs="+",
        metavar="FILE",
        help="public keys / trust policies the spore must pass (default: the mesh identity's)",
    )
    r.add_argument("--state", metavar="DIR", help="state directory ($MYCO_HOME or ./.myco)")
    r.set_defaults(func=_run)

    i = sub.add_parser(
        "init",
        parents=[common],
        help="make a mesh identity: signing key, trust policy, gossip key, CA",
    )
    i.add_argument("dir", nargs="?", default=None, metavar="DIR", help="(<state>/identity)")
    i.add_argument("--state", metavar="DIR", help="state directory ($MYCO_HOME or ./.myco)")
    i.add_argument(
        "--apps", nargs="+", default=["*"], metavar="PATTERN", help="app names the key may sign"
    )
    i.add_argument(
        "--mesh",
        default="myco",
        metavar="NAME",
        help="the mesh's name in its certificates: spiffe://NAME/... (default myco)",
    )
    i.add_argument("--force", action="store_true", help="replace an existing identity")
    i.set_defaults(func=_init)


def _up(args: argparse.Namespace) -> int:
    from reconciler.home import absolute_state_dir as state_dir
    from reconciler.mesh.up import UpOptions

    opts = UpOptions(
        garden=Path(args.garden).resolve(),
        state=state_dir(args.state),
        nodes=args.nodes,
        edge=args.edge,
        verbose=args.verbose,
        webhooks=tuple(args.notify_webhook),
        data_plane=args.data_plane,
    )
    if args.detach:
        return _detach(args, opts.state)
    return _run_mesh(opts)


def _run(args: argparse.Namespace) -> int:
    from reconciler.home import absolute_state_dir as state_dir
    from reconciler.mesh.identity import ensure_identity
    from reconciler.mesh.run import prepare_run_garden
    from reconciler.mesh.up import UpOptions

    state = state_dir(args.state)
    edge = args.edge if not args.edge.startswith(":") else "127.0.0.1" + args.edge
    if args.instances < 0:
        raise UsageError("run: --instances must be 0 or more")
    state.mkdir(parents=True, exist_ok=True)
    ident, created = ensure_identity(state / "identity")
    if created:
        print(f"myco: created a dev identity in {ident.root}")
    trust = [Path(t) for t in args.trust] if args.trust else [ident.trust]
    garden = prepare_run_garden(
        Path(args.repo), args.digest, args.app, args.instances, trust, state
    )
    print(f"myco: spore {args.digest[:12]} verified; running {args.instances} x {args.app}")
    opts = UpOptions(garden=garden, state=state, nodes=args.nodes, edge=edge, verbose=args.verbose)
    return _run_mesh(opts)


def _run_mesh(opts: UpOptions) -> int:
    """Run a mesh in the foreground until Ctrl-C (or SIGTERM from `myco down`); a second
    Ctrl-C forces the stop (every child's process group killed at once)."""
    from reconciler.aio import Service, run_until_signalled
    from reconciler.mesh.up import run_up

    def say(msg: str) -> None:
        print(f"myco: {msg}", flush=True)

    async def main(service: Service) -> None:
        await run_up(opts, say, service)

    return run_until_signalled(main, name="myco up")


def _detach(args: argparse.Namespace, state: Path) -> int:
    from reconciler.home import MeshRecord

    argv = [sys.executable, "-m", "reconciler", "up", args.garden, "--nodes", str(args.nodes)]
    argv += ["--edge", args.edge, "--state", str(state)] + ["-v"] * args.verbose
    argv += ["--data-plane", args.data_plane]
    for url in args.notify_webhook:
        argv += ["--notify-webhook", url]
    state.mkdir(parents=True, exist_ok=True)
    (state / "logs").mkdir(exist_ok=True)
    log_path = state / "logs" / "up.log"
    with log_path.open("ab") as logf:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
        )
    deadline = time.monotonic() + args.wait_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"the mesh did not start (exit {proc.returncode}); see {log_path}")
        record = MeshRecord.load(state)
        if record is not None and record.pid == proc.pid:
            print(f"mesh up in the background (pid {proc.pid}); edge on http://{record.edge}")
            print(f"dashboard: {record.agent_api}/ui/  edge metrics: {record.edge_metrics}")
            print("stop it with: myco down" + (f" --state {state}" if args.state else ""))
            return 0
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    raise ConfigError(f"the mesh was not ready after {args.wait_timeout:.0f}s; see {log_path}")


def _down(args: argparse.Namespace) -> int:
    from reconciler.home import absolute_state_dir as state_dir
    from reconciler.mesh.down import stop_mesh

    state = state_dir(args.state)
    print(stop_mesh(state, timeout_s=args.timeout).message(state))
    return 0


def _init(args: argparse.Namespace) -> int:
    from reconciler.home import absolute_state_dir as state_dir
    from reconciler.mesh.identity import create_identity

    root = Path(args.dir) if args.dir else state_dir(args.state) / "identity"
    ident = create_identity(root, apps=args.apps, force=args.force, mesh=args.mesh)
    ca = ident.ca
    print(f"created a mesh identity in {ident.root}:")
    print(f"  {ident.signing_key}  signs spores (keep it secret; mode 0600)")
    print(f"  {ident.signing_pub}  its public key")
    print(f"  {ident.trust}  trust policy for agents (apps: {', '.join(args.apps)})")
    print(f"  {ident.gossip_key}  fabric keyring: copy to every agent, edge and reconciler")
    print(f"  {ca.ca_cert}  the mesh root CA ({args.mesh}): copy to every host")
    print(f"  {ca.root / 'ca.key'}  its key: keep it offline (mode 0600)")
    print(f"  {ca.issuer_cert}, {ca.issuer_key.name}  the issuing CA: reconciler hosts only")
    return 0
