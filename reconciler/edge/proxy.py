"""The proxy's core driver: match, pick, send, feed outcomes back, stream, retry.

:meth:`EdgeProxy.serve` handles one request given as a :class:`~.downstream.Downstream`,
whichever server front end received it (aiohttp's, adapted by :class:`AiohttpDownstream`,
or the httptools protocol of :mod:`.fastserver`). A request is matched to an app
(:meth:`RouteTable.match`), a backend is chosen by the balancer, and the exchange is
streamed both ways: the request body is handed to the upstream client as an async
iterator over the front end's flow-controlled stream, the response body is written chunk
by chunk, each write waiting while the client is slow, so memory stays bounded whatever
the size. Outcomes feed the ejection state machine; :func:`should_retry` decides whether
to try another backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol, cast

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from reconciler.edge.config import EdgeConfig
from reconciler.edge.downstream import Answer, Downstream, Headers, json_error
from reconciler.edge.headers import (
    Rfc3339Clock,
    downstream_from_raw,
    downstream_response_headers,
    is_websocket_upgrade,
    request_id,
    upstream_request_headers,
    websocket_protocols,
)
from reconciler.edge.routing import AppRoute, BackendState, Outcome, RouteTable, should_retry
from reconciler.edge.stats import EdgeStats

try:  # the lean GET path needs httptools; without it everything goes through aiohttp
    import httptools  # type: ignore[import-not-found,unused-ignore]

    from reconciler.edge.upstream import (
        UpstreamBrokenError,
        UpstreamConnectError,
        UpstreamConnection,
        UpstreamPool,
        UpstreamTimeoutError,
    )

    HAVE_FAST_PATH = True
except ImportError:  # pragma: no cover - depends on the installation
    HAVE_FAST_PATH = False

log = logging.getLogger("myco.edge")

_CHUNK = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_WS_MAX_MESSAGE = 16 * 1024 * 1024
_MAX_UPGRADE_HEAD = 64 * 1024


class TunnelEnd(Protocol):
    """The client's side of a connection switched to another protocol (after a 101)."""

    async def read(self) -> bytes: ...  # b"" at the end

    async def write(self, data: bytes) -> None: ...

    def write_eof(self) -> None: ...


class Upgradable(Protocol):
    """A front end that can hand its raw connection over after a ``101`` (the fast one)."""

    async def switch(self, headers: Headers) -> TunnelEnd: ...


class _BodyStream:
    """The request body as a one-shot async iterator that notes when a byte left."""

    __slots__ = ("down", "sent")

    def __init__(self, down: Downstream) -> None:
        self.down = down
        self.sent = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.down.body():
            self.sent = True
            yield chunk


class AiohttpDownstream:
    """:class:`Downstream` over aiohttp's low-level server request."""

    __slots__ = (
        "has_body",
        "headers",
        "method",
        "query",
        "raw_path",
        "remote",
        "request",
        "response",
        "scheme",
    )

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.method = request.method
        url = request.rel_url
        self.raw_path = url.raw_path
        self.query = url.raw_query_string
        self.headers: Headers = request.headers
        self.remote = request.remote or ""
        self.scheme = request.scheme
        self.has_body = request.body_exists

    async def body(self) -> AsyncIterator[bytes]:
        if self.headers.get("Expect", "").lower() == "100-continue":
            await self.request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        async for chunk in self.request.content.iter_chunked(_CHUNK):
            yield chunk

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        h = CIMultiDict(headers)
        h.popall("Content-Length", None)
        self.response = web.Response(status=status, reason=reason, headers=h, body=body)

    async def start(self, status: int, reason: str | None, headers: Headers) -> None:
        resp = web.StreamResponse(status=status, reason=reason, headers=headers)
        await resp.prepare(self.request)
        self.response = resp

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def end(self) -> None:
        assert self.response is not None
        await self.response.write_eof()


