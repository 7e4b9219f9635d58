"""Serving a small aiohttp application on an address: the one way every service does it."""

from __future__ import annotations

from aiohttp import web

from reconciler.addr import http_url, url_host
from reconciler.errors import ConfigError


async def start_app(
    app: web.Application,
    host: str,
    port: int,
    what: str,
    *,
    advertise_host: str | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port`` (port 0: any free one); return the runner and the URL.

    The URL names the bound port and, for a wildcard host, ``advertise_host`` (the address
    other hosts reach this one at; loopback when None). A bind failure is a
    :class:`ConfigError` saying ``what`` could not be served; nothing is left running.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot serve {what} on {host}:{port}: {exc.strerror}") from exc
    sockets = getattr(site._server, "sockets", None) or []  # bound sockets are only here
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, http_url(url_host(host, advertise_host), bound)
