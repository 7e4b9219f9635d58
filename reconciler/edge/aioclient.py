"""aiohttp's client as :class:`~.seam.Upstream` implementations.

:class:`AiohttpUpstream` carries every request the lean GET client does not (bodies,
``HEAD``, other methods) over a ``ClientSession`` tuned for proxying (:func:`make_session`);
:class:`WebSocketUpstream` opens a WebSocket to the backend for an upgrade received by
aiohttp's front end and relays messages both ways after the handshake.

The session makes one attempt per request (:func:`~reconciler.httpclient.one_attempt_session`):
the retries are ``EdgeProxy.forward``'s. What aiohttp's hidden retry used to cover, a pooled
keep-alive connection the backend had closed, is done here in the open, as the lean client
does it: a request without a body whose *reused* connection broke before an answer is sent
once more (aiohttp's connection-reuse trace event tells a reused connection from a new one).
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from reconciler.addr import format_addr
from reconciler.edge.aiofront import AiohttpDownstream
from reconciler.edge.config import EdgeConfig
from reconciler.edge.downstream import Downstream, json_error
from reconciler.edge.headers import downstream_response_headers
from reconciler.edge.routing import BackendState
from reconciler.edge.seam import (
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamTimeoutError,
)
from reconciler.edge.tunnel import IdleWatch
from reconciler.httpclient import one_attempt_session

_CHUNK = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_WS_MAX_MESSAGE = 16 * 1024 * 1024

log = logging.getLogger("myco.edge")


def make_session(config: EdgeConfig) -> aiohttp.ClientSession:
    """An upstream client tuned for proxying (docs/edge.md).

    Pool sized for the load, keep-alive shorter than the backends' idle timeout, bytes
    passed as they are (no decompression), no redirects followed (per request), no
    cookie jar, no default headers a client would add on its own behalf, and no hidden
    second attempt (:func:`~reconciler.httpclient.one_attempt_session`): the one retry
    loop is ``EdgeProxy.forward``'s, and aiohttp's own would double what a backend sees.
    """
    connector = aiohttp.TCPConnector(
        limit=config.pool.limit,
        limit_per_host=config.pool.limit_per_backend,
        keepalive_timeout=config.pool.keepalive_s,
        use_dns_cache=True,
        ttl_dns_cache=10,
    )
    t = config.timeouts
    reuse = aiohttp.TraceConfig()
    reuse.on_connection_reuseconn.append(_mark_reused)
    reuse.freeze()
    return one_attempt_session(
        connector=connector,
        trace_configs=[reuse],
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        timeout=aiohttp.ClientTimeout(
            total=t.total or None, connect=None, sock_connect=t.connect, sock_read=t.read
        ),
        raise_for_status=False,
        trust_env=False,
    )


class _Attempt:
    """One request's trace context: whether aiohttp handed it a pooled connection."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _mark_reused(
    session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    params: aiohttp.TraceConnectionReuseconnParams,
) -> None:
    if isinstance(ctx.trace_request_ctx, _Attempt):
        ctx.trace_request_ctx.reused = True


def _url(backend: BackendState, target: str) -> URL:
    return URL(f"http://{format_addr(backend.host, backend.port)}{target}", encoded=True)


