"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, within: float) -> bool:
    """Wait until ``event`` is set or ``within`` seconds have passed (True if it was set).

    Always cancellable. Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 it
    *swallows* a cancellation that arrives between the event being set and the waiting task
    resuming (CPython gh-86296, fixed in 3.12); a loop around it then runs on after
    ``cancel()``, and the TaskGroup that owns it waits forever.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await event.wait()
    return event.is_set()
