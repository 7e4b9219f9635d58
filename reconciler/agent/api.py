"""The agent's HTTP API (aiohttp), as docs/INTERFACES.md lists it.

``GET /v1/node``, ``/v1/instances``, ``/v1/fabric?prefix=``, ``/v1/logs/{instance}?follow=1``,
``/spores/{digest}`` (the verified spores this agent holds, for its peers), ``/metrics``
(Prometheus text) and the ``/ui`` dashboard.

With the member's identity (:class:`~reconciler.identity.live.LiveIdentity`) it serves
HTTPS with mutual TLS, and :class:`~reconciler.identity.httpauth.HttpAuth` decides who may
call what (:data:`~reconciler.identity.authz.ROUTE_ACCESS`): people and members read
(viewer), only members fetch spores; a state-changing call would be audit-logged in
``<state>/audit.log``. Without an identity it serves plain HTTP to everybody, which is
allowed on loopback only (``myco up`` on one machine) unless ``--insecure``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from reconciler.addr import parse_addr
from reconciler.agent.logfiles import tail_lines
from reconciler.identity.audit import AuditLog
from reconciler.identity.httpauth import HttpAuth, listener_auth
from reconciler.observe.http import fabric_view_handler
from reconciler.observe.metrics import Metrics
from reconciler.observe.ui import setup_ui
from reconciler.repo import SporeRepo
from reconciler.repo.http import spore_routes
from reconciler.webserve import start_app

if TYPE_CHECKING:
    from reconciler.agent.agent import Agent
    from reconciler.identity.live import LiveIdentity

log = logging.getLogger("myco.agent")

AGENT_KEY: web.AppKey[Agent] = web.AppKey("agent")
FOLLOW_POLL_S = 0.2


def make_app(agent: Agent, auth: HttpAuth | None = None) -> web.Application:
    """The agent's application; ``auth`` None: open (no identity, loopback)."""
    auth = auth or HttpAuth(None)
    app = web.Application(middlewares=[auth.middleware])
    app[AGENT_KEY] = agent
    app.router.add_get("/v1/node", node)
    app.router.add_get("/v1/instances", instances)
    app.router.add_get("/v1/fabric", fabric_view_handler(agent.fabric))
    app.router.add_get("/v1/logs/{instance}", logs)
    app.router.add_get("/metrics", agent_metrics(agent, auth).handler)
    # only what this process verified; re-hashed and streamed on every request
    app.add_routes(spore_routes(SporeRepo(agent.config.state_dir), agent.serves_spore))
    setup_ui(app, agent.fabric)
    auth.check_routes(app)
    return app


def agent_metrics(agent: Agent, auth: HttpAuth | None = None) -> Metrics:
    """This node's figures (instances by phase, restarts, credits) plus the agent's own
    (and its API's refusals, with ``auth``)."""
    m = Metrics("agent", agent.fabric, scope="own")
    if auth is not None:
        m.add_http_auth(auth.refused)
    m.counter_callback(
        "myco_agent_events",
        "Agent events by kind (sprouts, restarts, fetches...)",
        lambda: {(k,): v for k, v in agent.metrics.items()},
        ("event",),
    )
    m.gauge_callback(
        "myco_agent_enforcement",
        "Nutrient enforcement mechanism in force (1 for the one in use)",
        lambda: {(agent.enforcer.mechanism,): 1},
        ("mechanism",),
    )
    return m


async def serve_api(
    agent: Agent,
    bind: str,
    live: LiveIdentity | None = None,
    *,
    audit: AuditLog | None = None,
    open_access: bool = False,
) -> web.AppRunner:
    """Serve the agent's API on ``bind``; sets ``agent.api_url`` (``https://`` with ``live``).

    Without ``live`` the API is open, which is a ConfigError off loopback unless the agent
    runs with ``--insecure``; ``open_access`` (loopback only) skips authentication with an
    identity too. ``audit`` defaults to ``<state>/audit.log``.
    """
    host, port = parse_addr(bind, what="agent API address")
    auth = listener_auth(
        live,
        host,
        what="the agent API",
        insecure=agent.config.fabric.insecure,
        audit=audit or AuditLog.in_state(agent.config.state_dir),
        open_access=open_access,
    )
    runner, agent.api_url = await start_app(
        make_app(agent, auth),
        host,
        port,
        "the agent API",
        advertise_host=agent.config.advertise_host,
        ssl_context=auth.ssl_context,
    )
    log.info("agent API on %s (%s)", agent.api_url, auth.describe())
    return runner


async def node(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    body = agent.node_record().to_json()
    body["enforcement"] = agent.enforcer.mechanism
    body["enforcement_reason"] = agent.enforcer.reason
    body["epoch"] = agent.max_epoch
    body["intent_revision"] = agent.intent_revision
    body["intent_seen_at"] = agent.intent_seen_at
    return web.json_response(body)


async def instances(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    return web.json_response([agent.records_json[k] for k in sorted(agent.records_json)])


async def logs(request: web.Request) -> web.StreamResponse:
    """An instance's log: rotated files first (oldest first), then the live file.

    ``tail=N`` starts with the last N lines of the live file; ``since=S`` (seconds) leaves
    out rotated files last written more than S seconds ago (lines carry no timestamps of
    their own, so this is per file); ``follow=1`` keeps streaming what is appended.
    """
    agent = request.app[AGENT_KEY]
    iid = request.match_info["instance"]
    path = agent.state.log_path(iid)
    if "/" in iid or iid.startswith(".") or not path.exists():
        raise web.HTTPNotFound(text=f"no logs for instance {iid!r}\n")
    follow = request.query.get("follow", "") in ("1", "true", "yes")
    tail = request.query.get("tail", "")
    try:
        since = float(request.query["since"]) if "since" in request.query else None
    except ValueError:
        raise web.HTTPBadRequest(text="since: expected seconds\n") from None
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    if tail.isdigit():
        lines = tail_lines(path, int(tail), max_bytes=1 << 20)
        await resp.write("".join(line + "\n" for line in lines).encode())
        pos = path.stat().st_size
    else:
        for old in _rotated(path, since):
            await _copy_new(old, 0, resp)
        pos = 0
    while True:
        pos = await _copy_new(path, pos, resp)
        if not follow or (iid not in agent.records and not path.exists()):
            break
        await asyncio.sleep(FOLLOW_POLL_S)
    await resp.write_eof()
    return resp


def _rotated(path: Path, since: float | None) -> list[Path]:
    found: list[tuple[int, Path]] = []
    cutoff = None if since is None else time.time() - since
    for p in path.parent.glob(f"{path.name}.*"):
        suffix = p.name[len(path.name) + 1 :]
        if not suffix.isdigit():
            continue
        try:
            if cutoff is not None and p.stat().st_mtime < cutoff:
                continue
        except FileNotFoundError:
            continue
        found.append((int(suffix), p))
    return [p for _, p in sorted(found, reverse=True)]  # .3, .2, .1: oldest first


async def _copy_new(path: Path, pos: int, resp: web.StreamResponse) -> int:
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < pos:
                pos = 0  # rotated (copy-truncate): start again at the top
            f.seek(pos)
            while chunk := f.read(65536):
                await resp.write(chunk)
                pos += len(chunk)
    except FileNotFoundError:
        pass
    return pos
