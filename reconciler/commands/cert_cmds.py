"""``myco cert``: certificates and tokens of the mesh CA (docs/identity.md).

::

    myco cert issue  --ca DIR --role ROLE --name NAME [--access A] [--lifetime 24h] --out DIR
    myco cert token  --ca DIR --role agent|edge --name NAME [--ttl 1h]     (a join token)
    myco cert bearer --ca DIR --name NAME --access A [--ttl 30d]           (a bearer token)
    myco cert revoke NAME                      (asks the active reconciler; admin only)
    myco cert show   DIR|FILE                  (who, role, validity)

``--ca DIR`` is the CA directory ``myco init`` made (``issuer.crt``, ``issuer.key``,
``ca.crt``). Tokens are printed alone on stdout (``> join.token``), what they are on
stderr. Durations: ``90s``, ``90m``, ``24h``, ``30d``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.commands.options import add_api, add_state, parse_duration
from reconciler.errors import ConfigError, IdentityError, UsageError

if TYPE_CHECKING:
    from cryptography import x509

    from reconciler.identity.ca import Issuer
    from reconciler.identity.verify import Principal

ROLE_CHOICES = ("agent", "edge", "reconciler", "operator")
ACCESS_CHOICES = ("viewer", "operator", "admin")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    cert = sub.add_parser(
        "cert",
        parents=[common],
        help="the mesh CA: issue certificates and tokens, revoke, show",
        description="Issue member and operator certificates, join and bearer tokens; revoke "
        "an identity; show what a certificate says (docs/identity.md).",
    )
    verbs = cert.add_subparsers(dest="cert_command", metavar="VERB")
    cert.set_defaults(func=lambda _args: _no_verb(cert))

    def ca_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--ca",
            type=Path,
            required=True,
            metavar="DIR",
            help="the CA directory of `myco init` (issuer.crt, issuer.key, ca.crt)",
        )

    p = verbs.add_parser(
        "issue",
        parents=[common],
        help="issue a certificate into an identity directory",
        description="Make a key and a certificate for ROLE/NAME, signed by the issuing CA, "
        "and write them with the root CA as an identity directory (ca.crt, cert.pem, key.pem).",
    )
    ca_option(p)
    p.add_argument("--role", required=True, choices=ROLE_CHOICES)
    p.add_argument("--name", required=True, help="host name (agents: the node name) or person")
    p.add_argument(
        "--access", choices=ACCESS_CHOICES, help="an operator's access (default operator)"
    )
    p.add_argument("--lifetime", default="24h", metavar="DURATION", help="(24h)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="identity directory")
    p.add_argument("--force", action="store_true", help="replace an identity already there")
    p.set_defaults(func=run_issue)

    p = verbs.add_parser(
        "token",
        parents=[common],
        help="print a one-time join token for a new agent or edge",
        description="Print a join token: the host named NAME redeems it once with "
        "`--join-token FILE --enrol URL` to get its certificate from a reconciler.",
    )
    ca_option(p)
    p.add_argument("--role", required=True, choices=("agent", "edge"))
    p.add_argument("--name", required=True, help="the new member's name (agents: its node name)")
    p.add_argument("--ttl", default="1h", metavar="DURATION", help="valid for (1h)")
    p.set_defaults(func=run_token)

    p = verbs.add_parser(
        "bearer",
        parents=[common],
        help="print a bearer token with an access level (browsers, scripts)",
    )
    ca_option(p)
    p.add_argument("--name", required=True, help="whom it is for (shown in the audit log)")
    p.add_argument("--access", required=True, choices=ACCESS_CHOICES)
    p.add_argument("--ttl", default="30d", metavar="DURATION", help="valid for (30d)")
    p.set_defaults(func=run_bearer)

    p = verbs.add_parser(
        "revoke",
        parents=[common],
        help="revoke every certificate of NAME issued until now (admin)",
        description="Ask the active reconciler to revoke NAME: its certificates issued "
        "before now are refused everywhere once the revocation list has spread.",
    )
    p.add_argument("name", metavar="NAME")
    add_state(p)
    add_api(p)
    p.add_argument(
        "--reconciler", metavar="URL", help="the reconciler's control API (default: found)"
    )
    p.set_defaults(func=run_revoke)

    p = verbs.add_parser(
        "show",
        parents=[common],
        help="show who a certificate names, its role and validity",
        description="Show an identity directory (or CA directory), or a PEM file.",
    )
    p.add_argument("path", type=Path, metavar="DIR|FILE")
    p.set_defaults(func=run_show)


def _no_verb(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _issuer(ca: Path) -> Issuer:
    from reconciler.identity.layout import CADir

    if not ca.is_dir():
        raise UsageError(f"--ca {ca}: no such directory")
    d = CADir(ca)
    if not d.issuer_key.is_file():
        raise ConfigError(
            f"--ca {ca}: no issuing CA there (issuer.key); give the directory `myco init` made"
        )
    return d.issuer()


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def _span(seconds: float) -> str:
    s = int(abs(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


# -- issue -----------------------------------------------------------------------------------


def run_issue(args: argparse.Namespace) -> int:
    from reconciler.identity.enrol import issue_to_dir
    from reconciler.identity.layout import MemberDir
    from reconciler.identity.names import check_name

    lifetime = parse_duration(args.lifetime, "--lifetime")
    if args.access and args.role != "operator":
        raise UsageError("cert issue: --access is for --role operator (people)")
    check_name(args.name, "--name")
    out = MemberDir(args.out)
    if (out.cert.exists() or out.key.exists()) and not args.force:
        raise ConfigError(
            f"{args.out} already holds an identity ({out.cert.name}); use --force to replace it"
        )
    issuer = _issuer(args.ca)
    member = issue_to_dir(
        issuer,
        args.role,
        args.name,
        args.out,
        now=time.time(),
        lifetime_s=lifetime,
        access=args.access,
    )
    p = member.principal
    access = f" ({p.access} access)" if p.access else ""
    print(f"issued {p.role} {p.name}{access}: {p.uri}, valid until {_when(p.not_after)}")
    print(f"  {out.ca_cert}  the mesh root CA")
    print(f"  {out.cert}  the certificate (and the issuing CA's)")
    print(f"  {out.key}  its key (keep it secret; mode 0600)")
    return 0


# -- tokens ----------------------------------------------------------------------------------


def _token(args: argparse.Namespace, kind: str, **claims: str) -> int:
    from reconciler.identity.names import check_name
    from reconciler.identity.tokens import make_token

    ttl = parse_duration(args.ttl, "--ttl")
    check_name(args.name, "--name")
    issuer = _issuer(args.ca)
    now = time.time()
    token = make_token(issuer, kind, args.name, now=now, ttl_s=ttl, **claims)  # type: ignore[arg-type]
    print(token)
    what = (
        f"a one-time join token for {claims['role']} {args.name}"
        if kind == "join"
        else f"a bearer token for {args.name} ({claims['access']} access)"
    )
    print(f"myco: {what}, valid until {_when(now + ttl)}", file=sys.stderr)
    return 0


def run_token(args: argparse.Namespace) -> int:
    return _token(args, "join", role=args.role)


def run_bearer(args: argparse.Namespace) -> int:
    return _token(args, "bearer", access=args.access)


# -- revoke ----------------------------------------------------------------------------------


def run_revoke(args: argparse.Namespace) -> int:
    from reconciler.client import MeshClient
    from reconciler.commands.options import client_credentials
    from reconciler.home import absolute_state_dir
    from reconciler.identity.names import check_name

    check_name(args.name, "NAME")
    credentials = client_credentials(args)  # --identity (an admin's certificate) or --token

    async def go() -> dict[str, Any]:
        client = MeshClient(
            args.api,
            state=absolute_state_dir(args.state),
            reconciler=args.reconciler,
            credentials=credentials,
        )
        async with client:
            return await client.control("POST", "/v1/revoke", {"name": args.name})

    reply = asyncio.run(go())
    print(str(reply.get("message") or f"{args.name} revoked"))
    return 0


# -- show ------------------------------------------------------------------------------------


def run_show(args: argparse.Namespace) -> int:
    from reconciler.identity.layout import CA_CERT, ISSUER_CERT, MEMBER_CERT

    path: Path = args.path
    if path.is_dir():
        shown = 0
        if (path / MEMBER_CERT).is_file():
            _show_file(path / MEMBER_CERT, roots_file=path / CA_CERT)
            shown += 1
        for name in (ISSUER_CERT, CA_CERT):
            if (path / name).is_file() and not shown:
                _show_file(path / name, roots_file=path / CA_CERT)
                shown += 1
        if not shown:
            raise ConfigError(f"{path}: no certificate there (cert.pem, issuer.crt or ca.crt)")
        return 0
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    roots = path.parent / CA_CERT
    _show_file(path, roots_file=roots if roots.is_file() and roots != path else None)
    return 0


def _show_file(path: Path, roots_file: Path | None) -> None:
    from reconciler.identity.ca import load_certs

    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    if text.strip().startswith(b"myco1."):
        _show_token(path, text.decode("ascii", "replace"))
        return
    certs = load_certs(text, str(path))
    now = time.time()
    print(f"{path}:")
    for i, cert in enumerate(certs):
        print(("  " if i == 0 else "  then: ") + _describe(cert, now))
    if roots_file is not None and roots_file.is_file():
        print(f"  chain: {_check_chain(certs, roots_file, now)}")


def _describe(cert: x509.Certificate, now: float) -> str:
    from cryptography import x509 as x

    from reconciler.identity.verify import principal_of

    nb = cert.not_valid_before_utc.timestamp()
    na = cert.not_valid_after_utc.timestamp()
    if now < nb:
        valid = f"NOT YET VALID (from {_when(nb)})"
    elif now > na:
        valid = f"EXPIRED {_span(now - na)} ago ({_when(na)})"
    else:
        valid = f"valid until {_when(na)} (in {_span(na - now)})"
    try:
        is_ca = cert.extensions.get_extension_for_class(x.BasicConstraints).value.ca
    except x.ExtensionNotFound:
        is_ca = False
    if is_ca:
        cn = cert.subject.rfc4514_string()
        return f"CA {cn}, {valid}"
    try:
        p: Principal = principal_of(cert)
    except IdentityError as exc:
        return f"{cert.subject.rfc4514_string()}: not a member certificate ({exc}), {valid}"
    access = f", {p.access} access" if p.access else ""
    return f"{p.role} {p.name}{access} ({p.uri}), {valid}, serial {p.serial:x}"


def _check_chain(certs: list[x509.Certificate], roots_file: Path, now: float) -> str:
    from cryptography import x509 as x

    from reconciler.identity.layout import load_roots, verifier_for

    leaf = certs[0]
    try:
        is_ca = leaf.extensions.get_extension_for_class(x.BasicConstraints).value.ca
    except x.ExtensionNotFound:
        is_ca = False
    try:
        verifier = verifier_for(load_roots(roots_file))
        for c in certs[1:]:
            verifier.issuer(c, now)
        if is_ca:
            verifier.issuer(leaf, now)  # a root of these roots, or an issuing CA under one
        else:
            verifier.check_chain(certs, now)
    except (IdentityError, ConfigError) as exc:
        return f"NOT valid against {roots_file}: {exc}"
    return f"valid against the root CA in {roots_file}"


def _show_token(path: Path, text: str) -> None:
    from reconciler.identity.enrol import peek_token

    body = peek_token(text)
    kind = body.get("kind", "?")
    who = body.get("role") if kind == "join" else body.get("access")
    exp = body.get("exp")
    now = time.time()
    valid = "?"
    if isinstance(exp, int | float):
        valid = (
            f"EXPIRED {_span(now - exp)} ago" if now > exp else f"valid until {_when(float(exp))}"
        )
    print(f"{path}: a {kind} token for {body.get('name', '?')} ({who}), mesh "
          f"{body.get('mesh', '?')}, {valid} (signature not checked here)")  # fmt: skip
