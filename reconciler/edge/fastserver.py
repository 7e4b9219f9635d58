"""The edge's fast front end: HTTP/1.1 in an ``asyncio.Protocol`` with httptools' parser.

aiohttp's server spends most of the edge's CPU time per request on objects a proxy does
not need (request and response objects, a payload stream, timers). This front end, built
the way uvicorn's ``httptools`` protocol is, parses requests with llhttp (via httptools)
and hands each one to :meth:`EdgeProxy.serve` as a :class:`_Request` (a
:class:`~.downstream.Downstream`). What it handles:

- keep-alive (idle connections closed after ``ClientLimits.keepalive_s``) and
  pipelining: requests
  parsed while one is being answered wait in order, and reading pauses meanwhile;
- request bodies (``Content-Length`` or chunked, decoded by llhttp) streamed to the core
  with flow control: reading pauses above ``_HIGH_WATER`` bytes buffered;
  ``Expect: 100-continue`` is answered when the core first reads the body;
- response framing: the backend's length kept, else chunked (HTTP/1.1 clients) or ended
  by closing (HTTP/1.0); no body for ``HEAD``, 204 and 304; writes wait while the
  transport's buffer is full (``pause_writing``);
- ``Connection: close``, HTTP/1.0 keep-alive, a body the core did not read (the
  connection is closed after the answer), a client that goes away
  (``ConnectionResetError`` to the core: counted as 499);
- upgrades: after a ``101`` the connection becomes a raw byte tunnel (:meth:`switch`);
- limits: a head larger than ``max_head_bytes`` or with more than ``max_headers`` fields
  is answered ``431``; a malformed request ``400``; both close the connection;
- slow clients (:class:`~.config.ClientLimits`): a head not complete within
  ``header_s`` is answered ``408`` and the connection closed (a fresh connection that
  sent nothing is just closed), a body with no byte for ``body_s`` closes the
  connection; one sweep per server checks every connection's deadlines (nginx's timer
  tree, coarse), so the request path sets no timer; at ``max_connections`` open
  connections the server stops accepting (:class:`~.listener.Listener`);
- graceful shutdown (:meth:`FastServer.shutdown`): stop listening, close idle
  connections, let requests in flight finish (their answer says ``Connection: close``)
  up to a grace time, then abort what is left.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import socket
from dataclasses import dataclass
from typing import cast

import httptools  # type: ignore[import-not-found,unused-ignore]  # see docs/edge.md
from multidict import CIMultiDict

from reconciler.edge.config import ClientLimits
from reconciler.edge.downstream import Headers, TunnelEnd, json_error
from reconciler.edge.listener import Listener, Slot
from reconciler.edge.proxy import EdgeProxy
from reconciler.edge.upstream import WriteBatch

log = logging.getLogger("myco.edge")

_HIGH_WATER = 256 * 1024  # request body bytes buffered before reading pauses
_LOW_WATER = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_S = 2.0


@dataclass(frozen=True)
class ServerLimits:
    """Limits of the fast front end (nginx: 4 × 8 KiB header buffers; aiohttp: 8 KiB lines)."""

    max_head_bytes: int = 32 * 1024  # request line and header fields together
    max_headers: int = 100


class _HeadTooLargeError(Exception):
    pass


class _Request:
    """One request on a connection: the :class:`Downstream` the proxy core works with."""

    __slots__ = (
        "_waiter",
        "broken",
        "buffered",
        "chunked",
        "chunks",
        "complete",
        "conn",
        "continue_sent",
        "done",
        "expect_continue",
        "has_body",
        "headers",
        "http10",
        "keep_alive",
        "method",
        "query",
        "raw_path",
        "remote",
        "scheme",
        "started",
    )

    def __init__(
        self,
        conn: HttpConnection,
        method: str,
        raw_path: str,
        query: str,
        headers: CIMultiDict[str],
        *,
        keep_alive: bool,
        http10: bool,
        has_body: bool,
    ) -> None:
        self.conn = conn
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.headers: Headers = headers
        self.remote = conn.remote
        self.scheme = "http"
        self.has_body = has_body
        self.keep_alive = keep_alive
        self.http10 = http10
        self.expect_continue = has_body and headers.get("Expect", "").lower() == "100-continue"
        self.continue_sent = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False  # the whole request (body included) was parsed
        self.broken = False  # its body turned out malformed
        self._waiter: asyncio.Future[None] | None = None
        self.started = False  # the response head was sent
        self.chunked = False
        self.done = False  # the response was sent completely

    # -- the request body -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        self.wake()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def body(self) -> collections.abc.AsyncIterator[bytes]:
        conn = self.conn
        if self.expect_continue and not self.continue_sent and not self.complete:
            self.continue_sent = True
            conn.write(_CONTINUE)
        while True:
            while self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                conn.update_reading()
                yield chunk
            if self.complete:
                return
            if self.broken:
                raise ConnectionResetError("the client sent a malformed body")
            if conn.lost:
                raise ConnectionResetError("the client went away")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    # -- the response -----------------------------------------------------------------

    def _head(
        self,
        status: int,
        reason: str | None,
        headers: Headers,
        extra: str,
        *,
        skip_length: bool = False,
    ) -> bytes:
        if not self.conn.keeping_alive(self):
            self.keep_alive = False
        parts = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Unknown')}\r\n"]
        if skip_length:  # the caller frames the body itself
            parts.extend(
                f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length"
            )
        else:
            parts.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        parts.append(extra)
        if not self.keep_alive:
            parts.append("Connection: close\r\n")
        elif self.http10:
            parts.append("Connection: keep-alive\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1", "replace")

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        self.respond_now(status, reason, headers, body, hold=False)
        await self.conn.drain()

    def respond_now(
        self, status: int, reason: str | None, headers: Headers, body: bytes, hold: bool = True
    ) -> bool:
        """:meth:`respond` without the wait; False when writes must wait (the inline path).

        ``hold``: when the connection stays open and idle after this answer, the write
        joins the server's :class:`WriteBatch` (flushed once the loop has handled its
        current batch of events: one wake-up of the client for many answers).
        """
        extra = "" if status in _NO_BODY_STATUS else f"Content-Length: {len(body)}\r\n"
        self._check_open()
        head = self._head(status, reason, headers, extra, skip_length=True)
        self.started = True
        data = head if self.method == "HEAD" or status in _NO_BODY_STATUS else head + body
        conn = self.conn
        transport = conn.transport
        if (
            hold
            and self.keep_alive
            and transport is not None
            and not conn.queue
            and conn._pending_error is None
        ):
            conn.server.batch.write(transport, data)
        else:
            conn.write(data)
        self.done = True
        return not conn.write_paused

    @property
    def gone(self) -> bool:
        return self.conn.lost or self.broken

    def finish_inline(self, rest: collections.abc.Coroutine[object, object, object] | None) -> None:
        """:meth:`EdgeProxy.serve_inline` is done with it: finish, or run ``rest``."""
        if rest is None:
            self.conn._finished(self)
        else:
            self.conn.server.spawn(self.conn._run(self, rest))

    async def start(self, status: int, reason: str | None, headers: Headers) -> None:
        extra = ""
        if not (self.method == "HEAD" or status in _NO_BODY_STATUS) and (
            "Content-Length" not in headers
        ):
            if self.http10:
                self.keep_alive = False  # the end of the body is the end of the connection
            else:
                self.chunked = True
                extra = "Transfer-Encoding: chunked\r\n"
        self._check_open()
        self.conn.write(self._head(status, reason, headers, extra))
        self.started = True

    async def write(self, chunk: bytes) -> None:
        self._check_open()
        if self.chunked:
            if not chunk:
                return
            self.conn.transport_writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self.conn.write(chunk)
        await self.conn.drain()

    async def end(self) -> None:
        self._check_open()
        if self.chunked:
            self.conn.write(b"0\r\n\r\n")
        self.done = True
        await self.conn.drain()

    def _check_open(self) -> None:
        if self.conn.lost or self.broken:
            raise ConnectionResetError("the client went away")

    async def switch(self, headers: Headers) -> TunnelEnd:
        """Send the ``101`` and turn the connection into a byte tunnel."""
        self._check_open()
        self.keep_alive = False
        parts = ["HTTP/1.1 101 Switching Protocols\r\n"]
        parts.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        parts.append("\r\n")
        self.conn.write("".join(parts).encode("latin-1", "replace"))
        self.started = self.done = True
        return self.conn.start_tunnel()


class _Tunnel:
    """The client's side of an upgraded connection, with flow control both ways."""

    def __init__(self, conn: HttpConnection, early: bytes) -> None:
        self.conn = conn
        self.chunks: collections.deque[bytes] = collections.deque([early] if early else [])
        self.buffered = len(early)
        self.eof = False
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        self.wake()

    def feed_eof(self) -> None:
        self.eof = True
        self.wake()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        while not self.chunks:
            if self.eof or self.conn.lost:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        self.conn.update_reading()
        return data

    async def write(self, data: bytes) -> None:
        if self.conn.lost:
            raise ConnectionResetError("the client went away")
        self.conn.write(data)
        await self.conn.drain()

    def write_eof(self) -> None:
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, queue, hand requests to the proxy one at a time."""

    def __init__(self, server: FastServer, slot: Slot | None = None) -> None:
        self.server = server
        self.slot = slot
        self.limits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.lost = False
        self.closing = False  # close once the request being answered is done
        self.active: _Request | None = None
        self.parsing: _Request | None = None
        self.queue: collections.deque[_Request] = collections.deque()
        self.tunnel: _Tunnel | None = None
        self._upgrade_buffer: list[bytes] | None = None  # bytes after an upgrade head
        self._pending_error: tuple[int, str] | None = None
        self._discarding = False  # an error was answered: drop input until the client closes
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_size = 0
        self._head_raw = 0
        self._too_large = False
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        # deadlines, checked by FastServer's sweep (see check())
        self._fresh = True  # no request begun yet: the first head is due from the connect
        self._head_start = 0.0  # 0: a head began, the sweep stamps the time it saw it
        self._idle_since = 0.0
        self._got = False  # bytes arrived since the last sweep
        self._last_rx = 0.0
        self._loop = asyncio.get_running_loop()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.server.connections.add(self)
        self._head_start = self._idle_since = self._last_rx = self._loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        if self.slot is not None:
            self.slot.release()
        if self._linger is not None:
            self._linger.cancel()
        for req in (self.active, self.parsing):
            if req is not None:
                req.wake()
        if self.tunnel is not None:
            self.tunnel.feed_eof()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client went away"))

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            self.tunnel.feed_eof()
            return True  # keep the transport open: the other direction may still flow
        if self.active is not None:
            self.closing = True  # answer what was asked; the transport closes after it
            return True
        return None

    def data_received(self, data: bytes) -> None:
        self._got = True
        if self._discarding:
            return
        if self.tunnel is not None:
            self.tunnel.feed(data)
            self.update_reading()
            return
        if self._upgrade_buffer is not None:  # an upgrade head was parsed; not switched yet
            self._upgrade_buffer.append(data)
            return
        if self._pending_error is not None:
            return
        if self._in_head:
            self._head_raw += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_buffer = [data[int(exc.args[0]) :]]
            self._pause_reading()
        except httptools.HttpParserCallbackError:
            if self._too_large:
                self._fail(431, "request header fields too large")
            else:
                log.exception("edge: parsing a request failed")
                self._fail(500, "internal error")
        except httptools.HttpParserError as exc:
            self._fail(400, f"bad request: {exc}")
        else:
            if self._in_head and self._head_raw > self.limits.max_head_bytes:
                self._fail(431, "request header fields too large")

    @property
    def write_paused(self) -> bool:
        """The client is not reading fast enough: writes wait (for tests and stats)."""
        return self._write_paused

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._in_head = True
        self._head_size = 0
        self._head_raw = 0
        if self._fresh:
            self._fresh = False  # the first head's time runs from the connect
        else:
            self._head_start = 0.0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._grow_head(len(name) + len(value) + 4)
        if len(self._headers) > self.limits.max_headers:
            self._too_large = True
            raise _HeadTooLargeError

    def _grow_head(self, n: int) -> None:
        self._head_size += n
        if self._head_size > self.limits.max_head_bytes:
            self._too_large = True
            raise _HeadTooLargeError

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        headers: CIMultiDict[str] = CIMultiDict(
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._headers]
        )
        url = self._url
        if url[:1] != b"/" and b"://" in url[:10]:  # absolute form: keep path and query
            parsed = httptools.parse_url(url)
            url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
        path, _, query = url.partition(b"?")
        length = headers.get("Content-Length")
        has_body = "Transfer-Encoding" in headers or (length is not None and length != "0")
        req = _Request(
            self,
            parser.get_method().decode("ascii"),
            path.decode("utf-8", "surrogateescape"),
            query.decode("utf-8", "surrogateescape"),
            headers,
            # after an upgrade request the parser does not go on: close after the answer
            keep_alive=parser.should_keep_alive() and not parser.should_upgrade(),
            http10=parser.get_http_version() == "1.0",
            has_body=has_body,
        )
        self.parsing = req
        if self.active is None:
            self._start(req)
        else:
            self.queue.append(req)
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        if req is not None:
            req.feed(body)
            if req.buffered > _HIGH_WATER:
                self.update_reading()

    def on_message_complete(self) -> None:
        req = self.parsing
        if req is not None:
            req.complete = True
            req.wake()

    # -- requests ---------------------------------------------------------------------

    def _start(self, req: _Request) -> None:
        self.active = req
        if not self.server.proxy.serve_inline(req):  # the hot path: no task (proxy.py)
            self.server.spawn(self._run(req, self.server.proxy.serve(req)))

    async def _run(
        self, req: _Request, serving: collections.abc.Coroutine[object, object, object]
    ) -> None:
        try:
            await serving
        except ConnectionResetError:
            pass  # counted as 499 by the core
        except Exception as exc:
            if req.started or self.lost:
                log.debug("edge: answer cut short: %s", exc)
                req.done = False  # the client must see it incomplete: abort below
            else:
                log.exception("edge: request failed")
                req.keep_alive = False
                try:
                    await json_error(500, "internal error").send(req)
                except ConnectionResetError:
                    pass
        finally:
            self._finished(req)

    def _finished(self, req: _Request) -> None:
        self.active = None
        transport = self.transport
        if transport is None or self.lost:
            return
        if self._pending_error is not None and (req.done or not req.started):
            self._send_error(*self._pending_error)
            return
        if not req.done:
            transport.abort()
            return
        if not (self.keeping_alive(req) and req.complete):
            transport.close()  # also when the body was not read: the parser is mid-message
            return
        if self.queue:
            self._start(self.queue.popleft())
        else:
            self._idle_since = self._loop.time()
        self.update_reading()

    def keeping_alive(self, req: _Request) -> bool:
        """Whether the connection can carry another request after ``req``'s answer."""
        return req.keep_alive and not self.closing

    def _fail(self, status: int, message: str) -> None:
        """A request that cannot be parsed: answer after the one in flight, then close.

        When the malformed part is the body of the request being answered, that request
        is broken: its body and its answer fail, and the client gets the error instead.
        """
        self._pause_reading()
        req = self.active
        if req is not None and req is self.parsing and not req.complete:
            req.broken = True
            req.wake()
        if req is not None:
            self._pending_error = (status, message)
        else:
            self._send_error(status, message)

    def _send_error(self, status: int, message: str) -> None:
        """Answer and close, lingering: what the client still sends is read and dropped
        until it closes (or ``_LINGER_S``), so its unread bytes do not make the kernel
        reset the connection before the client has read the answer (as nginx does)."""
        transport = self.transport
        assert transport is not None
        body = message.encode("utf-8", "replace")
        transport.write(
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._discarding = True
        self._pending_error = None
        self._resume_reading()
        self._linger = self._loop.call_later(_LINGER_S, transport.close)

    # -- flow control -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def transport_writelines(self, parts: tuple[bytes, ...]) -> None:
        assert self.transport is not None
        self.transport.writelines(parts)

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("the client went away")
        if not self._write_paused:
            return
        self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    def update_reading(self) -> None:
        """Pause reading while requests wait in line or a body buffer is full."""
        if self.tunnel is not None:
            buffered = self.tunnel.buffered
        else:
            buffered = self.parsing.buffered if self.parsing is not None else 0
            if self.queue or self._pending_error is not None:
                self._pause_reading()
                return
        if buffered > _HIGH_WATER:
            self._pause_reading()
        elif buffered < _LOW_WATER and self._upgrade_buffer is None:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.lost:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.lost:
            self._read_paused = False
            self.transport.resume_reading()

    def start_tunnel(self) -> _Tunnel:
        early = b"".join(self._upgrade_buffer or ())
        self._upgrade_buffer = None
        self.tunnel = _Tunnel(self, early)
        if self._in_head:  # not expected: the upgrade head was complete
            self._in_head = False
        self.update_reading()
        return self.tunnel

    # -- idle and shutdown ------------------------------------------------------------

    def check(self, now: float, limits: ClientLimits) -> None:
        """The sweep's visit: close a connection past its head, body or keep-alive time."""
        transport = self.transport
        if self.lost or self._discarding or self.tunnel is not None or transport is None:
            return  # a tunnel watches its own idle time (tunnel.py); lingering closes itself
        if self._got:
            self._got = False
            self._last_rx = now
        if self._in_head or self._fresh:
            if self.active is not None or self._head_start == 0.0:
                self._head_start = now  # a head behind an answer in flight waits for it
            elif now - self._head_start >= limits.header_s:
                if self._fresh:  # not a byte: nothing to answer (nginx just closes too)
                    transport.close()
                else:
                    log.debug("edge: request head not complete in %.0fs: 408", limits.header_s)
                    self._fail(408, "request timeout: the request head took too long")
            return
        if self.active is None and not self.queue:
            if now - self._idle_since >= limits.keepalive_s:
                transport.close()
            return
        req = self.parsing
        if req is not None and req.has_body and not req.complete and not req.broken:
            if self._read_paused:
                self._last_rx = now  # the edge holds the body back, not the client
            elif now - self._last_rx >= limits.body_s:
                log.debug("edge: no request body byte in %.0fs: closing", limits.body_s)
                transport.abort()

    def shutdown(self) -> None:
        """Close now if idle; else close after the answer in flight."""
        self.closing = True
        if self.active is None and self.transport is not None:
            self.transport.close()


class FastServer:
    """The listening side: the connections, and the request tasks it owns and awaits."""

    def __init__(
        self,
        proxy: EdgeProxy,
        limits: ServerLimits | None = None,
        client: ClientLimits | None = None,
    ) -> None:
        self.proxy = proxy
        self.batch = WriteBatch()  # small answers written together (see respond_now)
        self.limits = limits or ServerLimits()
        self.client = client or ClientLimits()
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.listener: Listener | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        c = self.client
        #: how often deadlines are checked: a quarter of the shortest, at most 0.25 s;
        # a deadline fires at most two sweeps late (the sweep stamps when a head began)
        self.sweep_s = max(0.05, min(0.25, min(c.header_s, c.body_s, c.keepalive_s) / 4))

    def spawn(self, coro: collections.abc.Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def start(self, sock: socket.socket) -> None:
        """Serve ``sock`` (the server closes it when it stops)."""
        self.listener = Listener(
            sock, lambda slot: HttpConnection(self, slot), self.client.max_connections
        )
        self.listener.start()
        self._sweeper = asyncio.get_running_loop().call_later(self.sweep_s, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections):
            conn.check(now, self.client)
        self._sweeper = loop.call_later(self.sweep_s, self._sweep)

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting, let requests in flight finish within ``grace_s``, close all."""
        if self.listener is not None:
            await self.listener.stop()
        self.batch.flush()  # answers held for the loop's turn go out before idle ones close
        for conn in list(self.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        # a pipelined request may start while another ends: wait until none is left
        while (left := deadline - loop.time()) > 0:
            if self.tasks:
                await asyncio.wait(set(self.tasks), timeout=left)
            elif any(c.active is not None for c in self.connections):
                await asyncio.sleep(min(left, 0.01))  # answered inline: no task to wait on
            else:
                break
        if self.tasks:
            pending = set(self.tasks)
            log.warning("edge: %d request(s) in flight after the grace time", len(pending))
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
