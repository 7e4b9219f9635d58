"""Small helpers shared by the tests: waiting on a condition with a deadline, free ports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    cond: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``cond`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond!r}")
        time.sleep(interval)


async def async_wait_for(
    cond: Callable[[], T | Awaitable[T]],
    within: float = 10.0,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """The asyncio twin of :func:`wait_for`; ``cond`` may be sync or async."""
    deadline = time.monotonic() + within
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or cond!r}")
        await asyncio.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that binds now, below the ephemeral range (reconciler.ports): a process
    started later gets it even if connections were opened meanwhile."""
    from reconciler.ports import free_port as pick

    return pick(host)
