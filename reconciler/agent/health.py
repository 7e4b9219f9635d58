"""The HTTP health check of an instance (the DNA's ``health`` settings)."""

from __future__ import annotations

import aiohttp


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
