"""A lean HTTP/1.1 upstream client for the proxy's hot path (GET without a body).

aiohttp's ``ClientSession`` costs ~80 µs of Python per request (request and response
objects, tracing hooks, timers, cookie and redirect logic) that a proxy does not use;
measured, it capped the edge at a fifth of nginx. For the common case, a ``GET`` without
a body, the edge writes the request head itself on a pooled keep-alive connection and
parses the answer with ``httptools`` (llhttp, the parser of Node.js and uvicorn).
Everything else (bodies, ``HEAD``, upgrades) still goes through aiohttp.
:class:`LeanUpstream` is this client as an :class:`~.seam.Upstream`.

Response bodies are streamed with flow control: the protocol pauses reading from the
backend when more than ``_HIGH_WATER`` bytes wait for the client, so memory is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import httptools  # type: ignore[import-not-found,unused-ignore]  # optional: see docs/edge.md

from reconciler.edge.config import EdgeConfig, PoolLimits, Timeouts
from reconciler.edge.downstream import Downstream, json_error
from reconciler.edge.headers import downstream_from_raw, request_head
from reconciler.edge.routing import BackendState
from reconciler.edge.seam import (
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamTimeoutError,
)

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend; one exchange at a time."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self._loop = asyncio.get_running_loop()  # once: each call is a getpid() syscall
        self._reset()
        self.listener: Callable[[], None] | None = None  # the inline path's (see start())

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self._headers_done: asyncio.Future[None] | None = None
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._received_any = False
        self._error: BaseException | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._paused = False
        self._length_known = False

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBrokenError(f"bad response from backend: {exc}", True))
            self._abort()
            return
        if self.status and self.listener is not None:  # after the parser, not inside it
            self._notify()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._complete:
            return
        if self.status and not self._length_known:
            # no Content-Length, not chunked: the body ends with the connection
            self._complete = True
            self.keep_alive = False
            self._wake()
            return
        self._fail(
            UpstreamBrokenError(
                f"backend closed the connection{': ' + str(exc) if exc else ''}",
                self._received_any,
            )
        )

    def pause_writing(self) -> None:  # a GET head never fills the buffer
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lname = name.lower()
        if lname == b"content-length" or (
            lname == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._length_known = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self.headers = []
            self._length_known = False
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        if status in (204, 304):
            self._length_known = True
        if self._headers_done is not None and not self._headers_done.done():
            self._headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of an interim (1xx) message
        self._complete = True
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()
        self._wake()

    # -- the exchange -----------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        if self._headers_done is not None and not self._headers_done.done():
            self._headers_done.set_exception(exc)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_exception(exc)
        if self.listener is not None:
            self._notify()

    def _notify(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener()

    def start(
        self,
        head: bytes,
        read_timeout: float,
        listener: Callable[[], None],
        batch: WriteBatch | None = None,
    ) -> asyncio.TimerHandle:
        """The inline path's :meth:`send`: write the head, no future, no coroutine.

        ``listener`` is called once, from the loop: when the answer's head arrived (after
        the whole chunk that brought it was parsed, so a small answer is complete by then)
        or when the exchange failed (:attr:`error`). The caller cancels the returned timer
        (the read timeout) when it is called.
        """
        assert self.transport is not None
        self._reset()
        self.listener = listener
        if batch is None:
            self.transport.write(head)
        else:
            batch.write(self.transport, head)
        return self._loop.call_later(read_timeout, self._late)

    def _late(self) -> None:
        if self.listener is not None:
            self._fail(UpstreamTimeoutError("backend sent no answer in time"))
            self._abort()

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def complete(self) -> bool:
        return self._complete

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def send(self, head: bytes, read_timeout: float) -> None:
        """Write a request head; return once the response's status and headers arrived."""
        assert self.transport is not None
        self._reset()
        loop = asyncio.get_running_loop()
        done = self._headers_done = loop.create_future()
        self.transport.write(head)
        # a bare timer, cheaper than asyncio.timeout() on this per-request path
        timer = loop.call_later(read_timeout, self._no_answer, done)
        try:
            await done
        finally:
            timer.cancel()

    def _no_answer(self, done: asyncio.Future[None]) -> None:
        if not done.done():
            done.set_exception(UpstreamTimeoutError("backend sent no answer in time"))
            self._abort()

    async def body(self, read_timeout: float, deadline: float = 0.0) -> AsyncIterator[bytes]:
        """The response body, chunk by chunk, with flow control toward the backend.

        Each wait is bounded by ``read_timeout``, and all of them by ``deadline`` (loop
        time; 0 for none): a backend that trickles its answer ends at the deadline.
        """
        loop = asyncio.get_running_loop()
        while True:
            while self._body:
                chunk = self._body.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                yield chunk
            if self._complete:
                return
            if self._error is not None:
                raise self._error
            self._wakeup = loop.create_future()
            when = loop.time() + read_timeout
            if deadline and deadline < when:
                when = deadline
            try:
                async with asyncio.timeout_at(when):
                    await self._wakeup
            except TimeoutError:
                self._abort()
                if when == deadline:
                    raise UpstreamTimeoutError("backend exceeded the total timeout") from None
                raise UpstreamTimeoutError("backend stopped sending") from None
            finally:
                self._wakeup = None

    def take_complete_body(self) -> bytes | None:
        """The whole body if it has already arrived (the common small answer), else None."""
        if not self._complete:
            return None
        data = b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        return data

    @property
    def reusable(self) -> bool:
        return self._complete and self.keep_alive and not self.closed and not self._body

    def close(self) -> None:
        self._abort()


