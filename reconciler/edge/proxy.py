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

import logging
import time
from collections.abc import Callable

from reconciler.edge.config import EdgeConfig
from reconciler.edge.downstream import Answer, Downstream, Upgradable, json_error
from reconciler.edge.headers import (
    Rfc3339Clock,
    is_websocket_upgrade,
    request_id,
    upstream_request_headers,
    websocket_protocols,
)
from reconciler.edge.routing import AppRoute, BackendState, Outcome, RouteTable, should_retry
from reconciler.edge.seam import (
    RequestBody,
    Upstream,
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamTimeoutError,
)
from reconciler.edge.stats import EdgeStats

log = logging.getLogger("myco.edge")


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
            status = await self.forward(down, route, self._request(down, route.app, rest))
            return status
        except ConnectionResetError:
            status = 499  # the client went away (nginx's code for it), not a server error
            raise
        finally:
            self.in_flight -= 1
            self.stats.record(route.app, status, self.clock() - started)

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

    async def forward(self, down: Downstream, route: AppRoute, request: UpstreamRequest) -> int:
        """The one retry loop: pick, send, record the outcome, retry or relay the answer."""
        retry = self.config.retry
        method = request.method
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
                response = await self.upstream.send(backend, request)
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
                and should_retry(retry, method, attempts, status=status, body_sent=request.has_body)
                and route.has_candidate(self.clock(), tried)
            ):
                response.close()
                continue
            try:
                await response.relay(down)
                return status
            finally:
                response.close()

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
