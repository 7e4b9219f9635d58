"""The proxy's core driver: match, build the upstream request, the one retry loop.

:meth:`EdgeProxy.serve` handles one request given as a :class:`~.downstream.Downstream`,
whichever server front end received it (aiohttp's, adapted by
:class:`~.aiofront.AiohttpDownstream`, or the httptools protocol of :mod:`.fastserver`).
A request is matched to an app (:meth:`RouteTable.match`) and turned into one
:class:`~.seam.UpstreamRequest`; :meth:`EdgeProxy.forward` is the only loop that picks a
backend, hands the attempt to the :class:`~.seam.Upstream` (the lean GET client,
aiohttp's client, the upgrade tunnel or WebSocket relay, or a fake in tests), feeds the
outcome to the ejection state machine and asks :func:`should_retry` whether to try another
backend. The answer is then relayed to the client, streamed with flow control both ways.

This module does not import aiohttp or httptools: the implementations of the seam do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, cast

from reconciler.aio import wait_event
from reconciler.edge.config import EdgeConfig
from reconciler.edge.downstream import Answer, Downstream, Headers, Upgradable, json_error
from reconciler.edge.headers import (
    Rfc3339Clock,
    is_websocket_upgrade,
    request_id,
    upstream_request_headers,
    websocket_protocols,
)
from reconciler.edge.routing import AppRoute, BackendState, Outcome, RouteTable, should_retry
from reconciler.edge.seam import (
    Exchange,
    InlineUpstream,
    RequestBody,
    Upstream,
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from reconciler.edge.stats import EdgeStats

log = logging.getLogger("myco.edge")

_NOTHING: frozenset[str] = frozenset()
#: A first attempt already under way: its backend and how it ends (see ``forward``).
FirstAttempt = tuple[BackendState, Awaitable[UpstreamResponse]]


class InlineDownstream(Downstream, Protocol):
    """A front end whose requests :meth:`EdgeProxy.serve_inline` can answer from callbacks."""

    @property
    def gone(self) -> bool:
        """The client went away (or its request broke): nothing can be sent any more."""
        ...

    def respond_now(self, status: int, reason: str | None, headers: Headers, body: bytes) -> bool:
        """:meth:`Downstream.respond` without waiting; False when the client's buffer is
        full (then the front end waits for it to drain before the next request)."""
        ...

    def finish_inline(self, rest: Coroutine[Any, Any, object] | None) -> None:
        """The inline part is over: ``rest`` (if any) is the coroutine that carries the
        request on (the front end runs it as it runs :meth:`EdgeProxy.serve`)."""
        ...


#: Requests held at most per app while it wakes from zero; more are answered 503 with
#: Retry-After, and counted (``held_rejected`` in ``edge/stats``).
HOLD_QUEUE = 100


class EdgeProxy:
    """The request handler: routing, retries, outcomes and stats over one :class:`Upstream`."""

    def __init__(
        self,
        config: EdgeConfig,
        table: RouteTable,
        stats: EdgeStats,
        upstream: Upstream,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.table = table
        self.stats = stats
        self.upstream = upstream
        self.clock = clock
        self._wall = Rfc3339Clock()
        self.in_flight = 0
        #: the inline path's start, when the upstream has one (``EdgeUpstream``; not fakes)
        self._begin = cast(InlineUpstream, upstream).begin if hasattr(upstream, "begin") else None
        self._retry_on = config.retry.retry_on_status
        #: set by the front end's owner: called when an app's first request is held (so
        #: the edge publishes its signal at once and the reconciler wakes the app)
        self.on_hold: Callable[[str], None] | None = None
        self._routes_changed = asyncio.Event()

    async def serve(self, down: Downstream) -> int:
        """Proxy one request; the status answered (499: the client went away)."""
        started = self.clock()
        match = self.table.match(down.raw_path)
        if match is None:
            return await json_error(404, "unknown app", path=down.raw_path).send(down)
        route, rest = match
        self.in_flight += 1
        self.stats.begin(route.app)
        return await self._carry(down, route, self._request(down, route.app, rest), started)

    async def _carry(
        self,
        down: Downstream,
        route: AppRoute,
        request: UpstreamRequest,
        started: float,
        first: FirstAttempt | None = None,
    ) -> int:
        """``forward`` with the accounting (in flight, stats, 499) of one client request."""
        status = 500
        try:
            status = await self.forward(down, route, request, first)
            return status
        except ConnectionResetError:
            status = 499  # the client went away (nginx's code for it), not a server error
            raise
        finally:
            self.in_flight -= 1
            self.stats.record(route.app, status, self.clock() - started)

    def serve_inline(self, down: InlineDownstream) -> bool:
        """Start proxying ``down`` from the front end's callback, without a coroutine.

        The hot path (a ``GET`` without a body, a pooled connection to the backend, a small
        answer that arrives whole) then runs as two callbacks: this one writes the request
        head, :meth:`_Inline.answered` writes the answer. Whatever else happens (no pooled
        connection, a failure, a retry, a streamed answer) is handed over to the one retry
        loop, :meth:`forward`, with the attempt already made as its first, through
        ``down.finish_inline(coroutine)``. False: nothing was done, call :meth:`serve`.
        """
        begin = self._begin
        if begin is None or down.has_body or down.method != "GET":
            return False
        started = self.clock()
        match = self.table.match(down.raw_path)
        if match is None:
            return False
        route, rest = match
        request = self._request(down, route.app, rest)
        self.in_flight += 1
        self.stats.begin(route.app)
        if request.carry != "http":
            down.finish_inline(self._carry(down, route, request, started))
            return True
        backend = route.pick(started, _NOTHING)
        if backend is None:
            down.finish_inline(self._carry(down, route, request, started))
            return True
        backend.inflight += 1  # until _Inline.answered ends it, or forward() takes it on
        inline = _Inline(self, down, route, request, backend, started)
        try:
            exchange = begin(backend, request, inline.answered)
        except Exception as exc:  # not expected: let the coroutine path answer it
            down.finish_inline(self._carry(down, route, request, started, (backend, _raise(exc))))
            return True
        if exchange is None:
            send = self.upstream.send(backend, request)
            down.finish_inline(self._carry(down, route, request, started, (backend, send)))
        return True

    def _request(self, down: Downstream, app: str, rest: str) -> UpstreamRequest:
        """The request every attempt sends: forwarding headers, target, body, carry."""
        query = down.query
        target = rest + "?" + query if query else rest
        headers = down.headers
        rid = request_id(headers.get("X-Request-ID"))
        upgrade = is_websocket_upgrade(headers)
        tunnel = upgrade and isinstance(down, Upgradable)
        out = upstream_request_headers(
            headers,
            client_ip=down.remote,
            scheme=down.scheme,
            rid=rid,
            edge_time=self._wall.now(),
            websocket=upgrade and not tunnel,
        )
        if not upgrade:
            out.popall("Expect", None)
            body = RequestBody(down.body()) if down.has_body else None
            return UpstreamRequest(down.method, target, out, rid, app, body)
        if tunnel:  # the handshake goes as it came (the WebSocket relay makes its own)
            out["Connection"] = "Upgrade"
            out["Upgrade"] = headers.get("Upgrade", "websocket")
            return UpstreamRequest(down.method, target, out, rid, app, carry="tunnel")
        return UpstreamRequest(
            down.method, target, out, rid, app, carry="websocket",
            protocols=websocket_protocols(headers),
        )  # fmt: skip

    async def forward(
        self,
        down: Downstream,
        route: AppRoute,
        request: UpstreamRequest,
        first: FirstAttempt | None = None,
    ) -> int:
        """The one retry loop: pick, send, record the outcome, retry or relay the answer.

        ``first``: an attempt already started (by :meth:`serve_inline`), taken as the loop's
        first one (its backend was picked, its outcome not recorded yet).
        """
        retry = self.config.retry
        method = request.method
        tried: set[str] = set()
        attempts = 0
        failure: Answer | None = None
        while True:
            pending: Awaitable[UpstreamResponse] | None = None
            if first is not None:
                backend, pending = first  # counted in flight by serve_inline
                first = None
            else:
                picked = route.pick(self.clock(), tried)
                if picked is None and failure is None and route.hold_s > 0 and not route.backends:
                    held = await self._hold(route, down.raw_path)
                    if isinstance(held, AppRoute):
                        route = held  # it woke: go on with its new route
                        continue
                    return await held.send(down)
                if picked is None:
                    return await (failure or self._no_backend(route)).send(down)
                backend = picked
                backend.inflight += 1
            attempts += 1
            tried.add(backend.endpoint)
            # the attempt is in flight on ``backend`` until this ``try`` is left, whichever
            # way: an answer relayed, an error, a retry, the client gone, a cancellation
            try:
                try:
                    if pending is None:
                        pending = self.upstream.send(backend, request)
                    response = await pending
                except UpstreamConnectError as exc:
                    self._outcome(route, backend, Outcome.CONNECT_FAILURE, exc)
                    failure = json_error(502, "backend unreachable", app=route.app)
                    sent = request.body_sent
                    if should_retry(retry, method, attempts, connect_failed=True, body_sent=sent):
                        continue
                    return await failure.send(down)
                except UpstreamTimeoutError as exc:
                    self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                    return await json_error(504, "backend timed out", app=route.app).send(down)
                except UpstreamBrokenError as exc:
                    # Connected, then the exchange broke (backend died, reset, bad response).
                    self._outcome(route, backend, Outcome.SERVER_ERROR, exc)
                    failure = json_error(502, "bad gateway", app=route.app)
                    sent = request.has_body
                    if should_retry(retry, method, attempts, status=502, body_sent=sent):
                        continue
                    return await failure.send(down)
                status = response.status
                self._outcome(
                    route, backend, Outcome.SERVER_ERROR if status >= 500 else Outcome.SUCCESS
                )
                if (
                    status in retry.retry_on_status
                    and should_retry(
                        retry, method, attempts, status=status, body_sent=request.has_body
                    )
                    and route.has_candidate(self.clock(), tried)
                ):
                    response.close()
                    continue
                try:
                    await response.relay(down)
                    return status
                finally:
                    response.close()
            finally:
                backend.inflight -= 1

    def routes_updated(self) -> None:
        """The route table changed: held requests look again."""
        changed, self._routes_changed = self._routes_changed, asyncio.Event()
        changed.set()

    async def _hold(self, route: AppRoute, path: str) -> AppRoute | Answer:
        """Hold a request for an app at zero until a backend is routed (its new route), or
        answer: the queue is full (503, Retry-After, counted), it did not wake within
        ``hold_s`` (503), or its route went away (404)."""
        app = route.app
        stats = self.stats
        held = stats.held.get(app, 0)
        if held >= HOLD_QUEUE:
            stats.held_rejected[app] = stats.held_rejected.get(app, 0) + 1
            wait = max(1, int(route.hold_s / 4))
            return json_error(
                503, "app is waking: too many requests held", app=app, retry_after=wait
            )
        stats.held[app] = held + 1
        if held == 0 and self.on_hold is not None:
            self.on_hold(app)
        deadline = self.clock() + route.hold_s
        try:
            while True:
                left = deadline - self.clock()
                if left <= 0 or not await wait_event(self._routes_changed, left):
                    after = self.config.retry_after_s
                    return json_error(503, "app did not wake in time", app=app, retry_after=after)
                match = self.table.match(path)
                if match is None:
                    return json_error(404, "unknown app", path=path)
                now_route = match[0]
                if now_route.backends:
                    return now_route
                if now_route.hold_s <= 0:
                    return self._no_backend(now_route)
        finally:
            stats.held[app] -= 1

    def _no_backend(self, route: AppRoute) -> Answer:
        wait = route.next_recovery(self.clock())
        after = self.config.retry_after_s if wait is None else max(1, int(wait + 0.999))
        return json_error(503, "no backend available", app=route.app, retry_after=after)

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


async def _raise(exc: BaseException) -> UpstreamResponse:
    raise exc


class _Inline:
    """One request on the inline path, between writing its head and its answer."""

    __slots__ = ("backend", "down", "proxy", "request", "route", "started")

    def __init__(
        self,
        proxy: EdgeProxy,
        down: InlineDownstream,
        route: AppRoute,
        request: UpstreamRequest,
        backend: BackendState,
        started: float,
    ) -> None:
        self.proxy = proxy
        self.down = down
        self.route = route
        self.request = request
        self.backend = backend
        self.started = started

    def answered(self, exchange: Exchange) -> None:
        """The exchange's listener: relay a small whole answer now, else go on in ``forward``."""
        proxy, down, route = self.proxy, self.down, self.route
        handed = False  # forward() took the attempt on (and ends its count in flight)
        try:
            if down.gone:  # nothing to relay to: as the coroutine path, a 499
                exchange.release()
                self._done(499)
                down.finish_inline(None)
                return
            status = exchange.status
            answer = None
            if status and status not in proxy._retry_on:
                answer = exchange.small_answer()
            if answer is None:
                first = (self.backend, exchange.response())
                handed = True
                down.finish_inline(proxy._carry(down, route, self.request, self.started, first))
                return
            proxy._outcome(
                route, self.backend, Outcome.SERVER_ERROR if status >= 500 else Outcome.SUCCESS
            )
            exchange.release()
            headers, body = answer
            try:
                drained = down.respond_now(status, None, headers, body)
            except ConnectionResetError:
                self._done(499)
                down.finish_inline(None)
                return
            self._done(status)
            down.finish_inline(None if drained else _drain(down))
        except Exception as exc:  # a bug: the front end answers 500 (or cuts the answer)
            down.finish_inline(_raise(exc))
        finally:
            if not handed:
                self.backend.inflight -= 1

    def _done(self, status: int) -> None:
        proxy = self.proxy
        proxy.in_flight -= 1
        proxy.stats.record(self.route.app, status, proxy.clock() - self.started)


async def _drain(down: Downstream) -> None:
    """Wait until the client's buffer drains (a no-op write)."""
    await down.write(b"")
