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


#: A network namespace's set-up: loopback up, and a veth pair whose end v0 is 10.77.0.3/24
#: (for tests that bind 0.0.0.0 inside ``unshare -n``: the wildcard reaches nothing else).
NETNS_SETUP = (
    "ip link set lo up && ip link add v0 type veth peer name v1 && "
    "ip addr add 10.77.0.3/24 dev v0 && ip link set v0 up && ip link set v1 up"
)


def netns_skip_reason() -> str | None:
    """Why a private network namespace cannot be made here (None: it can)."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is not installed"
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", NETNS_SETUP], capture_output=True, timeout=20
    )
    if probe.returncode != 0:
        return f"cannot make a network namespace: {probe.stderr.decode().strip()}"
    return None
