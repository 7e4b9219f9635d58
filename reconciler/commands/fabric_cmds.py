"""``myco gossip-key`` (make a keyring file) and ``myco members`` (ask a running mesh)."""

from __future__ import annotations

import argparse
import asyncio
import secrets
from pathlib import Path

from reconciler.commands.options import add_fabric, join_settings
from reconciler.errors import UsageError
from reconciler.fabric.keyring import Keyring


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("gossip-key", parents=[common], help="write a new gossip keyring file")
    p.add_argument("--out", required=True, type=Path, help="key file to write (mode 0600)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument(
        "--rotate",
        action="store_true",
        help="add a new primary key in front of the keys already in --out (rotation)",
    )
    p.set_defaults(func=_gossip_key)

    m = sub.add_parser("members", parents=[common], help="join a mesh briefly and list its members")
    add_fabric(m)
    # The spellings `members` had before the shared fabric flags (kept working, not shown).
    m.add_argument("--bind", dest="gossip_bind", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    m.add_argument(
        "--key-file",
        dest="gossip_key",
        type=Path,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    m.set_defaults(func=_members)


def _gossip_key(args: argparse.Namespace) -> int:
    out: Path = args.out
    if args.rotate:
        ring = Keyring.load(out)
        key = secrets.token_bytes(32)
        ring.install(key)
        ring.use(key)
        ring.save(out, force=True)
        print(f"{out}: new primary key, {len(ring.keys)} keys")
        return 0
    Keyring.generate().save(out, force=args.force)
    print(f"{out}: new gossip key")
    return 0


def _members(args: argparse.Namespace) -> int:
    if not args.join:
        raise UsageError("members: --join ADDR is required (a member of the mesh to ask)")
    settings = join_settings(args, "members")
    name = f"myco-cli-{secrets.token_hex(4)}"

    async def run() -> int:
        async with settings.open(name) as fabric:
            if not fabric.alive_members() or fabric.alive_members() == [name]:
                raise UsageError(f"no member answered at {', '.join(settings.seeds)}")
            for m in sorted(fabric.members(), key=lambda m: m.name):
                if m.name != name:
                    print(f"{m.name}\t{m.addr}\t{m.state}\t{m.incarnation}")
        return 0

    return asyncio.run(run())
