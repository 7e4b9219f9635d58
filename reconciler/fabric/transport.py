"""The transport seam: best-effort packets (UDP) and reliable one-shot streams (TCP).

Both directions are callbacks, so the same protocol code runs on asyncio sockets, on the
in-memory network of the tests and on the simulator's virtual time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

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


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); ValueError if malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        raise ValueError(f"not host:port: {addr!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    p = int(port)
    if not 0 <= p <= 65535:
        raise ValueError(f"bad port in {addr!r}")
    return host, p
