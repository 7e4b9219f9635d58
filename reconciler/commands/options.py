"""Option builders shared by the verbs, so one flag has one name, one form and one help text.

``--state``, ``--api`` (an agent API URL, for the short-lived verbs), the fabric flags
(``--join``, ``--gossip-bind``, ``--advertise``, ``--gossip-key``, ``--cluster``,
``--profile``, ``--insecure``) and their conversion into
:class:`~reconciler.fabric.joining.JoinSettings`.

Fail closed: gossip, or an HTTP listener (:func:`refuse_plaintext`), on an address other
hosts can reach without a keyring (``--gossip-key``) is refused unless ``--insecure``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from reconciler.fabric.joining import JoinSettings

STATE_HELP = "state directory ($MYCO_HOME, else ./.myco)"


def add_state(p: argparse.ArgumentParser, help: str = STATE_HELP) -> None:
    p.add_argument("--state", metavar="DIR", help=help)


def add_api(p: argparse.ArgumentParser) -> None:
    """``--api URL``: the agent API a short-lived verb talks to (``--agent`` is an old alias)."""
    p.add_argument(
        "--api",
        "--agent",
        dest="api",
        metavar="URL",
        help="an agent's API URL (default: agent_api from <state>/mesh.json)",
    )


def add_fabric(
    p: argparse.ArgumentParser,
    *,
    defaults: bool = True,
    profile_default: str = "local",
) -> None:
    """The fabric flags. With ``defaults=False`` every default is None (a config file may
    fill it in; see ``myco agent --config``)."""

    def d(value: object) -> object:
        return value if defaults else None

    p.add_argument(
        "--join",
        nargs="+",
        action="extend",
        default=[] if defaults else None,
        metavar="ADDR",
        help="gossip address(es) HOST:PORT of fabric members to join",
    )
    p.add_argument(
        "--gossip-bind",
        default=d("127.0.0.1:0"),
        metavar="HOST:PORT",
        help="this member's gossip address (default 127.0.0.1:0)",
    )
    p.add_argument(
        "--advertise",
        default=None,
        metavar="HOST[:PORT]",
        help="gossip address peers should use (default: the bound address; with a wildcard "
        "bind, the address that routes to the first --join seed)",
    )
    p.add_argument(
        "--gossip-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="fabric keyring file (base64 AES keys, one per line); without it, plaintext "
        "(refused off loopback unless --insecure)",
    )
    p.add_argument("--cluster", default=d("myco"), help="fabric cluster name (default myco)")
    p.add_argument(
        "--profile",
        choices=("local", "lan"),
        default=d(profile_default),
        help=f"fabric timing profile (default {profile_default})",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=False if defaults else None,
        help="allow gossip and HTTP listeners off loopback without --gossip-key (plaintext)",
    )


def join_settings(args: argparse.Namespace, verb: str) -> JoinSettings:
    """The fabric flags of ``args`` as :class:`JoinSettings` (checked, not yet opened)."""
    from reconciler.addr import parse_addr
    from reconciler.fabric.joining import JoinSettings

    gossip_key = args.gossip_key
    if gossip_key is not None and not Path(gossip_key).is_file():
        raise UsageError(f"{verb}: --gossip-key {gossip_key}: no such file")
    bind = args.gossip_bind or "127.0.0.1:0"
    parse_addr(bind, what="--gossip-bind", error=UsageError)
    seeds = tuple(args.join or ())
    for seed in seeds:
        parse_addr(seed, what="--join address", error=UsageError, allow_zero=False)
    advertise = args.advertise or None  # a host alone takes the bound port
    if advertise is not None and ":" in advertise:
        parse_addr(advertise, what="--advertise", error=UsageError, allow_zero=False)
    settings = JoinSettings(
        bind=bind,
        seeds=seeds,
        advertise=advertise,
        gossip_key=Path(gossip_key) if gossip_key is not None else None,
        cluster=args.cluster or "myco",
        profile=args.profile or "local",
        insecure=bool(getattr(args, "insecure", False)),
    )
    if settings.plaintext_off_loopback() and not settings.insecure:
        raise ConfigError(
            f"{verb}: refusing to gossip in plaintext on {bind}: "
            "give --gossip-key FILE, or --insecure"
        )
    try:
        return settings.resolved(error=ConfigError)
    except ConfigError as exc:
        raise ConfigError(f"{verb}: {exc}") from None


def refuse_plaintext(verb: str, what: str, addr: str, *, keyed: bool, insecure: bool) -> None:
    """Refuse to serve ``what`` on ``addr`` off loopback in a mesh without a keyring.

    Allowed on loopback, in a keyed mesh (``keyed``: ``--gossip-key``), or ``insecure``.
    """
    from reconciler.addr import is_loopback, parse_addr

    host, _ = parse_addr(addr, what=what, error=UsageError)
    if is_loopback(host) or keyed or insecure:
        return
    raise ConfigError(
        f"{verb}: refusing to serve {what} in plaintext on {addr} without a keyring: "
        "give --gossip-key FILE, or --insecure"
    )