def make_session(config: EdgeConfig) -> aiohttp.ClientSession:
    """An upstream client tuned for proxying (DESIGN §8, issue "Edge" item 4).

    Pool sized for the load, keep-alive shorter than the backends' idle timeout, bytes
    passed as they are (no decompression), no redirects followed (per request), no
    cookie jar, no default headers a client would add on its own behalf.
    """
    connector = aiohttp.TCPConnector(
        limit=config.pool.limit,
        limit_per_host=config.pool.limit_per_backend,
        keepalive_timeout=config.pool.keepalive_s,
        use_dns_cache=True,
        ttl_dns_cache=10,
    )
    t = config.timeouts
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        timeout=aiohttp.ClientTimeout(
            total=t.total or None, connect=None, sock_connect=t.connect, sock_read=t.read
        ),
        raise_for_status=False,
        trust_env=False,
    )


class EdgeProxy:
    """The request handler. Owns the lean path's pool; the caller owns the aiohttp session."""

    def __init__(
        self,
        config: EdgeConfig,
        table: RouteTable,
        stats: EdgeStats,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.table = table
        self.stats = stats
        self.session = session
        self.clock = clock
        self._wall = Rfc3339Clock()
        self.in_flight = 0
        self.pool: UpstreamPool | None = (
            UpstreamPool(config.pool, config.timeouts)
            if HAVE_FAST_PATH and config.fast_path
            else None
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """aiohttp's low-level server handler."""
        down = AiohttpDownstream(request)
        await self.serve(down)
        assert down.response is not None
        return down.response

    async def serve(self, down: Downstream) -> int:
        """Proxy one request; the status answered (499: the client went away)."""
        started = self.clock()
        match = self.table.match(down.raw_path)
        if match is None:
            return await json_error(404, "unknown app", path=down.raw_path).send(down)
        route, rest = match
        self.in_flight += 1
        status = 500
        try:
            if is_websocket_upgrade(down.headers):
                if isinstance(down, AiohttpDownstream):
                    status = await self._websocket(down, route, rest)
                else:
                    status = await self._tunnel(cast(Upgradable, down), down, route, rest)
            else:
                status = await self._http(down, route, rest)
            return status
        except ConnectionResetError:
            status = 499  # the client went away (nginx's code for it), not a server error
            raise
        finally:
            self.in_flight -= 1
            self.stats.record(route.app, status, self.clock() - started)

    def _target(self, backend: BackendState, rest: str, query: str) -> URL:
        url = f"http://{backend.host}:{backend.port}{rest}"
        if query:
            url += "?" + query
        return URL(url, encoded=True)

    def _no_backend(self, route: AppRoute) -> Answer:
        wait = route.next_recovery(self.clock())
        after = self.config.retry_after_s if wait is None else max(1, int(wait + 0.999))
        return json_error(503, "no backend available", app=route.app, retry_after=after)

    def _upstream_headers(
        self, down: Downstream, *, websocket: bool = False
    ) -> tuple[CIMultiDict[str], str]:
        rid = request_id(down.headers.get("X-Request-ID"))
        headers = upstream_request_headers(
            down.headers,
            client_ip=down.remote,
            scheme=down.scheme,
            rid=rid,
            edge_time=self._wall.now(),
            websocket=websocket,
        )
        return headers, rid

    async def _http(self, down: Downstream, route: AppRoute, rest: str) -> int:
        cfg = self.config
        headers, rid = self._upstream_headers(down)
        headers.popall("Expect", None)
        has_body = down.has_body
        method = down.method
        if self.pool is not None and method == "GET" and not has_body:
            return await self._http_fast(self.pool, down, route, rest, headers, rid)
        body = _BodyStream(down) if has_body else None
        tried: set[str] = set()
        attempts = 0
        failure: Answer | None = None
        while True:
            backend = route.pick(self.clock(), tried)
            if backend is None:
                return await (failure or self._no_backend(route)).send(down)
            attempts += 1
            tried.add(backend.endpoint)
            try:
                upstream = await self.session.request(
                    method,
                    self._target(backend, rest, down.query),
                    headers=headers,
                    data=body.__aiter__() if body is not None else None,
                    allow_redirects=False,
                    compress=None,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self._outcome(route, backend, Outcome.CONNECT_FAILURE, exc)
                failure = json_error(502, "backend unreachable", app=route.app)
                sent = body is not None and body.sent
                if should_retry(cfg.retry, method, attempts, connect_failed=True, body_sent=sent):
                    continue
                return await failure.send(down)
            except (aiohttp.SocketTimeoutError, TimeoutError) as exc:  # read or total limit
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                return await json_error(504, "backend timed out", app=route.app).send(down)
            except aiohttp.ClientError as exc:
                # Connected, then the exchange broke (backend died, reset, bad response).
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                failure = json_error(502, "bad gateway", app=route.app)
                sent = body is not None and (body.sent or has_body)
                if should_retry(cfg.retry, method, attempts, status=502, body_sent=sent):
                    continue
                return await failure.send(down)
            status = upstream.status
            self._outcome(
                route, backend, Outcome.SERVER_ERROR if status >= 500 else Outcome.SUCCESS
            )
            if (
                status in cfg.retry.retry_on_status
                and should_retry(cfg.retry, method, attempts, status=status, body_sent=has_body)
                and route.has_candidate(self.clock(), tried)
            ):
                upstream.release()
                continue
            try:
                await self._relay(down, upstream, rid)
                return status
            finally:
                upstream.release()

    async def _http_fast(
        self,
        pool: UpstreamPool,
        down: Downstream,
        route: AppRoute,
        rest: str,
        headers: CIMultiDict[str],
        rid: str,
    ) -> int:
        """A GET without a body over the lean pooled client (see :mod:`.upstream`)."""
        cfg = self.config
        query = down.query
        target = rest + "?" + query if query else rest
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        tried: set[str] = set()
        attempts = 0
        failure: Answer | None = None
        while True:
            backend = route.pick(self.clock(), tried)
            if backend is None:
                return await (failure or self._no_backend(route)).send(down)
            attempts += 1
            tried.add(backend.endpoint)
            head = (
                f"GET {target} HTTP/1.1\r\nHost: {backend.host}:{backend.port}\r\n{lines}\r\n"
            ).encode("utf-8", "surrogateescape")
            try:
                conn = await self._exchange(pool, backend, head)
            except UpstreamConnectError as exc:
                self._outcome(route, backend, Outcome.CONNECT_FAILURE, exc)
                failure = json_error(502, "backend unreachable", app=route.app)
                if should_retry(cfg.retry, "GET", attempts, connect_failed=True):
                    continue
                return await failure.send(down)
            except UpstreamTimeoutError as exc:
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                return await json_error(504, "backend timed out", app=route.app).send(down)
            except UpstreamBrokenError as exc:
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                failure = json_error(502, "bad gateway", app=route.app)
                if should_retry(cfg.retry, "GET", attempts, status=502):
                    continue
                return await failure.send(down)
            status = conn.status
            self._outcome(
                route, backend, Outcome.SERVER_ERROR if status >= 500 else Outcome.SUCCESS
            )
            if (
                status in cfg.retry.retry_on_status
                and should_retry(cfg.retry, "GET", attempts, status=status)
                and route.has_candidate(self.clock(), tried)
            ):
                conn.close()
                continue
            try:
                await self._relay_fast(down, conn, rid)
                return status
            finally:
                pool.release(conn)

    async def _exchange(
        self, pool: UpstreamPool, backend: BackendState, head: bytes
    ) -> UpstreamConnection:
        """Send ``head``; a pooled connection the backend had closed is replaced once."""
        read = self.config.timeouts.read
        conn = await pool.acquire(backend.host, backend.port)
        try:
            await conn.send(head, read)
            return conn
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
        return conn

    async def _relay_fast(self, down: Downstream, conn: UpstreamConnection, rid: str) -> None:
        headers = downstream_from_raw(conn.headers, rid=rid)
        read = self.config.timeouts.read
        length_s = headers.get("Content-Length")
        length = int(length_s) if length_s is not None and length_s.isdigit() else None
        if conn.status in _NO_BODY_STATUS or (
            length is not None and length <= self.config.small_body_bytes
        ):
            body = conn.take_complete_body()
            if body is None:
                body = b"".join([chunk async for chunk in conn.body(read)])
            await down.respond(conn.status, None, headers, body)
            return
        await down.start(conn.status, None, headers)
        async for chunk in conn.body(read):
            await down.write(chunk)
        await down.end()

    async def _relay(self, down: Downstream, upstream: aiohttp.ClientResponse, rid: str) -> None:
        headers = downstream_response_headers(upstream.headers, rid=rid)
        length = upstream.content_length
        no_body = down.method == "HEAD" or upstream.status in _NO_BODY_STATUS
        if not no_body and length is not None and length <= self.config.small_body_bytes:
            data = await upstream.read()
            await down.respond(upstream.status, upstream.reason, headers, data)
            return
        await down.start(upstream.status, upstream.reason, headers)
        if not no_body:
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await down.write(chunk)
        await down.end()

    def _outcome(
        self,
        route: AppRoute,
        backend: BackendState,
        outcome: Outcome,
        exc: BaseException | None = None,
    ) -> None:
        if backend.health.record(outcome, self.clock()):
            log.warning(
                "ejected backend %s of app %s for %.1fs (%s)",
                backend.endpoint,
                route.app,
                backend.health.until - self.clock(),
                exc or outcome.value,
            )
        elif exc is not None:
            log.debug("backend %s of app %s: %s", backend.endpoint, route.app, exc)

    # -- upgrades -------------------------------------------------------------------------

    async def _tunnel(
        self, client: Upgradable, down: Downstream, route: AppRoute, rest: str
    ) -> int:
        """An upgrade on the fast front end: relay raw bytes both ways after the 101.

        The request head (forwarding headers added, ``Connection: Upgrade`` and
        ``Upgrade`` kept) goes to a backend on a fresh connection; its answer head is
        parsed by httptools. A ``101`` is passed on and the two connections are joined
        (each direction with flow control); any other answer is passed on as it is.
        """
        t = self.config.timeouts
        headers, rid = self._upstream_headers(down)
        headers["Connection"] = "Upgrade"
        headers["Upgrade"] = down.headers.get("Upgrade", "websocket")
        target = rest + "?" + down.query if down.query else rest
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        tried: set[str] = set()
        attempts = 0
        while True:
            backend = route.pick(self.clock(), tried)
            if backend is None:
                if attempts:
                    return await json_error(502, "backend unreachable", app=route.app).send(down)
                return await self._no_backend(route).send(down)
            attempts += 1
            tried.add(backend.endpoint)
            try:
                async with asyncio.timeout(t.connect):
                    reader, writer = await asyncio.open_connection(backend.host, backend.port)
            except (OSError, TimeoutError) as exc:
                self._outcome(route, backend, Outcome.CONNECT_FAILURE, exc)
                if should_retry(self.config.retry, "GET", attempts, connect_failed=True):
                    continue
                return await json_error(502, "backend unreachable", app=route.app).send(down)
            break
        try:
            writer.write(
                f"{down.method} {target} HTTP/1.1\r\nHost: {backend.host}:{backend.port}\r\n"
                f"{lines}\r\n".encode("utf-8", "surrogateescape")
            )
            try:
                async with asyncio.timeout(t.read):
                    raw = await reader.readuntil(b"\r\n\r\n")
                status, reason, raw_headers = _parse_response_head(raw)
            except TimeoutError as exc:
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                return await json_error(504, "backend timed out", app=route.app).send(down)
            except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                return await json_error(502, "bad gateway", app=route.app).send(down)
            self._outcome(
                route, backend, Outcome.SERVER_ERROR if status >= 500 else Outcome.SUCCESS
            )
            out = downstream_from_raw(raw_headers, rid=rid)
            if status != 101:
                # the backend refused the upgrade: pass its (small) answer on
                length = out.get("Content-Length", "")
                body = b""
                if length.isdigit() and int(length) <= self.config.small_body_bytes:
                    async with asyncio.timeout(t.read):
                        body = await reader.readexactly(int(length))
                await down.respond(status, reason, out, body)
                return status
            out["Connection"] = "Upgrade"
            out["Upgrade"] = headers["Upgrade"]
            client_end = await client.switch(out)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(_copy_to_backend(client_end, writer))
                    tg.create_task(_copy_to_client(reader, client_end))
            except* OSError as group:  # either side went away: the tunnel is over
                log.debug("upgraded connection ended: %s", group.exceptions[0])
            return 101
        finally:
            writer.close()

    async def _websocket(self, adown: AiohttpDownstream, route: AppRoute, rest: str) -> int:
        """An upgrade on the aiohttp front end: two WebSocket ends relaying messages."""
        request = adown.request
        headers, _rid = self._upstream_headers(adown, websocket=True)
        protocols = websocket_protocols(request.headers)
        tried: set[str] = set()
        attempts = 0
        while True:
            backend = route.pick(self.clock(), tried)
            if backend is None:
                if attempts:
                    return await json_error(502, "backend unreachable", app=route.app).send(adown)
                return await self._no_backend(route).send(adown)
            attempts += 1
            tried.add(backend.endpoint)
            url = self._target(backend, rest, adown.query)
            try:
                up = await self.session.ws_connect(
                    url,
                    headers=headers,
                    protocols=protocols,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.config.timeouts.connect),
                    autoclose=False,
                    max_msg_size=_WS_MAX_MESSAGE,
                )
            except aiohttp.WSServerHandshakeError as exc:
                self._outcome(
                    route, backend, Outcome.SERVER_ERROR if exc.status >= 500 else Outcome.SUCCESS
                )
                answer = json_error(exc.status or 502, "websocket handshake refused", app=route.app)
                return await answer.send(adown)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self._outcome(route, backend, Outcome.CONNECT_FAILURE, exc)
                if should_retry(self.config.retry, "GET", attempts, connect_failed=True):
                    continue
                return await json_error(502, "backend unreachable", app=route.app).send(adown)
            except aiohttp.ClientError as exc:
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                return await json_error(502, "bad gateway", app=route.app).send(adown)
            self._outcome(route, backend, Outcome.SUCCESS)
            break
        down = web.WebSocketResponse(
            protocols=(up.protocol,) if up.protocol else (),
            autoclose=False,
            max_msg_size=_WS_MAX_MESSAGE,
        )
        adown.response = down
        try:
            await down.prepare(request)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pump(up, down))
                tg.create_task(_pump(down, up))
        finally:
            await up.close()
            await down.close()
        return 101


class _HeadParser:
    """httptools callbacks collecting one response head."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.done = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


def _parse_response_head(raw: bytes) -> tuple[int, str, list[tuple[bytes, bytes]]]:
    """Status, reason and header pairs of a response head (ValueError when malformed)."""
    cb = _HeadParser()
    parser = httptools.HttpResponseParser(cb)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # a 101: the rest of the stream is the other protocol's
    except httptools.HttpParserError as exc:
        raise ValueError(f"bad response head from backend: {exc}") from None
    if not cb.done:
        raise ValueError("incomplete response head from backend")
    return int(parser.get_status_code()), cb.reason.decode("latin-1"), cb.headers


async def _copy_to_backend(src: TunnelEnd, dst: asyncio.StreamWriter) -> None:
    while data := await src.read():
        dst.write(data)
        await dst.drain()
    if dst.can_write_eof():
        dst.write_eof()


async def _copy_to_client(src: asyncio.StreamReader, dst: TunnelEnd) -> None:
    while data := await src.read(_CHUNK):
        await dst.write(data)
    dst.write_eof()


async def _pump(
    src: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    dst: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
) -> None:
    """Copy messages from ``src`` to ``dst`` until ``src`` closes; then close ``dst``."""
    code: int = aiohttp.WSCloseCode.OK
    while True:
        msg = await src.receive()
        if msg.type is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            code = int(msg.data or aiohttp.WSCloseCode.OK)
            break
        else:  # CLOSING, CLOSED, ERROR
            if msg.type is WSMsgType.ERROR:
                code = aiohttp.WSCloseCode.INTERNAL_ERROR
            break
    if not dst.closed:
        await dst.close(code=code)
