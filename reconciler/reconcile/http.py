"""The reconciler's HTTP server: the spore repo for agents, and a small control API.

``GET /spores/{digest}`` (the repo), and for the CLI verbs::

    GET  /v1/status                      lease, garden revision, statuses, overrides
    GET  /v1/apps/{app}/history          the spores the app ran, newest last
    POST /v1/apps/{app}/suspend|resume
    POST /v1/apps/{app}/rollback         body {"to": "<revision, version or digest prefix>"}
    POST /v1/nodes/{node}/drain|undrain

A standby answers the POSTs with 409 and the name of the active reconciler. The server
binds loopback unless told otherwise (the agents fetch spores from it).

With the reconciler's identity (``live``) the server is HTTPS with mutual TLS and every
route is authenticated and authorized by :class:`~reconciler.identity.httpauth.HttpAuth`
(:data:`~reconciler.identity.authz.ROUTE_ACCESS`: spores for members, reads for viewers,
the verbs for operators); every state-changing call goes to the audit log. Without one it
is open (loopback, ``myco up``). ``extra_routes`` mounts more routes on the same server
(the certificate routes: enrolment, renewal, revocation); each needs a row in the table.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

from reconciler.errors import MycoError
from reconciler.identity.audit import AuditLog
from reconciler.identity.httpauth import HttpAuth
from reconciler.observe.metrics import Metrics
from reconciler.observe.ui import setup_ui
from reconciler.reconcile.builder import Overrides
from reconciler.reconcile.history import pick_rollback
from reconciler.reconcile.loop import ReconcileLoop
from reconciler.repo import SporeRepo
from reconciler.repo.http import spore_routes

if TYPE_CHECKING:
    from reconciler.identity.live import LiveIdentity

log = logging.getLogger("myco.reconciler.http")
RECONCILER_KEY = web.AppKey("reconciler", ReconcileLoop)
HTTP_AUTH_KEY = web.AppKey("http_auth", HttpAuth)


def status_json(rec: ReconcileLoop) -> dict[str, Any]:
    garden = rec.garden.garden if rec.garden else None
    return {
        "name": rec.fabric.name,
        "active": rec.lease.active,
        "epoch": rec.lease.epoch,
        "holder": rec.lease.holder,
        "source": rec.source.description,
        "revision": garden.revision if garden else "",
        "problems": [str(p) for p in rec.garden.problems] if rec.garden else [],
        "converged": rec.converged.is_set(),
        "passes": rec.passes,
        "apps": {name: s.to_json() for name, s in sorted(rec.statuses.items())},
        "building": dict(sorted(rec.building.items())),
        "overrides": rec.overrides.to_json(),
    }


def make_app(
    rec: ReconcileLoop,
    repo: SporeRepo | None,
    live: LiveIdentity | None = None,
    extra_routes: Iterable[web.AbstractRouteDef] = (),
    audit: AuditLog | None = None,
    *,
    open_access: bool = False,
) -> web.Application:
    """The reconciler's application. Serve it with ``ssl_context=live.server_ssl`` when
    ``live`` is given (:func:`reconciler.webserve.start_app`); ``app[HTTP_AUTH_KEY]`` is its
    :class:`HttpAuth`. ``audit``: where state-changing calls are written (the caller's
    ``<state>/audit.log``; None: only logged). ``open_access``: nobody is asked for
    credentials even with ``live`` (the caller makes sure the bind is loopback:
    :func:`reconciler.identity.httpauth.listener_auth`)."""
    auth = HttpAuth(live, audit=audit, open_access=open_access)
    app = web.Application(middlewares=[auth.middleware])
    app[RECONCILER_KEY] = rec
    app[HTTP_AUTH_KEY] = auth
    if repo is not None:
        app.add_routes(spore_routes(repo))
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/v1/apps/{app}/history", _history)
    app.router.add_post("/v1/apps/{app}/{verb:suspend|resume|rollback}", _app_verb)
    app.router.add_post("/v1/nodes/{node}/{verb:drain|undrain}", _node_verb)
    # observe: the whole mesh's metrics and the live dashboard, from the fabric view
    rec.metrics = Metrics("reconciler", rec.fabric, scope="mesh")
    rec.metrics.add_http_auth(auth.refused)
    app.router.add_get("/metrics", rec.metrics.handler)
    setup_ui(app, rec.fabric)
    app.add_routes(extra_routes)
    auth.check_routes(app)  # a route without a row in the access table: refused here
    return app


async def _status(request: web.Request) -> web.Response:
    return web.json_response(status_json(request.app[RECONCILER_KEY]))


async def _history(request: web.Request) -> web.Response:
    rec = request.app[RECONCILER_KEY]
    name = request.match_info["app"]
    return web.json_response({"app": name, "history": rec.history.get(name, [])})


def _refuse_standby(rec: ReconcileLoop) -> web.Response | None:
    if rec.lease.active:
        return None
    return web.json_response(
        {"error": f"not the active reconciler; the lease is held by {rec.lease.holder or '?'}"},
        status=409,
    )


async def _app_verb(request: web.Request) -> web.Response:
    rec = request.app[RECONCILER_KEY]
    refused = _refuse_standby(rec)
    if refused is not None:
        return refused
    name = request.match_info["app"]
    verb = request.match_info["verb"]
    known = set(rec.statuses) | (set(rec.desired.apps) if rec.desired else set())
    if name not in known:
        return web.json_response({"error": f"no app named {name!r}"}, status=404)
    ov = rec.overrides
    pins = dict(ov.pins)
    message = ""
    if verb == "suspend":
        ov = replace(ov, suspended=ov.suspended | {name})
        message = f"{name} suspended"
    elif verb == "resume":
        pins.pop(name, None)
        ov = replace(ov, suspended=ov.suspended - {name}, pins=pins)
        message = f"{name} resumed (following the garden)"
    else:
        try:
            body = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError:
            return web.json_response({"error": "body: not JSON"}, status=400)
        target = str(body.get("to", "")) if isinstance(body, dict) else ""
        try:
            entry = pick_rollback(rec.history.get(name, []), target)
        except MycoError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        pins[name] = str(entry["digest"])
        ov = replace(ov, pins=pins)
        message = (
            f"{name} rolled back to {entry.get('version', '?')} "
            f"({str(entry['digest'])[:12]}, revision {str(entry.get('revision', ''))[:12]}); "
            f"`myco resume {name}` follows the garden again"
        )
    await rec.set_overrides(ov)
    log.warning("%s", message)
    return web.json_response({"ok": True, "message": message, "overrides": ov.to_json()})


async def _node_verb(request: web.Request) -> web.Response:
    rec = request.app[RECONCILER_KEY]
    refused = _refuse_standby(rec)
    if refused is not None:
        return refused
    node = request.match_info["node"]
    verb = request.match_info["verb"]
    ov: Overrides = rec.overrides
    if verb == "drain":
        ov = replace(ov, drain=ov.drain | {node})
    else:
        ov = replace(ov, drain=ov.drain - {node})
    await rec.set_overrides(ov)
    return web.json_response(
        {"ok": True, "message": f"{node}: {verb}ed", "overrides": ov.to_json()}
    )
