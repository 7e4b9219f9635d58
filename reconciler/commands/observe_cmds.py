"""``myco status`` and ``myco logs``: read a running mesh through an agent's HTTP API."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from reconciler.client import MeshClient
from reconciler.commands.options import add_api, add_state
from reconciler.errors import UnavailableError, UsageError
from reconciler.observe.logs import log_sources, parse_duration, stream_logs
from reconciler.observe.render import render_json, render_text
from reconciler.observe.status import MeshStatus, build_status

CLEAR = "\x1b[H\x1b[2J"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "status", parents=[common], help="nodes, apps and instances of a running mesh"
    )
    add_api(p)
    add_state(p)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("-w", "--watch", action="store_true", help="redraw as the mesh changes")
    p.add_argument("--interval", type=float, default=2.0, help="--watch poll period (seconds)")
    p.set_defaults(func=status_cmd)

    p = sub.add_parser("logs", parents=[common], help="the logs of an app's instances, merged")
    p.add_argument("app", metavar="APP")
    p.add_argument("--instance", metavar="ID", help="only this instance")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--since", metavar="DURATION", help="only lines newer than this (e.g. 10m)")
    p.add_argument("--tail", metavar="N", type=int, help="start with the last N lines of each")
    add_api(p)
    add_state(p)
    p.set_defaults(func=logs_cmd)


def _client(args: argparse.Namespace) -> MeshClient:
    from reconciler.commands.options import client_credentials

    client = MeshClient(args.api, state=args.state, credentials=client_credentials(args))
    _ = client.api  # no agent API known: say so before anything else
    return client


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def status_cmd(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    client = _client(args)
    render = render_json if args.output == "json" else render_text

    async def run() -> int:
        async with client:
            if not args.watch:
                _write(render(build_status(await client.snapshot())))
                return 0
            last = ""
            tty = sys.stdout.isatty()
            while True:
                try:
                    text = render(build_status(await client.snapshot()))
                except UnavailableError as exc:
                    text = f"myco: {exc} (retrying)\n"
                if text != last:
                    if args.output == "json":  # one compact document per change
                        text_out = render_json_line(text)
                    else:
                        text_out = (CLEAR if tty else "") + text + ("" if tty else "\n")
                    _write(text_out)
                    last = text
                await asyncio.sleep(args.interval)

    return asyncio.run(run())


def render_json_line(doc: str) -> str:
    try:
        return json.dumps(json.loads(doc), sort_keys=True) + "\n"
    except ValueError:
        return doc  # an error line, not JSON


def logs_cmd(args: argparse.Namespace) -> int:
    since = parse_duration(args.since) if args.since else None
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail must be 0 or more")
    client = _client(args)

    async def run() -> int:
        async with client:
            status: MeshStatus = build_status(await client.snapshot())
            sources = log_sources(status, args.app, args.instance)
            failed = await stream_logs(
                client.session, sources, lambda line: _write(line + "\n"), follow=args.follow,
                since=since, tail=args.tail,
            )  # fmt: skip
        if failed == len(sources):
            raise UnavailableError(f"could not read the logs of any instance of {args.app!r}")
        return 1 if failed else 0

    return asyncio.run(run())