class WriteBatch:
    """Writes held until the loop has run the callbacks of its current batch of events.

    On loopback (and in VMs above all) most of the cost of a small ``write`` is waking the
    reader up; the heads of the requests that arrived together, written together, wake
    the backend once rather than once each. A write to a transport closed meanwhile is
    dropped (the exchange failed anyway).
    """

    __slots__ = ("_loop", "_pending")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[asyncio.Transport, bytes]] = []

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        pending = self._pending
        if not pending:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush)
        pending.append((transport, data))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for transport, data in pending:
            if not transport.is_closing():
                transport.write(data)


class UpstreamPool:
    """Idle keep-alive connections per backend, newest first, expired after ``keepalive_s``."""

    def __init__(self, limits: PoolLimits, timeouts: Timeouts) -> None:
        self.limits = limits
        self.timeouts = timeouts
        self._idle: dict[tuple[str, int], list[UpstreamConnection]] = {}
        self._idle_count = 0
        self.batch = WriteBatch()  # the inline path's request heads

    async def acquire(self, host: str, port: int) -> UpstreamConnection:
        conn = self.take_idle(host, port)
        if conn is not None:
            return conn
        return await self.connect(host, port)

    def take_idle(self, host: str, port: int) -> UpstreamConnection | None:
        """A pooled connection still fresh enough, or None (no waiting)."""
        idle = self._idle.get((host, port))
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if not conn.closed and now - conn.idle_since < self.limits.keepalive_s:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def connect(self, host: str, port: int) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeouts.connect):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection((host, port)), host, port
                )
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if not conn.reusable or self._idle_count >= self.limits.limit:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)
        self._idle_count += 1

    def sweep(self) -> int:
        """Close idle connections older than the keep-alive time; how many were closed."""
        now = time.monotonic()
        closed = 0
        for key, conns in list(self._idle.items()):
            keep = [
                c for c in conns if not c.closed and now - c.idle_since < self.limits.keepalive_s
            ]
            for c in conns:
                if c not in keep:
                    c.close()
                    closed += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        self._idle_count -= closed
        return closed

    def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
        self._idle_count = 0


class LeanUpstream:
    """:class:`~.seam.Upstream` for a ``GET`` without a body, over :class:`UpstreamPool`."""

    __slots__ = ("config", "pool")

    def __init__(self, config: EdgeConfig, pool: UpstreamPool) -> None:
        self.config = config
        self.pool = pool

    @staticmethod
    def head(backend: BackendState, request: UpstreamRequest) -> bytes:
        """The request head for ``backend`` (``Host`` is the backend's address)."""
        return request_head("GET", request.target, backend.hostport, request.headers)

    async def send(self, backend: BackendState, request: UpstreamRequest) -> LeanResponse:
        """Send the head; a pooled connection the backend had closed is replaced once."""
        head = request_head("GET", request.target, backend.hostport, request.headers)
        read = self.config.timeouts.read
        pool = self.pool
        conn = await pool.acquire(backend.host, backend.port)
        try:
            await conn.send(head, read)
            return LeanResponse(self, conn, request.rid)
        except UpstreamBrokenError as exc:
            conn.close()
            if not conn.reused or exc.response_started:
                raise
        except BaseException:
            conn.close()
            raise
        conn = await pool.connect(backend.host, backend.port)
        try:
            await conn.send(head, read)
        except BaseException:
            conn.close()
            raise
        return LeanResponse(self, conn, request.rid)


class LeanResponse:
    """An answer on a pooled connection; :meth:`close` gives the connection back."""

    __slots__ = ("conn", "rid", "status", "upstream")

    def __init__(self, upstream: LeanUpstream, conn: UpstreamConnection, rid: str) -> None:
        self.upstream = upstream
        self.conn = conn
        self.rid = rid
        self.status = conn.status

    async def relay(self, down: Downstream) -> None:
        conn = self.conn
        config = self.upstream.config
        headers = downstream_from_raw(conn.headers, rid=self.rid)
        read = config.timeouts.read
        length_s = headers.get("Content-Length")
        length = int(length_s) if length_s is not None and length_s.isdigit() else None
        if conn.status in _NO_BODY_STATUS or (
            length is not None and length <= config.small_body_bytes
        ):
            body = conn.take_complete_body()
            if body is None:
                try:
                    parts = [chunk async for chunk in conn.body(read, _deadline(config))]
                except UpstreamTimeoutError:  # nothing was sent to the client yet
                    await json_error(504, "backend timed out").send(down)
                    return
                body = b"".join(parts)
            await down.respond(conn.status, None, headers, body)
            return
        await down.start(conn.status, None, headers)
        async for chunk in conn.body(read, _deadline(config)):
            await down.write(chunk)
        await down.end()

    def close(self) -> None:
        self.upstream.pool.release(self.conn)  # kept only when complete and reusable


def _deadline(config: EdgeConfig) -> float:
    """The loop time by which a body must have arrived (``Timeouts.total``; 0: none).

    Counted from when the body is first awaited, not from the request: the head before it
    is bounded by the read timeout, and the hot path (a small answer complete with its
    head) never reads the clock for it.
    """
    total = config.timeouts.total
    return asyncio.get_running_loop().time() + total if total else 0.0
