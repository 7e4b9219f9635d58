"""A hostile fabric member, as a process: it holds the gossip key and *some* certificate
(valid for another name, expired, from another CA... or none) and publishes records it
must not be able to make anyone accept.

    python tests/hostile_member.py --name h9 --bind HOST:0 --join SEED --gossip-key F \
        [--identity DIR | --unsigned] [--set KEY=JSON ...] [--cluster NAME]

It signs with the key in ``DIR`` whatever that certificate says (an honest member would
refuse to start with an expired one), publishes its ``certs/<name>`` record and every
``--set``, prints ``READY <addr>`` and runs until SIGTERM. Used by the hostile tests and by
``bench.identity``; not part of the package because nothing honest needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.fabric import Keyring, open_fabric  # noqa: E402
from reconciler.identity.ca import certs_pem, load_certs, load_key  # noqa: E402
from reconciler.identity.guard import b64, record_message  # noqa: E402


class Forger:
    """A RecordGuard that signs anything with the given key and checks nothing."""

    def __init__(self, chain_pem: str, key_pem: bytes, cert_name: str, cluster: str) -> None:
        self.chain_pem = chain_pem
        self.key = load_key(key_pem)
        self.cert_name = cert_name
        self.cluster = cluster

    def sign(self, owner: str, key: str, version: int, value: Any) -> str:
        return b64(self.key.sign(record_message(self.cluster, owner, key, version, value)))

    def admit(self, owner: str, key: str, version: int, value: Any, sig: str) -> str:
        return ""

    def park(self, owner: str, item: object) -> None:
        pass

    def unpark(self, owner: str) -> list[object]:
        return []

    def applied(self, owner: str, key: str, version: int, value: Any) -> list[str]:
        return []

    def blocked(self, owner: str) -> bool:
        return False

    def forget(self, owner: str) -> None:
        pass

    def cert_record(self) -> tuple[str, dict[str, Any]]:
        return f"certs/{self.cert_name}", {"chain": self.chain_pem}


async def run(a: argparse.Namespace) -> None:
    guard = None
    if a.identity:
        d = Path(a.identity)
        chain = load_certs((d / "cert.pem").read_bytes())
        from reconciler.identity.verify import principal_of

        guard = Forger(
            certs_pem(chain), (d / "key.pem").read_bytes(), principal_of(chain[0]).name, a.cluster
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    async with open_fabric(
        a.name, a.bind, a.join, Keyring.load(Path(a.gossip_key)), a.cluster, "local", None,
        guard=guard,  # type: ignore[arg-type]
    ) as fabric:  # fmt: skip
        for item in a.set:
            key, _, raw = item.partition("=")
            fabric.publish(key, json.loads(raw) if raw else None)
        print(f"READY {fabric.addr}", flush=True)
        await stop.wait()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--bind", default="127.0.0.1:0")
    p.add_argument("--join", action="append", default=[])
    p.add_argument("--gossip-key", required=True)
    p.add_argument("--cluster", default="myco")
    p.add_argument("--identity", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    asyncio.run(run(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
