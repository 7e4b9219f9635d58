"""The health check of an instance (the DNA's ``health`` settings).

While an instance starts, :func:`port_open` (one non-blocking ``connect``) is polled first:
it costs a small fraction of an HTTP request, which matters when hundreds of instances
start at once on a small host. The HTTP check proper runs once the port accepts.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp


async def port_open(host: str, port: int, timeout_s: float) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        try:
            async with asyncio.timeout(max(timeout_s, 0.05)):
                await loop.sock_connect(s, (host, port))
        except (OSError, TimeoutError):
            return False
    return True


async def check_http(
    session: aiohttp.ClientSession, endpoint: str, path: str, timeout_s: float
) -> bool:
    """True if ``GET http://{endpoint}{path}`` answers 2xx/3xx within ``timeout_s``."""
    try:
        async with session.get(
            f"http://{endpoint}{path}",
            timeout=aiohttp.ClientTimeout(total=max(timeout_s, 0.05)),
            allow_redirects=False,
        ) as resp:
            await resp.read()
            return 200 <= resp.status < 400
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False