class AiohttpUpstream:
    """Any request over ``session``; the request body is streamed, never buffered."""

    def __init__(self, config: EdgeConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session

    async def send(self, backend: BackendState, request: UpstreamRequest) -> AiohttpResponse:
        body = request.body
        url = _url(backend, request.target)
        attempt = _Attempt()
        try:
            try:
                resp = await self.session.request(
                    request.method,
                    url,
                    headers=request.headers,
                    data=body.__aiter__() if body is not None else None,
                    allow_redirects=False,
                    compress=None,
                    trace_request_ctx=attempt,
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                stale = attempt.reused and body is None
                if not stale or isinstance(exc, aiohttp.ClientConnectorError):
                    raise
                # the backend had closed the pooled connection: replaced once (no body, so
                # nothing to replay but the head)
                resp = await self.session.request(
                    request.method,
                    url,
                    headers=request.headers,
                    allow_redirects=False,
                    compress=None,
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise UpstreamConnectError(f"cannot connect to {backend.endpoint}: {exc}") from exc
        except (aiohttp.SocketTimeoutError, TimeoutError) as exc:  # read or total limit
            raise UpstreamTimeoutError(f"backend timed out: {exc}") from exc
        except aiohttp.ClientError as exc:
            # Connected, then the exchange broke (backend died, reset, bad response).
            raise UpstreamBrokenError(f"exchange with {backend.endpoint} broke: {exc}") from exc
        return AiohttpResponse(self.config, resp, request.rid, request.app)


class AiohttpResponse:
    """A ``ClientResponse`` whose head arrived; :meth:`close` gives its connection back."""

    def __init__(
        self, config: EdgeConfig, response: aiohttp.ClientResponse, rid: str, app: str = ""
    ) -> None:
        self.config = config
        self.response = response
        self.rid = rid
        self.app = app
        self.status = response.status

    async def relay(self, down: Downstream) -> None:
        upstream = self.response
        headers = downstream_response_headers(upstream.headers, rid=self.rid)
        length = upstream.content_length
        no_body = down.method == "HEAD" or upstream.status in _NO_BODY_STATUS
        if not no_body and length is not None and length <= self.config.small_body_bytes:
            try:
                data = await upstream.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                # nothing was sent to the client yet: answer for the backend that failed
                timed_out = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
                status = 504 if timed_out else 502
                what = "backend timed out" if timed_out else "backend failed"
                await json_error(status, what, app=self.app).send(down)
                return
            await down.respond(upstream.status, upstream.reason, headers, data)
            return
        await down.start(upstream.status, upstream.reason, headers)
        if not no_body:
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await down.write(chunk)
        await down.end()

    def close(self) -> None:
        self.response.release()


class WebSocketUpstream:
    """An upgrade on aiohttp's front end: a WebSocket to the backend, messages relayed."""

    def __init__(self, config: EdgeConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session

    async def send(
        self, backend: BackendState, request: UpstreamRequest
    ) -> WebSocketResponse | RefusedHandshake:
        try:
            up = await self.session.ws_connect(
                _url(backend, request.target),
                headers=request.headers,
                protocols=request.protocols,
                timeout=aiohttp.ClientWSTimeout(ws_close=self.config.timeouts.connect),
                autoclose=False,
                max_msg_size=_WS_MAX_MESSAGE,
            )
        except aiohttp.WSServerHandshakeError as exc:
            return RefusedHandshake(exc.status or 502, request.app)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise UpstreamConnectError(f"cannot connect to {backend.endpoint}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamBrokenError(f"websocket to {backend.endpoint} failed: {exc}") from exc
        return WebSocketResponse(up, self.config.client.tunnel_idle_s)


class RefusedHandshake:
    """The backend answered the WebSocket handshake with something else than a 101."""

    def __init__(self, status: int, app: str) -> None:
        self.status = status
        self.app = app

    async def relay(self, down: Downstream) -> None:
        await json_error(self.status, "websocket handshake refused", app=self.app).send(down)

    def close(self) -> None:
        pass


class WebSocketResponse:
    """An open WebSocket to the backend; :meth:`relay` answers the client's handshake."""

    status = 101

    def __init__(self, up: aiohttp.ClientWebSocketResponse, idle_s: float = 0.0) -> None:
        self.up = up
        self.idle_s = idle_s  # no message either way for this long closes both ends

    async def relay(self, down: Downstream) -> None:
        assert isinstance(down, AiohttpDownstream)
        up = self.up
        client = web.WebSocketResponse(
            protocols=(up.protocol,) if up.protocol else (),
            autoclose=False,
            max_msg_size=_WS_MAX_MESSAGE,
        )
        down.response = client
        watch = IdleWatch(self.idle_s)
        try:
            await client.prepare(down.request)
            async with asyncio.timeout(None) as deadline:
                watch.start(deadline)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(_pump(up, client, watch))
                    tg.create_task(_pump(client, up, watch))
        except* TimeoutError:
            log.debug("websocket idle for %.0fs: closed", self.idle_s)
        finally:
            watch.stop()
            await up.close()
            await client.close()

    def close(self) -> None:
        """Nothing left: a 101 is never retried, so :meth:`relay` ran and closed both ends."""


async def _pump(
    src: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    dst: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    watch: IdleWatch,
) -> None:
    """Copy messages from ``src`` to ``dst`` until ``src`` closes; then close ``dst``."""
    code: int = aiohttp.WSCloseCode.OK
    while True:
        msg = await src.receive()
        watch.touch()
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
