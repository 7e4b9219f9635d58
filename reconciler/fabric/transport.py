"""The transport seam: best-effort packets (UDP) and reliable one-shot streams (TCP).

Both directions are callbacks, so the same protocol code runs on asyncio sockets, on the
in-memory network of the tests and on the simulator's virtual time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

from reconciler.addr import parse_addr
from reconciler.errors import FabricError

#: receiver(src_addr, data, stream): ``stream`` is True for data that came over TCP.
Receiver = Callable[[str, bytes, bool], None]


class Transport(Protocol):
    @property
    def addr(self) -> str:
        """The ``host:port`` others reach this member at."""
        ...

    def set_receiver(self, receiver: Receiver) -> None: ...

    def send_packet(self, addr: str, data: bytes) -> None:
        """Send one datagram; may be lost, never raises for network trouble."""
        ...

    def send_stream(self, addr: str, data: bytes) -> None:
        """Deliver ``data`` reliably as one message, or not at all; never raises."""
        ...


def member_addr(addr: str, what: str = "member address") -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); :class:`FabricError` if malformed.

    :func:`reconciler.addr.parse_addr` with the fabric's error type at its seam.
    """
    return parse_addr(addr, what=what, error=FabricError)


@functools.lru_cache(maxsize=4096)
def peer_addr(addr: str) -> tuple[str, int]:
    """:func:`member_addr` of a peer, cached: every packet sent names one."""
    return member_addr(addr)
