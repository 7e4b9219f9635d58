"""``myco agent``: the per-host daemon (docs/agent.md): flags and ``--config`` only.

Flags, or a YAML/JSON ``--config`` file with the same names (``node``, ``state``, ``api``,
``join``, ``gossip_bind``, ``advertise``, ``gossip_key``, ``cluster``, ``profile``,
``trust``, ``capacity_cpu_milli``, ``capacity_memory_mb``, ``labels``, ``advertise_host``,
``enforcement``, ``wither_on_exit``, ``insecure``, ``identity``, ``join_token``, ``enrol``,
``ca``, ``loopback_http``); a flag given on the command line wins over the file.
The fabric and identity flags are the shared ones (:mod:`reconciler.commands.options`). The
service itself is :mod:`reconciler.agent.service`.

Identity: ``--identity DIR`` (default ``<state>/identity``) holds the agent's member
certificate, whose name must be ``--node``. On the first start of a new host,
``--join-token FILE --enrol URL --ca DIR`` gets it from a reconciler. Off loopback (gossip or
the API) an agent without one refuses to start unless ``--insecure``.

SIGTERM / SIGINT stop the agent, not its instances: they keep running and the next
``myco agent`` on the same ``--state`` adopts them. ``--wither-on-exit`` (what ``myco up``
uses) withers them first instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reconciler.commands.options import (
    add_fabric,
    add_identity,
    add_state,
    has_identity,
    identity_spec,
    join_settings,
    refuse_plaintext,
    refuse_unsigned_gossip,
)
from reconciler.errors import ConfigError, UsageError

_DEFAULTS: dict[str, Any] = {
    "join": [],
    "api": "127.0.0.1:0",
    "gossip_bind": "127.0.0.1:0",
    "advertise": None,
    "gossip_key": None,
    "trust": [],
    "capacity_cpu_milli": None,
    "capacity_memory_mb": None,
    "labels": [],
    "advertise_host": None,  # default: the fabric's advertised host
    "enforcement": "auto",
    "cluster": "myco",
    "profile": "local",
    "wither_on_exit": False,
    "insecure": False,
    "identity": None,  # default: <state>/identity
    "join_token": None,
    "enrol": [],
    "ca": None,
    "loopback_http": False,
}


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "agent",
        parents=[common],
        help="run the node agent: join the fabric and run the instances intended for it",
        description="Run the node agent (docs/agent.md).",
    )
    p.add_argument("--node", help="this node's id (its fabric member name)")
    add_state(p, help="state directory (instances, spores, logs)")
    p.add_argument(
        "--api", metavar="HOST:PORT", help="serve this agent's API here (default 127.0.0.1:0)"
    )
    add_fabric(p, defaults=False)
    add_identity(p, "agent", defaults=False)
    p.add_argument("--trust", nargs="+", metavar="FILE", help="trusted keys / trust policy files")
    p.add_argument("--capacity-cpu-milli", type=int, metavar="N")
    p.add_argument("--capacity-memory-mb", type=int, metavar="N")
    p.add_argument("--label", action="append", dest="labels", metavar="K=V")
    p.add_argument(
        "--advertise-host",
        help="host instances listen on ($HOST) and are reached at "
        "(default: the fabric's advertised host)",
    )
    p.add_argument("--enforcement", choices=("auto", "cgroup2", "cgroup1", "rlimit"), help="(auto)")
    p.add_argument(
        "--wither-on-exit",
        action="store_true",
        default=None,
        help="stop the instances when the agent stops (default: leave them to be adopted)",
    )
    p.add_argument("--config", metavar="FILE", help="YAML/JSON file with the settings above")
    p.set_defaults(func=run_agent)


def allowed_keys() -> list[str]:
    return [*_DEFAULTS, "node", "state"]


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    merged = dict(_DEFAULTS)
    if args.config:
        merged.update(_load_config(args.config))
    for key in allowed_keys():
        value = getattr(args, key, None)
        if value is not None:
            merged[key] = value
    for key in ("node", "state"):
        if not merged.get(key):
            raise UsageError(f"agent: --{key} is required (or set {key} in --config)")
    return merged


def _load_config(path: str) -> dict[str, Any]:
    import yaml  # only when a config file is used: keeps the agent's start-up small

    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    unknown = sorted(set(loaded) - set(allowed_keys()))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    return loaded


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
    from reconciler.addr import is_wildcard
    from reconciler.agent.agent import AgentConfig, default_capacity
    from reconciler.agent.service import run
    from reconciler.records import Nutrients
    from reconciler.spore.trust import TrustPolicy

    s = _settings(args)
    labels = _labels(s["labels"])
    if s["profile"] not in ("local", "lan"):
        raise ConfigError(f"agent: profile {s['profile']!r}: expected local or lan")
    fabric = join_settings(
        argparse.Namespace(
            join=_as_list(s["join"]),
            gossip_bind=str(s["gossip_bind"]),
            advertise=s["advertise"],
            gossip_key=s["gossip_key"],
            cluster=str(s["cluster"]),
            profile=str(s["profile"]),
            insecure=bool(s["insecure"]),
        ),
        "agent",
    )
    api = str(s["api"])
    state = Path(s["state"]).absolute()
    identity = identity_spec(
        "agent",
        identity=s["identity"],
        default_dir=state / "identity",
        join_token=s["join_token"],
        enrol=_as_list(s["enrol"]),
        ca=s["ca"],
        loopback_http=bool(s["loopback_http"]),
        listeners=(("--api", api),),
    )
    secured = has_identity(identity)
    refuse_unsigned_gossip("agent", fabric, secured=secured)
    refuse_plaintext("agent", "the agent API", api, secured=secured, insecure=fabric.insecure)
    advertise_host = str(s["advertise_host"] or fabric.advertised_host())
    if is_wildcard(advertise_host):
        raise ConfigError(
            f"agent: cannot advertise instances on {advertise_host!r}: give --advertise-host "
            "HOST with this host's own address"
        )
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
        fabric=fabric,
        api_bind=api,
        trust=trust_paths,
        capacity=capacity,
        labels=labels,
        advertise_host=advertise_host,
        enforcement=str(s["enforcement"]),
        wither_on_exit=bool(s["wither_on_exit"]),
    )
    return run(config, trust, identity)
