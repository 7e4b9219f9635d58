"""A fabric member as a small process, for tests and experiments.

``python -m reconciler.fabric.member --name N --bind 127.0.0.1:0 --join ADDR --key-file F``
prints ``ADDR host:port`` once bound, then runs until SIGTERM/SIGINT (leaving gracefully).
With ``--status-file`` it keeps a JSON file up to date with its members and merged view
(``{"name", "addr", "members": {name: [state, incarnation]}, "view": {"owner key":
[value, version]}}``), written atomically.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from reconciler import logs
from reconciler.errors import MycoError
from reconciler.files import atomic_write

from .fabric import Fabric, open_fabric
from .keyring import Keyring


def _status(fabric: Fabric) -> dict[str, object]:
    view = {}
    for (owner, key), value in fabric.view(include_gone=True).items():
        view[f"{owner} {key}"] = [value, fabric.version(owner, key)]
    return {
        "name": fabric.name,
        "addr": fabric.addr,
        "members": {m.name: [m.state, m.incarnation] for m in fabric.members()},
        "view": view,
        "stats": {
            "dropped_auth": fabric.stats.dropped_auth,
            "dropped_malformed": fabric.stats.dropped_malformed,
        },
    }


def _write(path: Path, data: dict[str, object]) -> None:
    atomic_write(path, json.dumps(data, sort_keys=True), durable=False)  # a status dump


async def _run(a: argparse.Namespace) -> int:
    keyring = Keyring.load(a.key_file) if a.key_file else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_fabric(
        a.name, a.bind, a.join, keyring, a.cluster, a.profile, a.state_dir, advertise=a.advertise
    ) as fabric:
        for item in a.publish:
            key, _, raw = item.partition("=")
            fabric.publish(key, json.loads(raw) if raw else None)
        print(f"ADDR {fabric.addr}", flush=True)
        last = ""
        while not stop.is_set():
            if a.status_file:
                data = _status(fabric)
                text = json.dumps(data, sort_keys=True)
                if text != last:
                    _write(Path(a.status_file), data)
                    last = text
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reconciler.fabric.member")
    p.add_argument("--name", required=True)
    p.add_argument("--bind", default="127.0.0.1:0")
    p.add_argument("--advertise", default=None)
    p.add_argument("--join", action="append", default=[], metavar="ADDR")
    p.add_argument("--key-file", default=None)
    p.add_argument("--cluster", default="myco")
    p.add_argument("--profile", choices=("lan", "local"), default="local")
    p.add_argument("--state-dir", default=None)
    p.add_argument("--publish", action="append", default=[], metavar="KEY=JSON")
    p.add_argument("--status-file", default=None)
    p.add_argument("-v", "--verbose", action="count", default=0)
    a = p.parse_args(argv)
    logs.configure(a.verbose)
    try:
        return asyncio.run(_run(a))
    except MycoError as exc:
        print(f"member: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
