"""``myco logs``: find an app's instances in the view and merge their logs, one prefix each.

Each node serves ``GET {api_url}/v1/logs/{instance}?follow=1&since=S&tail=N`` as
text/plain lines (streamed while ``follow=1``; ``since`` in seconds, ``tail`` a line
count). Without ``-f`` the instances are fetched at once and printed one block after the
other; with ``-f`` lines are printed as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from reconciler.errors import MycoError, UnavailableError, UsageError

from .status import MeshStatus

log = logging.getLogger("myco.observe")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90s``, ``5m``, ``1h30m``, ``2d`` or a bare number of seconds -> seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value < 0:
            raise UsageError(f"bad duration {text!r}: negative")
        return value
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise UsageError(f"bad duration {text!r} (use e.g. 30s, 5m, 1h30m, 2d)")
    return total


@dataclass(frozen=True)
class LogSource:
    instance: str
    node: str
    url: str  # GET this (without query)


def log_sources(status: MeshStatus, app: str, instance: str | None = None) -> list[LogSource]:
    """Where each instance of ``app`` keeps its logs; errors say what is missing."""
    mine = [i for i in status.instances if i.app == app]
    if instance is not None:
        mine = [i for i in mine if i.instance_id == instance]
        if not mine:
            raise UsageError(f"app {app!r} has no instance {instance!r}")
    if not mine:
        known = status.app(app) is not None
        raise MycoError(f"app {app!r} has no instances" if known else f"no app named {app!r}")
    apis = {n.name: n.api_url for n in status.nodes}
    out = []
    for i in mine:
        api = apis.get(i.node, "").rstrip("/")
        if not api:
            log.warning("instance %s: node %s has no API address; skipped", i.instance_id, i.node)
            continue
        out.append(LogSource(i.instance_id, i.node, f"{api}/v1/logs/{i.instance_id}"))
    if not out:
        raise UnavailableError(f"no node API reachable for the instances of {app!r}")
    return out


async def stream_logs(
    session: aiohttp.ClientSession,
    sources: list[LogSource],
    write: Callable[[str], None],
    *,
    follow: bool = False,
    since: float | None = None,
    tail: int | None = None,
) -> int:
    """Print every source's lines as ``[instance] line``; returns how many sources failed."""
    params = {"follow": "1" if follow else "0"}
    if since is not None:
        params["since"] = f"{since:g}"
    if tail is not None:
        params["tail"] = str(tail)
    failed = 0

    async def one(src: LogSource, sink: Callable[[str], None]) -> None:
        nonlocal failed
        try:
            async with session.get(src.url, params=params) as resp:
                if resp.status != 200:
                    raise UnavailableError(f"HTTP {resp.status}")
                buf = b""
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        sink(f"[{src.instance}] {line.decode('utf-8', 'replace')}")
                if buf:
                    sink(f"[{src.instance}] {buf.decode('utf-8', 'replace')}")
        except (aiohttp.ClientError, TimeoutError, UnavailableError) as exc:
            failed += 1
            log.warning("logs of %s on %s: %s", src.instance, src.node, exc or "timeout")

    if follow:
        async with asyncio.TaskGroup() as tg:
            for src in sources:
                tg.create_task(one(src, write))
        return failed
    blocks: list[list[str]] = [[] for _ in sources]
    async with asyncio.TaskGroup() as tg:
        for src, block in zip(sources, blocks, strict=True):
            tg.create_task(one(src, block.append))
    for block in blocks:
        for line in block:
            write(line)
    return failed
