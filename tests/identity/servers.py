"""Real servers for the HTTP identity tests: the reconciler's control API over mutual TLS
(its own ``make_app``, its lease held so the verbs answer), and one-shot requests."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from reconciler.clock import RealClock
from reconciler.fabric.fabric import open_memory_fabric
from reconciler.fabric.memory import MemoryNetwork
from reconciler.httpclient import one_attempt_session
from reconciler.identity.audit import AuditLog
from reconciler.identity.httpauth import PRINCIPAL, HttpAuth
from reconciler.identity.live import LiveIdentity
from reconciler.identity.verify import Principal
from reconciler.reconcile.http import HTTP_AUTH_KEY, make_app
from reconciler.reconcile.lease import LeaseConfig
from reconciler.reconcile.loop import ReconcileLoop, ReconcileSettings
from reconciler.reconcile.source import StaticSource, empty_result
from reconciler.repo import SporeRepo
from reconciler.webserve import start_app
from tests.helpers import async_wait_for
from tests.identity.pki import Pki

REFUSED = "refused at TLS"


@dataclass
class Server:
    url: str
    rec: ReconcileLoop
    live: LiveIdentity
    audit: Path
    auth: HttpAuth


async def _whoami(request: web.Request) -> web.Response:
    """A renewal route stand-in: answers with who the middleware found."""
    p = request[PRINCIPAL]
    assert isinstance(p, Principal)
    return web.json_response({"name": p.name, "serial": str(p.serial)})


@asynccontextmanager
async def control_api(pki: Pki, tmp: Path) -> AsyncIterator[Server]:
    """The reconciler's control API over mutual TLS, its lease held (the verbs answer)."""
    network = MemoryNetwork(RealClock())
    async with open_memory_fabric("rec", network) as fabric:
        rec = ReconcileLoop(
            fabric,
            StaticSource(empty_result()),
            None,
            ReconcileSettings(allow_empty=True, resync_s=0.2, lease=LeaseConfig(1.5, 0.3, 0.3)),
        )
        live = pki.live("reconciler", "rec")
        audit = tmp / "audit.log"
        app = make_app(
            rec,
            SporeRepo(tmp / "repo"),
            live=live,
            extra_routes=[web.post("/v1/renew", _whoami)],
            audit=AuditLog(audit),
        )
        runner, url = await start_app(
            app, "127.0.0.1", 0, "the control API", ssl_context=live.server_ssl
        )
        task = asyncio.create_task(rec.run())
        try:
            await async_wait_for(lambda: rec.lease.active, within=20, what="the lease")
            yield Server(url, rec, live, audit, app[HTTP_AUTH_KEY])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await runner.cleanup()


async def call(
    ctx: ssl.SSLContext | None,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
) -> tuple[int | str, str]:
    """(status, body) of one request on a fresh connection, or (REFUSED, why)."""
    connector = aiohttp.TCPConnector(ssl=ctx) if ctx is not None else None
    try:
        async with (
            one_attempt_session(connector=connector) as s,
            s.request(method, url, headers=headers) as resp,
        ):
            return resp.status, await resp.text()
    except aiohttp.ClientError as exc:  # the handshake failed (or the server hung up on it)
        return REFUSED, f"{type(exc).__name__}: {exc}"
