"""A steady-rate HTTP load for end-to-end tests and benchmarks (loopback only).

``async with Load(url, rps=150) as load: ...`` sends GET requests at a fixed rate with a
bounded number in flight, and records every outcome: status, send and finish times, and
the JSON body's ``version`` and ``instance`` fields when the workload answers with them.

Every request is exactly one attempt on a connection of its own (``Connection: close``),
written with asyncio streams rather than an HTTP client library: a client library with a
connection pool retries an idempotent request on a dropped keep-alive connection without
saying so (aiohttp does, once), which would hide the very failures a test looks for. A
request has a deadline (``timeout_s``, connect to last byte); one still unfinished when the
load stops is recorded as failed, never dropped. Every failure has a kind
(:data:`FAILURE_KINDS`, :meth:`LoadResult.failures_by_kind`): its error text starts with it
(``"connect: ConnectionRefusedError: ..."``), or its status says it.

``connect`` (optional) makes each request's socket, e.g. one inside a network namespace
(:meth:`bench.netmesh.NetMesh.socket_factory`); it changes where the connection starts from,
nothing else: still one attempt, on a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

#: Why a request failed: no connection; no (complete) answer within its deadline; the
#: connection broke or the answer was not HTTP; an answer with a 5xx or another non-200
#: status; still running when the load stopped.
FAILURE_KINDS = ("connect", "timeout", "read", "status_5xx", "status_other", "unfinished")
_TRANSPORT_KINDS = frozenset({"connect", "timeout", "read", "unfinished"})

UNFINISHED = "unfinished: still running when the load stopped"


@dataclass
class Outcome:
    at: float  # monotonic time the request was sent
    status: int  # 0 for a connection error, a timeout or an unfinished request
    version: str = ""
    instance: str = ""
    error: str = ""  # for status 0: "<kind>: <what happened>"
    done: float = 0.0  # monotonic time the outcome was known

    @property
    def kind(self) -> str:
        """``""`` for a 200 answer, else one of :data:`FAILURE_KINDS` (``"other"`` if the
        error text names none, which this module never writes)."""
        if self.status == 200:
            return ""
        if self.status >= 500:
            return "status_5xx"
        if self.status:
            return "status_other"
        head = self.error.partition(":")[0]
        return head if head in _TRANSPORT_KINDS else "other"


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def failures_by_kind(self) -> dict[str, int]:
        """How many requests failed, by kind: every kind of :data:`FAILURE_KINDS`, zeros
        included, so a JSON report always has the same keys."""
        out = dict.fromkeys(FAILURE_KINDS, 0)
        for o in self.failed:
            out[o.kind] = out.get(o.kind, 0) + 1
        return out

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        """The outcomes of the requests sent in ``[start, end)``, in send order."""
        return sorted((o for o in self.outcomes if start <= o.at < end), key=lambda o: o.at)

    def versions_after(self, t: float) -> set[str]:
        return {o.version for o in self.outcomes if o.at >= t and o.status == 200}

    def first_time_all(self, version: str, since: float = 0.0) -> float | None:
        """The send time after which every successful answer came from ``version``."""
        last_other = None
        for o in self.outcomes:
            if o.at >= since and o.status == 200 and o.version != version:
                last_other = o.at
        seen = [o.at for o in self.outcomes if o.version == version and o.at >= since]
        if not seen:
            return None
        return max(last_other or seen[0], seen[0])


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http:// URL, got {url!r}")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.hostname, parts.port or 80, path)

    def request(self) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {host}:{self.port}\r\n"
            "User-Agent: myco-loadgen\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode("ascii")


class ConnectFailed(OSError):
    """No connection to the target (refused, unreachable...): nothing was sent."""


async def get_once(
    target: Target, connect: Callable[[], socket.socket] | None = None
) -> tuple[int, bytes]:
    """One GET on a new connection: (status, body). Raises on any transport error:
    :class:`ConnectFailed` when no connection was made, else what the exchange raised.

    ``connect`` makes the (unconnected TCP) socket; by default asyncio makes one."""
    try:
        if connect is None:
            reader, writer = await asyncio.open_connection(target.host, target.port)
        else:
            sock = connect()
            try:
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (target.host, target.port))
            except BaseException:
                sock.close()
                raise
            reader, writer = await asyncio.open_connection(sock=sock)
    except OSError as exc:
        raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
    try:
        writer.write(target.request())
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.x response: (status, body) by Content-Length, chunks, or until close."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.read()  # until the server closes (Connection: close)
    return int(rest[:3]), body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers expected
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)


class Load:
    def __init__(
        self,
        url: str,
        rps: float = 100.0,
        max_in_flight: int = 64,
        timeout_s: float = 10.0,
        connect: Callable[[], socket.socket] | None = None,
    ):
        self.url = url
        self.connect = connect
        self.target = Target.parse(url)
        self.rps = rps
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.result = LoadResult()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self) -> LoadResult:
        """Stop sending; wait for the requests in flight (each has its own deadline)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.result

    async def _run(self) -> None:
        sem = asyncio.Semaphore(self.max_in_flight)
        pending: set[asyncio.Task[None]] = set()
        interval = 1.0 / self.rps
        next_at = time.monotonic()
        try:
            while True:
                await sem.acquire()
                task = asyncio.create_task(self._one(sem))
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            # Requests in flight finish (or time out) so every outcome is counted; one
            # still running after its deadline is cancelled and recorded as failed.
            if pending:
                await asyncio.wait(pending, timeout=self.timeout_s + 1.0)
            for task in list(pending):
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _one(self, sem: asyncio.Semaphore) -> None:
        out = Outcome(at=time.monotonic(), status=0)
        try:
            async with asyncio.timeout(self.timeout_s):
                status, body = await get_once(self.target, self.connect)
            out.status = status
            if status == 200:
                with contextlib.suppress(ValueError):
                    data = json.loads(body)
                    if isinstance(data, dict):
                        out.version = str(data.get("version", ""))
                        out.instance = str(data.get("instance", ""))
            else:
                out.error = body[:200].decode("utf-8", "replace")
        except asyncio.CancelledError:
            out.status, out.error = 0, UNFINISHED
            raise
        except TimeoutError:
            out.status, out.error = 0, f"timeout: no answer within {self.timeout_s:g}s"
        except ConnectFailed as exc:
            out.status, out.error = 0, f"connect: {exc}"
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            out.status, out.error = 0, f"read: {type(exc).__name__}: {exc}"
        finally:
            out.done = time.monotonic()
            sem.release()
            self.result.outcomes.append(out)
