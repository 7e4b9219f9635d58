"""Picking a port for a listener that starts later (``myco up`` decides every address first).

``bind(0)`` hands out a port from the kernel's *ephemeral* range, the same range outgoing
connections take their local ports from: a port chosen that way and bound a second later
by a child process can meanwhile have become the local end of someone's connection
("address already in use"). :func:`free_port` therefore picks from just below the
ephemeral range, where no outgoing connection ever lands, and checks the port binds now.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_SPAN = 16_000  # how far below the ephemeral range to look
_FLOOR = 10_000


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default 32768-60999)."""
    try:
        low, high = (int(x) for x in _RANGE_FILE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1", *, attempts: int = 200) -> int:
    """A TCP port that binds on ``host`` now, outside the ephemeral range when possible."""
    low, _ = ephemeral_range()
    start = max(_FLOOR, low - _SPAN)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if low - start >= 100:
        for _ in range(attempts):
            port = random.randrange(start, low)
            if _binds(family, host, port):
                return port
    with socket.socket(family, socket.SOCK_STREAM) as s:  # no room below: the kernel's pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _binds(family: socket.AddressFamily, host: str, port: int) -> bool:
    with (
        socket.socket(family, socket.SOCK_STREAM) as tcp,
        socket.socket(family, socket.SOCK_DGRAM) as udp,
    ):  # gossip binds UDP and TCP on one port
        try:
            tcp.bind((host, port))
            udp.bind((host, port))
        except OSError:
            return False
    return True
