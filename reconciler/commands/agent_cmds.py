"""``myco agent``: the per-host daemon (DESIGN §2, §7).

Flags, or a YAML/JSON ``--config`` file with the same names (``node``, ``join``, ``state``,
``api``, ``gossip_bind``, ``gossip_key``, ``trust``, ``capacity_cpu_milli``,
``capacity_memory_mb``, ``labels``, ``advertise_host``, ``enforcement``, ``cluster``,
``profile``, ``wither_on_exit``); a flag given on the command line wins over the file.

SIGTERM / SIGINT stop the agent, not its instances: they keep running and the next
``myco agent`` on the same ``--state`` adopts them. ``--wither-on-exit`` (what ``myco up``
uses) withers them first instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError, UsageError

_DEFAULTS: dict[str, Any] = {
    "join": [],
    "api": "127.0.0.1:0",
    "gossip_bind": "127.0.0.1:0",
    "gossip_key": None,
    "trust": [],
    "capacity_cpu_milli": None,
    "capacity_memory_mb": None,
    "labels": [],
    "advertise_host": "127.0.0.1",
    "enforcement": "auto",
    "cluster": "myco",
    "profile": "local",
    "wither_on_exit": False,
}


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "agent",
        parents=[common],
        help="run the node agent: join the fabric and run the instances intended for it",
        description="Run the node agent (DESIGN §7).",
    )
    p.add_argument("--node", help="this node's id (its fabric member name)")
    p.add_argument("--join", nargs="+", metavar="ADDR", help="fabric seed addresses host:port")
    p.add_argument("--state", metavar="DIR", help="state directory (instances, spores, logs)")
    p.add_argument("--api", metavar="HOST:PORT", help="local API address (127.0.0.1:0)")
    p.add_argument("--gossip-bind", metavar="HOST:PORT", help="fabric address (127.0.0.1:0)")
    p.add_argument("--gossip-key", metavar="FILE", help="fabric keyring file")
    p.add_argument("--trust", nargs="+", metavar="FILE", help="trusted keys / trust policy files")
    p.add_argument("--capacity-cpu-milli", type=int, metavar="N")
    p.add_argument("--capacity-memory-mb", type=int, metavar="N")
    p.add_argument("--label", action="append", dest="labels", metavar="K=V")
    p.add_argument("--advertise-host", help="host the instances' endpoints are reported on")
    p.add_argument("--enforcement", choices=("auto", "cgroup2", "cgroup1", "rlimit"), help="(auto)")
    p.add_argument("--cluster", help="fabric cluster name (myco)")
    p.add_argument("--profile", choices=("local", "lan"), help="fabric timing profile")
    p.add_argument(
        "--wither-on-exit",
        action="store_true",
        default=None,
        help="stop the instances when the agent stops (default: leave them to be adopted)",
    )
    p.add_argument("--config", metavar="FILE", help="YAML/JSON file with the settings above")
    p.set_defaults(func=run_agent)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    import yaml  # only when a config file is used: keeps the agent's start-up small

    merged = dict(_DEFAULTS)
    if args.config:
        try:
            loaded = yaml.safe_load(Path(args.config).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {args.config}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{args.config}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config}: expected a mapping of settings")
        allowed = set(_DEFAULTS) | {"node", "state"}
        unknown = sorted(set(loaded) - allowed)
        if unknown:
            raise ConfigError(f"{args.config}: unknown setting(s): {', '.join(unknown)}")
        merged.update(loaded)
    for key in allowed_keys():
        value = getattr(args, key, None)
        if value is not None:
            merged[key] = value
    for key in ("node", "state"):
        if not merged.get(key):
            raise UsageError(f"agent: --{key} is required (or set {key} in --config)")
    return merged


def allowed_keys() -> list[str]:
    return [*_DEFAULTS, "node", "state"]


def _labels(raw: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(raw, dict):
        return tuple(sorted((str(k), str(v)) for k, v in raw.items()))
    out: list[tuple[str, str]] = []
    for item in raw or ():
        k, sep, v = str(item).partition("=")
        if not sep or not k:
            raise UsageError(f"agent: bad label {item!r}: expected K=V")
        out.append((k, v))
    return tuple(sorted(out))


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    return [str(x) for x in v]


def run_agent(args: argparse.Namespace) -> int:
    from reconciler.agent.agent import AgentConfig, default_capacity
    from reconciler.records import Nutrients
    from reconciler.spore.trust import TrustPolicy

    s = _settings(args)
    labels = _labels(s["labels"])
    state = Path(s["state"]).absolute()
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create state directory {state}: {exc.strerror}") from exc
    cap = default_capacity()
    capacity = Nutrients(
        int(s["capacity_cpu_milli"] if s["capacity_cpu_milli"] is not None else cap.cpu_milli),
        int(s["capacity_memory_mb"] if s["capacity_memory_mb"] is not None else cap.memory_mb),
    )
    trust_paths = tuple(Path(p) for p in _as_list(s["trust"]))
    trust = TrustPolicy.load(trust_paths)
    if not trust.entries:
        raise ConfigError("agent: no trusted keys (--trust FILE): every spore would be refused")
    config = AgentConfig(
        node=str(s["node"]),
        state_dir=state,
        join=tuple(_as_list(s["join"])),
        api_bind=str(s["api"]),
        gossip_bind=str(s["gossip_bind"]),
        gossip_key=Path(s["gossip_key"]) if s["gossip_key"] else None,
        trust=trust_paths,
        capacity=capacity,
        labels=labels,
        advertise_host=str(s["advertise_host"]),
        enforcement=str(s["enforcement"]),
        cluster=str(s["cluster"]),
        profile=str(s["profile"]),
        wither_on_exit=bool(s["wither_on_exit"]),
    )
    asyncio.run(_main(config, trust))
    return 0


async def _main(config: Any, trust: Any) -> None:
    from reconciler.agent.agent import Agent
    from reconciler.fabric import open_fabric
    from reconciler.fabric.keyring import Keyring

    keyring = Keyring.load(config.gossip_key) if config.gossip_key else None
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    stopping = False

    def _stop() -> None:  # only enqueues: the main task unwinds on its own
        nonlocal stopping
        stopping = True
        me.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop)
    try:
        async with open_fabric(
            config.node,
            bind=config.gossip_bind,
            seeds=config.join,
            keyring=keyring,
            cluster=config.cluster,
            profile=config.profile,
            state_dir=config.state_dir / "fabric",
            leave_on_exit=False,  # a restarting agent is not leaving: its instances stay
        ) as fabric:
            await Agent(config, fabric, trust).run()
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
