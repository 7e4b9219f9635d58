"""Slow-client measurements for the edge's ``hardening`` figures (loopback only, bounded).

``slow_heads(host, port, n)`` opens ``n`` connections that each send half a request head
and then one more header line every ``trickle_s`` (so a per-read timeout never fires;
only a timeout on the whole head does), and returns once the server closed all of them,
or at ``within`` seconds: how long that took and how many got a ``408``.
``served_p99_during(url, work)`` runs a normal client (one keep-alive connection, one
``GET`` at a time, one attempt each: no hidden retry on a dropped connection) while
``work`` runs and returns its latencies and its failures by kind::

    slow, served = await served_p99_during(url, slow_heads("127.0.0.1", port, 1000))
    hardening = {"slow_heads_closed_s": slow.closed_s, "served_p99_ms_during": served.p99_ms}

The process needs about ``n`` more file descriptors (``resource.setrlimit``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp

from bench.loadgen import FAILURE_KINDS
from reconciler.httpclient import one_attempt_session

T = TypeVar("T")

_PARTIAL_HEAD = b"GET / HTTP/1.1\r\nHost: slowloris\r\nUser-Agent: bench/slowloris\r\n"


@dataclass(frozen=True)
class SlowHeads:
    opened: int  # connections the server accepted (a connect that failed is not counted)
    closed: int  # of those, closed by the server before ``within``
    answered_408: int  # closed with a 408 answer first
    opened_s: float  # from the first connect to the last
    closed_s: float  # from the first connect until the server had closed them all
    timed_out: bool  # ``within`` passed with connections still open


@dataclass(frozen=True)
class Served:
    requests: int
    failures: int  # errors or answers other than 2xx/404
    p50_ms: float
    p99_ms: float
    max_ms: float
    failures_by_kind: dict[str, int] = field(default_factory=dict)  # FAILURE_KINDS


def _failure_kind(exc: BaseException) -> str:
    """A client error as one of :data:`bench.loadgen.FAILURE_KINDS`."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, TimeoutError):  # aiohttp's socket and total timeouts included
        return "timeout"
    return "read"  # connected, then the connection broke or the answer was not HTTP


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"slowloris: refusing a non-loopback host {host!r}")


async def slow_heads(
    host: str,
    port: int,
    n: int,
    *,
    trickle_s: float = 0.5,
    within: float = 120.0,
    connect_concurrency: int = 100,
) -> SlowHeads:
    """Open ``n`` slow partial-head connections; return once the server closed them all."""
    _require_loopback(host)
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + within
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.Task[bool]] = []
    gate = asyncio.Semaphore(connect_concurrency)
    last_open = start

    async def watch(r: asyncio.StreamReader) -> bool:
        """Until the server closes: whether it answered 408 first."""
        got = b""
        try:
            while chunk := await r.read(4096):
                got += chunk[: max(0, 64 - len(got))]
        except OSError:
            pass  # a reset counts as closed
        return got.startswith(b"HTTP/1.1 408") or got.startswith(b"HTTP/1.0 408")

    async def open_one() -> None:
        nonlocal last_open
        async with gate:
            try:
                r, w = await asyncio.open_connection(host, port)
            except OSError:
                return
        w.write(_PARTIAL_HEAD)
        writers.append(w)
        readers.append(loop.create_task(watch(r)))
        last_open = loop.time()

    async def trickle() -> None:
        i = 0
        while True:
            await asyncio.sleep(trickle_s)
            i += 1
            line = b"X-Slow-%d: %d\r\n" % (i, i)
            for w in writers:
                if not w.is_closing():
                    try:
                        w.write(line)
                    except OSError:
                        pass

    trickler = loop.create_task(trickle())
    timed_out = False
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.gather(*(open_one() for _ in range(n)))
        if readers:
            done, pending = await asyncio.wait(readers, timeout=max(0.0, deadline - loop.time()))
            timed_out = bool(pending)
    except TimeoutError:
        timed_out = True
    finally:
        closed_at = loop.time()
        trickler.cancel()
        for t in readers:
            t.cancel()
        results = await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(trickler, return_exceptions=True)
        for w in writers:
            w.close()
    closed = [r for r in results if isinstance(r, bool)]
    return SlowHeads(
        opened=len(writers),
        closed=len(closed),
        answered_408=sum(closed),
        opened_s=round(last_open - start, 3),
        closed_s=round(closed_at - start, 3),
        timed_out=timed_out,
    )


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, max(0, math.ceil(q * len(sorted_ms)) - 1))]


async def served_p99_during(
    url: str,
    work: Awaitable[T],
    *,
    interval_s: float = 0.01,
    request_timeout_s: float = 10.0,
) -> tuple[T, Served]:
    """Run ``work``; meanwhile ``GET url`` one at a time and time each answer."""
    _require_loopback(urlsplit(url).hostname or "")
    latencies: list[float] = []
    kinds = dict.fromkeys(FAILURE_KINDS, 0)
    stop = asyncio.Event()

    async def client() -> None:
        timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        connector = aiohttp.TCPConnector(limit=1)
        async with one_attempt_session(connector=connector, timeout=timeout) as session:
            while not stop.is_set():  # a request under way when ``work`` ends is finished
                t0 = time.perf_counter()
                kind = ""
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        if not (resp.status < 300 or resp.status == 404):
                            kind = "status_5xx" if resp.status >= 500 else "status_other"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    kind = _failure_kind(exc)
                latencies.append((time.perf_counter() - t0) * 1000)
                if kind:
                    kinds[kind] += 1
                try:
                    await asyncio.wait_for(stop.wait(), interval_s)
                except TimeoutError:
                    pass

    task = asyncio.create_task(client())
    try:
        result = await work
    finally:
        stop.set()
        await task
    ms = sorted(latencies)
    served = Served(
        requests=len(ms),
        failures=sum(kinds.values()),
        p50_ms=round(_percentile(ms, 0.5), 3),
        p99_ms=round(_percentile(ms, 0.99), 3),
        max_ms=round(ms[-1], 3) if ms else 0.0,
        failures_by_kind=kinds,
    )
    return result, served
