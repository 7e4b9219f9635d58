"""A fabric member as a small process, for tests and experiments.

``python -m reconciler.fabric.member --name N --bind 127.0.0.1:0 --join ADDR --key-file F``
prints ``ADDR host:port`` once bound, then runs until SIGTERM/SIGINT (leaving gracefully).
With ``--status-file`` it keeps a JSON file up to date with its members and merged view
(``{"name", "addr", "members": {name: [state, incarnation]}, "view": {"owner key":
[value, version]}}``), written atomically.

With ``--events FILE`` it appends one JSON line per event, stamped with the wall clock
(``"t"``, epoch seconds) when the event loop handled it, so that several processes on
one machine can be compared (``bench/simreal.py``):

* ``{"ev": "start", "name", "addr", "alive": [names]}`` once joined (the log starts here);
* ``{"ev": "member", "name", "state", "inc"}`` each time a member's state changes;
* ``{"ev": "change", "owner", "key", "version", "deleted"}`` for each key that changed;
* ``{"ev": "published", "key", "version"}`` for a key published by ``--control``;
* ``{"ev": "lag", "max_ms", "mean_ms"}`` every 5 s: how late the 50 ms ticker woke up
  (the process waiting for a CPU or for its own event loop).

With ``--control`` it reads commands from stdin, one a line: ``publish KEY JSON`` or
``delete KEY``; a bad line is reported on stderr and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from reconciler import logs
from reconciler.errors import MycoError
from reconciler.files import atomic_write

from .api import Change, Member
from .fabric import Fabric, open_fabric
from .keyring import Keyring

TICK_S = 0.05
LAG_EVERY_S = 5.0


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


class EventLog:
    """JSON lines with wall-clock stamps, flushed per line (a kill -9 loses nothing)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def emit(self, ev: str, **fields: Any) -> None:
        self._out.write(json.dumps({"t": round(time.time(), 6), "ev": ev, **fields}) + "\n")
        self._out.flush()

    def attach(self, fabric: Fabric) -> None:
        """Log the fabric's member and key changes from now on (chaining its own hook)."""
        engine = fabric.engine
        before = engine.on_change

        def changed(c: Change) -> None:
            self.emit(
                "change", owner=c.owner, key=c.key, version=c.version, deleted=c.value is None
            )
            if before is not None:
                before(c)

        def member(m: Member) -> None:
            self.emit("member", name=m.name, state=m.state, inc=m.incarnation)

        engine.on_change = changed
        engine.on_member = member
        alive = sorted(m.name for m in fabric.members() if m.state == "alive")
        self.emit("start", name=fabric.name, addr=fabric.addr, alive=alive)


def command(fabric: Fabric, line: str, events: EventLog | None) -> str | None:
    """Carry out one ``--control`` line; the error in one line, or None."""
    verb, _, rest = line.strip().partition(" ")
    key, _, raw = rest.strip().partition(" ")
    if verb not in ("publish", "delete") or not key:
        return f"bad command {line.strip()!r}: expected `publish KEY JSON` or `delete KEY`"
    if verb == "delete":
        fabric.delete(key)
    else:
        try:
            value = json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            return f"bad JSON for {key}: {exc}"
        fabric.publish(key, value)
    if events is not None:
        events.emit("published", key=key, version=fabric.version(fabric.name, key))
    return None


async def _control(fabric: Fabric, events: EventLog | None) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip():
            err = command(fabric, line.decode(errors="replace"), events)
            if err is not None:
                print(f"member: {err}", file=sys.stderr, flush=True)


class _Lag:
    """How late a periodic tick wakes up, summarised every ``LAG_EVERY_S``."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self.worst = 0.0
        self.total = 0.0
        self.n = 0
        self.since = time.monotonic()

    def tick(self, late_s: float) -> None:
        self.worst = max(self.worst, late_s)
        self.total += late_s
        self.n += 1
        now = time.monotonic()
        if now - self.since >= LAG_EVERY_S:
            self.events.emit(
                "lag",
                max_ms=round(self.worst * 1000, 1),
                mean_ms=round(self.total / self.n * 1000, 2),
            )
            self.worst = self.total = 0.0
            self.n = 0
            self.since = now


async def _run(a: argparse.Namespace, events: EventLog | None) -> int:
    keyring = Keyring.load(a.key_file) if a.key_file else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_fabric(
        a.name, a.bind, a.join, keyring, a.cluster, a.profile, a.state_dir,
        advertise=a.advertise,
    ) as fabric:  # fmt: skip
        if events is not None:
            events.attach(fabric)
        for item in a.publish:
            key, _, raw = item.partition("=")
            fabric.publish(key, json.loads(raw) if raw else None)
        print(f"ADDR {fabric.addr}", flush=True)
        async with asyncio.TaskGroup() as tg:
            control = tg.create_task(_control(fabric, events)) if a.control else None
            await _tick(fabric, stop, a.status_file, events)
            if control is not None:
                control.cancel()
    return 0


async def _tick(
    fabric: Fabric, stop: asyncio.Event, status_file: str | None, events: EventLog | None
) -> None:
    last = ""
    lag = _Lag(events) if events is not None else None
    while not stop.is_set():
        if status_file:
            data = _status(fabric)
            text = json.dumps(data, sort_keys=True)
            if text != last:
                _write(Path(status_file), data)
                last = text
        due = time.monotonic() + TICK_S
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TICK_S):
                await stop.wait()
        if lag is not None and not stop.is_set():
            lag.tick(max(0.0, time.monotonic() - due))


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
    p.add_argument("--events", default=None, metavar="FILE", help="append JSON-line events")
    p.add_argument("--control", action="store_true", help="read commands from stdin")
    p.add_argument("-v", "--verbose", action="count", default=0)
    a = p.parse_args(argv)
    logs.configure(a.verbose)
    try:
        with contextlib.ExitStack() as files:
            events = EventLog(files.enter_context(open(a.events, "a"))) if a.events else None
            return asyncio.run(_run(a, events))
    except MycoError as exc:
        print(f"member: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"member: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
