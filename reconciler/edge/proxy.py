"""The proxy's I/O driver: one aiohttp handler around the pure routing core.

A request is matched to an app (:meth:`RouteTable.match`), a backend is chosen by the
balancer, and the exchange is streamed both ways: request bodies are handed to the
upstream client as an async iterator over the server's flow-controlled stream, response
bodies are written chunk by chunk with ``drain``, so memory stays bounded whatever the
size. Outcomes feed the ejection state machine; :func:`should_retry` decides whether to
try another backend.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from reconciler.edge.config import EdgeConfig
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


class _BodyStream:
    """The request body as a one-shot async iterator that notes when a byte left."""

    __slots__ = ("content", "sent")

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self.content = content
        self.sent = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.content.iter_chunked(_CHUNK):
            self.sent = True
            yield chunk


def json_error(status: int, error: str, **extra: object) -> web.Response:
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
    body = json.dumps({"error": error, "status": status, **extra}, separators=(",", ":"))
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


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
        started = self.clock()
        match = self.table.match(request.rel_url.raw_path)
        if match is None:
            return json_error(404, "unknown app", path=request.rel_url.raw_path)
        route, rest = match
        self.in_flight += 1
        status = 500
        try:
            if is_websocket_upgrade(request.headers):
                resp = await self._websocket(request, route, rest)
            else:
                resp = await self._http(request, route, rest)
            status = resp.status
            return resp
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

    def _no_backend(self, route: AppRoute) -> web.Response:
        wait = route.next_recovery(self.clock())
        after = self.config.retry_after_s if wait is None else max(1, int(wait + 0.999))
        return json_error(503, "no backend available", app=route.app, retry_after=after)

    async def _http(
        self, request: web.BaseRequest, route: AppRoute, rest: str
    ) -> web.StreamResponse:
        cfg = self.config
        rid = request_id(request.headers.get("X-Request-ID"))
        headers = upstream_request_headers(
            request.headers,
            client_ip=request.remote or "",
            scheme=request.scheme,
            rid=rid,
            edge_time=self._wall.now(),
        )
        headers.popall("Expect", None)
        has_body = request.body_exists
        if self.pool is not None and request.method == "GET" and not has_body:
            return await self._http_fast(self.pool, request, route, rest, headers, rid)
        if has_body and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = _BodyStream(request.content) if has_body else None
        query = request.rel_url.raw_query_string
        tried: set[str] = set()
        attempts = 0
        failure: web.Response | None = None
        while True:
            backend = route.pick(self.clock(), tried)
            if backend is None:
                return failure if failure is not None else self._no_backend(route)
            attempts += 1
            tried.add(backend.endpoint)
            try:
                upstream = await self.session.request(
                    request.method,
                    self._target(backend, rest, query),
                    headers=headers,
                    data=body.__aiter__() if body is not None else None,
                    allow_redirects=False,
                    compress=None,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self._outcome(route, backend, Outcome.CONNECT_FAILURE, exc)
                failure = json_error(502, "backend unreachable", app=route.app)
                sent = body is not None and body.sent
                if should_retry(
                    cfg.retry, request.method, attempts, connect_failed=True, body_sent=sent
                ):
                    continue
                return failure
            except (aiohttp.SocketTimeoutError, TimeoutError) as exc:  # read or total limit
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                return json_error(504, "backend timed out", app=route.app)
            except aiohttp.ClientError as exc:
                # Connected, then the exchange broke (backend died, reset, bad response).
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                failure = json_error(502, "bad gateway", app=route.app)
                sent = body is not None and (body.sent or has_body)
                if should_retry(cfg.retry, request.method, attempts, status=502, body_sent=sent):
                    continue
                return failure
            status = upstream.status
            self._outcome(
                route, backend, Outcome.SERVER_ERROR if status >= 500 else Outcome.SUCCESS
            )
            if (
                status in cfg.retry.retry_on_status
                and should_retry(
                    cfg.retry, request.method, attempts, status=status, body_sent=has_body
                )
                and route.has_candidate(self.clock(), tried)
            ):
                upstream.release()
                continue
            try:
                return await self._relay(request, upstream, rid)
            finally:
                upstream.release()

    async def _http_fast(
        self,
        pool: UpstreamPool,
        request: web.BaseRequest,
        route: AppRoute,
        rest: str,
        headers: CIMultiDict[str],
        rid: str,
    ) -> web.StreamResponse:
        """A GET without a body over the lean pooled client (see :mod:`.upstream`)."""
        cfg = self.config
        query = request.rel_url.raw_query_string
        target = rest + "?" + query if query else rest
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        tried: set[str] = set()
        attempts = 0
        failure: web.Response | None = None
        while True:
            backend = route.pick(self.clock(), tried)
            if backend is None:
                return failure if failure is not None else self._no_backend(route)
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
                return failure
            except UpstreamTimeoutError as exc:
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                return json_error(504, "backend timed out", app=route.app)
            except UpstreamBrokenError as exc:
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                failure = json_error(502, "bad gateway", app=route.app)
                if should_retry(cfg.retry, "GET", attempts, status=502):
                    continue
                return failure
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
                return await self._relay_fast(request, conn, rid)
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

    async def _relay_fast(
        self, request: web.BaseRequest, conn: UpstreamConnection, rid: str
    ) -> web.StreamResponse:
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
            headers.popall("Content-Length", None)
            return web.Response(status=conn.status, headers=headers, body=body)
        resp = web.StreamResponse(status=conn.status, headers=headers)
        await resp.prepare(request)
        async for chunk in conn.body(read):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, rid: str
    ) -> web.StreamResponse:
        headers = downstream_response_headers(upstream.headers, rid=rid)
        length = upstream.content_length
        no_body = request.method == "HEAD" or upstream.status in _NO_BODY_STATUS
        if not no_body and length is not None and length <= self.config.small_body_bytes:
            data = await upstream.read()
            headers.popall("Content-Length", None)
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=data
            )
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if no_body:
            await resp.prepare(request)
            await resp.write_eof()
            return resp
        await resp.prepare(request)
        async for chunk in upstream.content.iter_chunked(_CHUNK):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

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

    async def _websocket(
        self, request: web.BaseRequest, route: AppRoute, rest: str
    ) -> web.StreamResponse:
        rid = request_id(request.headers.get("X-Request-ID"))
        headers = upstream_request_headers(
            request.headers,
            client_ip=request.remote or "",
            scheme=request.scheme,
            rid=rid,
            edge_time=self._wall.now(),
            websocket=True,
        )
        protocols = websocket_protocols(request.headers)
        tried: set[str] = set()
        attempts = 0
        while True:
            backend = route.pick(self.clock(), tried)
            if backend is None:
                if attempts:
                    return json_error(502, "backend unreachable", app=route.app)
                return self._no_backend(route)
            attempts += 1
            tried.add(backend.endpoint)
            url = self._target(backend, rest, request.rel_url.raw_query_string)
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
                return json_error(exc.status or 502, "websocket handshake refused", app=route.app)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self._outcome(route, backend, Outcome.CONNECT_FAILURE, exc)
                if should_retry(self.config.retry, "GET", attempts, connect_failed=True):
                    continue
                return json_error(502, "backend unreachable", app=route.app)
            except aiohttp.ClientError as exc:
                self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                return json_error(502, "bad gateway", app=route.app)
            self._outcome(route, backend, Outcome.SUCCESS)
            break
        down = web.WebSocketResponse(
            protocols=(up.protocol,) if up.protocol else (),
            autoclose=False,
            max_msg_size=_WS_MAX_MESSAGE,
        )
        try:
            await down.prepare(request)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pump(up, down))
                tg.create_task(_pump(down, up))
        finally:
            await up.close()
            await down.close()
        return down


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
