"""Accepting client connections with a cap on how many are open (both front ends).

asyncio's ``Server`` accepts as fast as connections come and cannot be paused, so each
front end accepts through a :class:`Listener` instead: a reader on the listening socket
that accepts in batches and hands each socket to ``loop.connect_accepted_socket`` (works
on asyncio's loop and on uvloop). Every accepted connection holds a :class:`Slot` until
its protocol's ``connection_lost``; at ``max_connections`` open slots the listener stops
reading the listening socket (``loop.remove_reader``), so new connections wait in the
kernel's backlog instead of taking memory and file descriptors here, and it reads again
as soon as one closes (nginx's ``worker_connections`` works the same way). Running out
of file descriptors (``EMFILE``) pauses accepting for a second, as asyncio does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("myco.edge")

_BATCH = 64  # connections accepted per readiness event (asyncio's server takes 100)
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RESOURCE_PAUSE_S = 1.0


class Slot:
    """One open connection counted against the cap; :meth:`release` once it closed."""

    __slots__ = ("_listener",)

    def __init__(self, listener: Listener) -> None:
        self._listener: Listener | None = listener

    def release(self) -> None:
        """Free the slot (idempotent)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.released()


ProtocolFactory = Callable[[Slot], asyncio.BaseProtocol]


class Listener:
    """Accept on ``sock`` while fewer than ``max_connections`` are open."""

    def __init__(self, sock: socket.socket, factory: ProtocolFactory, max_connections: int) -> None:
        self.sock = sock
        self.factory = factory
        self.max_connections = max_connections
        self.open = 0  # accepted connections not closed yet
        self.paused_times = 0  # how often the cap (or EMFILE) stopped accepting
        self._reading = False
        self._stopped = False
        self._retry: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    @property
    def accepting(self) -> bool:
        """Whether the listening socket is being read (False at the cap, or stopped)."""
        return self._reading

    def start(self) -> None:
        self.sock.setblocking(False)
        self._resume()

    def _resume(self) -> None:
        if not self._reading and not self._stopped:
            self._reading = True
            self._loop.add_reader(self.sock.fileno(), self._accept)

    def _retry_now(self) -> None:
        self._retry = None
        if self.open < self.max_connections:
            self._resume()

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self.paused_times += 1
            self._loop.remove_reader(self.sock.fileno())

    def _accept(self) -> None:
        for _ in range(_BATCH):
            if self.open >= self.max_connections:
                self._pause()  # released() resumes below the cap
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    log.warning("edge: cannot accept: %s; pausing for a second", exc)
                    self._pause()
                    self._retry = self._loop.call_later(_RESOURCE_PAUSE_S, self._retry_now)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            conn.setblocking(False)
            self.open += 1
            task = self._loop.create_task(self._connect(conn, Slot(self)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, slot: Slot) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: self.factory(slot), sock=conn)
        except (OSError, RuntimeError) as exc:  # the client went away before we started
            log.debug("edge: accepted connection failed: %s", exc)
            conn.close()
            slot.release()  # a protocol that saw connection_made releases it too: idempotent
        except asyncio.CancelledError:
            conn.close()
            slot.release()
            raise

    def released(self) -> None:
        self.open -= 1
        if self.open < self.max_connections and self._retry is None:
            self._resume()

    async def stop(self) -> None:
        """Stop accepting and close the listening socket (new clients are refused)."""
        self._stopped = True
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
        self.sock.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
