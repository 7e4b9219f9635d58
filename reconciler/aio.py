"""Small asyncio helpers shared by the services: cancel-safe waits and the one way a
long-running process starts and stops.

Every daemon (``myco agent``, ``myco edge``, ``myco reconcile``, ``myco up``) runs through
:func:`run_until_signalled`:

- SIGINT/SIGTERM handlers are installed once and only *record* the signal; the first one
  cancels the service's main task, which unwinds through its ``finally`` blocks and async
  context managers (a graceful stop); a second one is a forced stop: the main task is
  cancelled again (cutting short any grace period it is waiting out), the registered
  :meth:`Service.on_force` callbacks run, and the process exits within a few seconds
  whatever is still running.
- The service's tasks are owned by one :class:`asyncio.TaskGroup`; a task that should run
  forever is started through :meth:`Service.spawn`, whose :func:`guard` turns "it returned"
  or "it raised" into a :class:`~reconciler.errors.ServiceFailed` that stops the whole
  process with a clear error instead of leaving it half alive (kopf's ``guard``).

Models: uvicorn's ``capture_signals``/``handle_exit``, kopf's ``spawn_tasks`` + ``guard``,
anyio's ``task_status.started()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from reconciler.errors import ServiceFailed

log = logging.getLogger("myco.service")

#: Seconds a forced stop (second signal) waits before the process exits regardless.
FORCE_EXIT_AFTER_S = 3.0

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


async def guard(what: str, coro: Awaitable[None]) -> None:
    """Run a task that should last as long as its process; its end is an error.

    Returning, or raising anything but a cancellation, becomes :class:`ServiceFailed`
    naming ``what`` (a :class:`~reconciler.errors.MycoError` it raised keeps its words).
    """
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except ServiceFailed:
        raise
    except Exception as exc:
        log.debug("%s failed", what, exc_info=True)
        raise ServiceFailed(f"{what} failed: {_describe(exc)}") from exc
    raise ServiceFailed(f"{what} stopped unexpectedly")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


class Service:
    """What a running service's main coroutine gets: its task group and stop state."""

    def __init__(self, name: str, group: asyncio.TaskGroup) -> None:
        self.name = name
        self.group = group
        self.stopping = asyncio.Event()  # set by the first signal (or request_stop)
        self.forced = False  # set by the second signal
        self._force_callbacks: list[Callable[[], None]] = []

    def spawn(self, what: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start a task that must run until the service stops (its end stops the service)."""
        return self.group.create_task(guard(what, coro), name=f"{self.name}: {what}")

    def on_force(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (synchronously, from the loop) when a second signal forces a stop."""
        self._force_callbacks.append(callback)

    def _force(self) -> None:
        self.forced = True
        for cb in self._force_callbacks:
            try:
                cb()
            except Exception:  # a force callback must not stop the others
                log.exception("%s: force-stop callback failed", self.name)


MainFn = Callable[[Service], Coroutine[Any, Any, None]]


def run_until_signalled(
    main: MainFn,
    *,
    name: str,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int:
    """Run ``main(service)`` until it returns, fails, or SIGINT/SIGTERM stop it.

    Exit codes: 0 after a clean or signalled stop; a failure raises (a
    :class:`~reconciler.errors.MycoError` reaches the CLI as one line). Signal handlers are
    restored afterwards, so tests can call this more than once in one process.
    """
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve_until_signalled(main, name=name))


async def serve_until_signalled(main: MainFn, *, name: str) -> int:
    """:func:`run_until_signalled` on an already running loop (the async form)."""
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    received: list[int] = []
    holder: list[Service] = []

    def on_signal(signum: int) -> None:  # only records and cancels; the task unwinds
        received.append(signum)
        svc = holder[0] if holder else None
        if len(received) == 1:
            log.info(
                "%s: %s received, stopping (again to force)", name, signal.Signals(signum).name
            )
            if svc is not None:
                svc.stopping.set()
            me.cancel()
        elif len(received) == 2:
            log.warning("%s: second signal, forcing the stop", name)
            if svc is not None:
                svc._force()
            me.cancel()
            loop.call_later(FORCE_EXIT_AFTER_S, _hard_exit, name)

    installed: list[signal.Signals] = []
    for sig in _SIGNALS:
        try:
            loop.add_signal_handler(sig, on_signal, int(sig))
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        async with asyncio.TaskGroup() as group:
            svc = Service(name, group)
            holder.append(svc)
            await main(svc)
    except asyncio.CancelledError:
        if not received:
            raise
        # The stop was ours: clear the cancel requests we made, so nothing above sees one.
        while me.cancelling():
            me.uncancel()
    except BaseExceptionGroup as eg:
        raise first_error(eg) from None
    finally:
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    log.info("%s stopped", name)
    return 0


def first_error(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report for a failed task group: its first leaf, unwrapped."""
    first: BaseException = eg
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they have ended (their errors stay with their group).

    For an orderly stop: the tasks that use a server or the fabric end before those close.
    """
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)


def _hard_exit(name: str) -> None:
    log.error("%s: still running %.0fs after a forced stop; exiting", name, FORCE_EXIT_AFTER_S)
    os._exit(130)
