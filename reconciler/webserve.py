"""Serving a small aiohttp application on an address: the one way every service does it."""

from __future__ import annotations

import ssl

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
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port`` (port 0: any free one); return the runner and the URL.

    The URL names the bound port and, for a wildcard host, ``advertise_host`` (the address
    other hosts reach this one at; loopback when None). A bind failure is a
    :class:`ConfigError` saying ``what`` could not be served; nothing is left running.
    With ``ssl_context`` (a member's server context: mutual TLS) it serves HTTPS and the
    URL says ``https://``.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot serve {what} on {host}:{port}: {exc.strerror}") from exc
    sockets = getattr(site._server, "sockets", None) or []  # bound sockets are only here
    bound = sockets[0].getsockname()[1] if sockets else port
    url = http_url(url_host(host, advertise_host), bound)
    return runner, "https" + url.removeprefix("http") if ssl_context is not None else url
