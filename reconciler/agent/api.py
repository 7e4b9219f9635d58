"""The agent's local HTTP API (aiohttp), as docs/INTERFACES.md lists it.

``GET /v1/node``, ``/v1/instances``, ``/v1/fabric?prefix=``, ``/v1/logs/{instance}?follow=1``,
``/spores/{digest}`` (the verified spores this agent holds, for its peers) and ``/metrics``
(Prometheus text). Bound to loopback by default. Bound anywhere else, every request must
carry ``Authorization: Bearer <token>`` with the token from ``<state>/api.token`` (made on
first use, mode 0600); anything else is refused with 401. The spore route alone also
accepts the mesh's peer credential, derived from any key of the fabric keyring
(:meth:`reconciler.fabric.keyring.Keyring.accepts_peer_token`), so peers can fetch spores
without this agent's private token.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from reconciler.addr import is_loopback, parse_addr
from reconciler.agent.logfiles import tail_lines
from reconciler.errors import ConfigError
from reconciler.observe.http import fabric_view_handler
from reconciler.observe.metrics import Metrics
from reconciler.observe.ui import setup_ui
from reconciler.repo import SporeRepo
from reconciler.repo.http import spore_routes
from reconciler.webserve import start_app

if TYPE_CHECKING:
    from reconciler.agent.agent import Agent

log = logging.getLogger("myco.agent")

TOKEN_FILE = "api.token"
AGENT_KEY: web.AppKey[Agent] = web.AppKey("agent")
FOLLOW_POLL_S = 0.2

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SPORE_ROUTE = "/spores/{digest}"  # the one route peers may call with the peer credential


def load_or_make_token(state_dir: Path) -> str:
    path = state_dir / TOKEN_FILE
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def token_middleware(token: str, peer_ok: Callable[[str], bool] | None = None) -> Any:
    """Every route needs the private ``token``; the spore route also takes a bearer
    credential that ``peer_ok`` accepts (the mesh's peer credential)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if hmac.compare_digest(header.encode(), expected):
            return await handler(request)
        scheme, _, cred = header.partition(" ")
        resource = request.match_info.route.resource
        spores = resource is not None and resource.canonical == SPORE_ROUTE
        if not (spores and peer_ok is not None and scheme == "Bearer" and peer_ok(cred)):
            raise web.HTTPUnauthorized(
                text="bearer token required\n", headers={"WWW-Authenticate": "Bearer"}
            )
        return await handler(request)

    return check


def make_app(
    agent: Agent, token: str | None, peer_ok: Callable[[str], bool] | None = None
) -> web.Application:
    mw = [token_middleware(token, peer_ok)] if token else []
    app = web.Application(middlewares=mw)
    app[AGENT_KEY] = agent
    app.router.add_get("/v1/node", node)
    app.router.add_get("/v1/instances", instances)
    app.router.add_get("/v1/fabric", fabric_view_handler(agent.fabric))
    app.router.add_get("/v1/logs/{instance}", logs)
    app.router.add_get("/metrics", agent_metrics(agent).handler)
    # only what this process verified; re-hashed and streamed on every request
    app.add_routes(spore_routes(SporeRepo(agent.config.state_dir), agent.serves_spore))
    setup_ui(app, agent.fabric)
    return app


def agent_metrics(agent: Agent) -> Metrics:
    """This node's figures (instances by phase, restarts, credits) plus the agent's own."""
    m = Metrics("agent", agent.fabric, scope="own")
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


async def serve_api(agent: Agent, bind: str) -> web.AppRunner:
    host, port = parse_addr(bind, what="agent API address")
    auth = agent.config.api_auth
    if auth == "none" and not is_loopback(host):
        raise ConfigError(f"the agent API on {bind} is not loopback: it needs a token")
    need = auth == "token" or (auth == "auto" and not is_loopback(host))
    token = load_or_make_token(agent.config.state_dir) if need else None
    ring = agent.keyring
    if token and ring is None:
        log.warning(
            "agent API on %s needs a token and there is no fabric keyring: "
            "peers cannot fetch spores from this agent",
            bind,
        )
    runner, agent.api_url = await start_app(
        make_app(agent, token, ring.accepts_peer_token if ring is not None else None),
        host,
        port,
        "the agent API",
        advertise_host=agent.config.advertise_host,
    )
    log.info("agent API on %s%s", agent.api_url, " (bearer token required)" if token else "")
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
