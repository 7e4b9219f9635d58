"""A reconciler acting as the mesh CA, for the life-cycle tests: a real issuing CA on disk,
the reconciler's own certificate issued from it (``issue_own``), its fabric member (in
memory, signing records) and its certificate routes (``CAService``) served on loopback:
HTTPS with mutual TLS behind the HTTP layer's authentication, or plain HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from reconciler.clock import RealClock
from reconciler.fabric.fabric import Fabric, open_memory_fabric
from reconciler.fabric.memory import MemoryNetwork
from reconciler.identity.ca import Issuer
from reconciler.identity.enrol import issue_own, issue_to_dir
from reconciler.identity.httpauth import HttpAuth
from reconciler.identity.layout import CADir, MemberDir
from reconciler.identity.live import LiveIdentity
from reconciler.reconcile.ca_http import CAService
from reconciler.records import KEY_GARDEN
from reconciler.webserve import start_app

MESH = "lifemesh"
CLUSTER = "myco"


def make_ca(root: Path) -> CADir:
    ca = CADir(root)
    if not ca.exists():
        ca.create(MESH)
    return ca


def member(
    ca: CADir, role: str, name: str, root: Path, *, lifetime_s: float = 3600.0, access: str = ""
) -> MemberDir:
    issue_to_dir(
        ca.issuer(), role, name, root, now=time.time(), lifetime_s=lifetime_s,
        access=access or None,
    )  # fmt: skip
    return MemberDir(root)


@dataclass
class CAServer:
    url: str
    ca: CADir
    issuer: Issuer
    live: LiveIdentity  # the reconciler's
    fabric: Fabric  # the reconciler's member
    network: MemoryNetwork
    service: CAService
    state: Path
    connections: list[int]  # id() of the transport of every request to GET /ping


@asynccontextmanager
async def ca_server(
    tmp: Path,
    *,
    tls: bool = True,
    active: bool = True,
    server_identity: MemberDir | None = None,
    network: MemoryNetwork | None = None,
    ca_root: Path | None = None,
    name: str = "rec",
    wall: Callable[[], float] = time.time,
) -> AsyncIterator[CAServer]:
    """The reconciler ``name`` (member ``<name>#1``) with its certificate routes on loopback.

    ``tls``: HTTPS with mutual TLS behind :class:`HttpAuth` (the production stack); else
    plain HTTP with the routes alone (what only a renewal proof in the body can pass).
    ``server_identity``: serve TLS with that certificate instead (an impostor)."""
    ca = make_ca(ca_root or tmp / "ca")
    issue_own(ca, tmp / "rec-id", name, now=time.time())
    live = LiveIdentity(MemberDir(tmp / "rec-id"), CLUSTER, wall=wall)
    net = network or MemoryNetwork(RealClock())
    me = f"{name}#1"
    async with open_memory_fabric(me, net, guard=live.guard) as fabric:
        state = tmp / "rec-state"
        service = CAService(
            issuer=ca.issuer(), live=live, state=state, fabric=fabric,
            lease=lambda: (active, me if active else "rec-other#2"), wall=wall,
        )  # fmt: skip
        connections: list[int] = []

        async def ping(request: web.Request) -> web.Response:
            connections.append(id(request.transport))
            return web.json_response({"ok": True})

        if tls:
            auth = HttpAuth(live)
            app = web.Application(middlewares=[auth.middleware])
        else:
            app = web.Application()
        app.add_routes(service.routes())
        app.router.add_get("/metrics", ping)  # a route the access table knows (viewer)
        ctx = None
        if tls:
            ctx = (
                LiveIdentity(server_identity, CLUSTER).server_ssl
                if server_identity is not None
                else live.server_ssl
            )
        runner, url = await start_app(app, "127.0.0.1", 0, "the CA routes", ssl_context=ctx)
        fabric.publish(KEY_GARDEN, {"control_url": url})  # where members find it
        try:
            yield CAServer(url, ca, ca.issuer(), live, fabric, net, service, state, connections)
        finally:
            await runner.cleanup()
