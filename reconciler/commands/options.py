"""Option builders shared by the verbs, so one flag has one name, one form and one help text.

``--state``, ``--api`` (an agent API URL, for the short-lived verbs), the fabric flags
(``--join``, ``--gossip-bind``, ``--advertise``, ``--gossip-key``, ``--cluster``,
``--profile``, ``--insecure``) and their conversion into
:class:`~reconciler.fabric.joining.JoinSettings`; the identity flags (``--identity``,
``--join-token``, ``--enrol``, ``--ca``) and their conversion into
:class:`~reconciler.identity.enrol.IdentitySpec`; durations (``24h``, ``30d``).

Fail closed, unless ``--insecure``: gossip on an address other hosts can reach needs a
keyring (``--gossip-key``) and an identity (its records are signed,
:func:`refuse_unsigned_gossip`); an HTTP listener off loopback needs an identity (mutual
TLS, :func:`refuse_plaintext`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from reconciler.client import Credentials
    from reconciler.fabric.joining import JoinSettings
    from reconciler.identity.enrol import IdentitySpec

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
    p.add_argument(
        "--identity",
        metavar="DIR",
        help="your identity directory: ca.crt (the mesh root, checks the server), and "
        "cert.pem + key.pem for an operator certificate "
        "(default: $MYCO_IDENTITY, else <state>/operator)",
    )
    p.add_argument(
        "--token",
        metavar="TOKEN|FILE",
        help="a bearer token (`myco cert token`), or a file holding it (default: $MYCO_TOKEN)",
    )


def client_credentials(args: argparse.Namespace) -> Credentials:
    """The credentials of ``add_api``'s flags, else the environment, else ``<state>/operator``
    (pass them to :class:`~reconciler.client.MeshClient`)."""
    from reconciler.client import Credentials
    from reconciler.home import state_dir

    return Credentials.resolve(
        identity=getattr(args, "identity", None),
        token=getattr(args, "token", None),
        state=state_dir(getattr(args, "state", None)),
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


def refuse_plaintext(verb: str, what: str, addr: str, *, secured: bool, insecure: bool) -> None:
    """Refuse to serve ``what`` on ``addr`` off loopback without an identity.

    Allowed on loopback, with a member identity (``secured``: mutual TLS), or ``insecure``.
    """
    from reconciler.addr import is_loopback, parse_addr

    host, _ = parse_addr(addr, what=what, error=UsageError)
    if is_loopback(host) or secured or insecure:
        return
    raise ConfigError(
        f"{verb}: refusing to serve {what} in plaintext on {addr} without an identity: "
        "give --identity DIR (mutual TLS), or --insecure"
    )


def refuse_unsigned_gossip(verb: str, join: JoinSettings, *, secured: bool) -> None:
    """Refuse to gossip off loopback without an identity (every record would be unsigned,
    and every signed mesh refuses it), unless ``--insecure``."""
    from reconciler.addr import is_loopback, is_wildcard, parse_addr

    host, _ = parse_addr(join.bind, what="--gossip-bind", error=UsageError)
    if secured or join.insecure or (is_loopback(host) and not is_wildcard(host)):
        return
    raise ConfigError(
        f"{verb}: refusing to gossip on {join.bind} without an identity (its records would "
        "be unsigned): give --identity DIR (or --join-token FILE), or --insecure"
    )


# -- identity -------------------------------------------------------------------------------

IDENTITY_HELP = (
    "this member's identity directory: ca.crt, cert.pem, key.pem (default: <state>/identity)"
)


def add_identity(p: argparse.ArgumentParser, role: str, *, defaults: bool = True) -> None:
    """``--identity`` and the ways to get one: ``--join-token``/``--enrol`` (agents, edges),
    ``--ca`` (every daemon; a reconciler issues certificates with it)."""
    help_identity = IDENTITY_HELP
    if role == "edge":
        help_identity = "this member's identity directory: ca.crt, cert.pem, key.pem"
    p.add_argument("--identity", type=Path, default=None, metavar="DIR", help=help_identity)
    if role in ("agent", "edge"):
        p.add_argument(
            "--join-token",
            type=Path,
            default=None,
            metavar="FILE",
            help="a one-time join token (`myco cert token`): enrol with it at the first "
            "start, when --identity holds no identity yet",
        )
        p.add_argument(
            "--enrol",
            nargs="+",
            action="extend",
            default=[] if defaults else None,
            metavar="URL",
            help="the control API (https://HOST:PORT) of the reconciler(s) to enrol with",
        )
        p.add_argument(
            "--ca",
            type=Path,
            default=None,
            metavar="DIR",
            help="the mesh CA directory (`myco init`'s): its ca.crt is what the reconciler "
            "is checked against when enrolling",
        )
    else:
        p.add_argument(
            "--ca",
            type=Path,
            default=None,
            metavar="DIR",
            help="the mesh CA directory holding issuer.crt and issuer.key: issue this "
            "reconciler's own certificate, and enrol, renew and revoke members",
        )
    p.add_argument(
        "--loopback-http",
        action="store_true",
        default=False if defaults else None,
        help="keep the HTTP listeners plain and open although there is an identity (it "
        "signs the fabric records): loopback listeners only, as `myco up` runs them",
    )


def identity_spec(
    verb: str,
    *,
    identity: Path | str | None,
    default_dir: Path | None,
    join_token: Path | str | None = None,
    enrol: list[str] | tuple[str, ...] = (),
    ca: Path | str | None = None,
    loopback_http: bool = False,
    listeners: tuple[tuple[str, str], ...] = (),
) -> IdentitySpec | None:
    """The identity flags as an :class:`IdentitySpec` (None: no identity, none asked for).
    ``listeners``: (what, HOST:PORT) of the HTTP listeners, which ``--loopback-http``
    requires on loopback."""
    from reconciler.addr import is_loopback, parse_addr
    from reconciler.identity.enrol import IdentitySpec

    if loopback_http:
        for what, addr in listeners:
            host, _ = parse_addr(addr, what=what, error=UsageError)
            if not is_loopback(host):
                raise UsageError(
                    f"{verb}: --loopback-http serves plain HTTP to anybody: {what} {addr} "
                    "must be on loopback"
                )

    for url in enrol:
        if not str(url).startswith("https://"):
            raise UsageError(f"{verb}: --enrol {url}: expected https://HOST:PORT")
    if ca is not None and not Path(ca).is_dir():
        raise UsageError(f"{verb}: --ca {ca}: no such directory")
    if join_token is not None and not Path(join_token).is_file():
        raise UsageError(f"{verb}: --join-token {join_token}: no such file")
    if join_token is not None and not enrol:
        raise UsageError(f"{verb}: --join-token needs --enrol URL (a reconciler's control API)")
    if join_token is not None and ca is None:
        raise UsageError(
            f"{verb}: --join-token needs --ca DIR (the mesh CA directory holding ca.crt)"
        )
    if identity is None and default_dir is None:
        if join_token is not None:
            raise UsageError(f"{verb}: --join-token needs --identity DIR (where to keep it)")
        return None
    directory = Path(identity) if identity is not None else default_dir
    assert directory is not None
    return IdentitySpec(
        dir=directory.absolute(),
        join_token=Path(join_token) if join_token is not None else None,
        enrol_urls=tuple(str(u).rstrip("/") for u in enrol),
        ca=Path(ca).absolute() if ca is not None else None,
        explicit=identity is not None,
        loopback_http=loopback_http,
    )


def has_identity(spec: IdentitySpec | None, *, issues: bool = False) -> bool:
    """Whether a daemon with ``spec`` will run with an identity: one is on disk, or it
    enrols (a join token), or it issues its own (``issues``: a reconciler with ``--ca``)."""
    if spec is None:
        return False
    from reconciler.identity.layout import MemberDir

    return (
        MemberDir(spec.dir).exists()
        or spec.join_token is not None
        or (issues and spec.ca is not None)
    )


# -- durations ------------------------------------------------------------------------------

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, what: str = "duration") -> float:
    """``90s``, ``90m``, ``24h``, ``30d`` (or plain seconds) as seconds; UsageError if not."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:]) if raw else None
    number = raw[:-1] if unit is not None else raw
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise UsageError(
            f"{what} {text!r}: expected a number and a unit, e.g. 90m, 24h or 30d"
        ) from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{what} {text!r}: must be positive")
    return value
