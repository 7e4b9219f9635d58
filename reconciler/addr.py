"""The one address parser: ``HOST:PORT``, ``:PORT`` and ``[V6]:PORT``.

Every flag, config setting and record that holds an address goes through :func:`parse_addr`
(and is printed back with :func:`format_addr`), so a malformed address gets the same clear
error everywhere. Pure; no I/O.
"""

from __future__ import annotations

import ipaddress

from reconciler.errors import ConfigError


def parse_addr(
    addr: str,
    *,
    default_host: str = "127.0.0.1",
    what: str = "address",
    error: type[Exception] = ConfigError,
    allow_zero: bool = True,
) -> tuple[str, int]:
    """``host:port``, ``:port`` or ``[v6]:port`` → ``(host, port)``.

    An empty host becomes ``default_host``; the brackets of an IPv6 literal are removed.
    Port 0 ("any free port") is refused when ``allow_zero`` is false. A malformed address
    raises ``error`` (a :class:`~reconciler.errors.MycoError` subclass chosen by the
    caller's layer) with a message naming ``what``.
    """
    text = addr.strip()
    host, sep, port_s = text.rpartition(":")
    if not sep:
        raise error(f"bad {what} {addr!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise error(f"bad {what} {addr!r}: write an IPv6 address as [ADDR]:PORT")
    if not port_s.isdigit():
        raise error(f"bad {what} {addr!r}: the port is not a number")
    port = int(port_s)
    if not 0 <= port <= 65535 or (port == 0 and not allow_zero):
        raise error(f"bad {what} {addr!r}: port out of range")
    return host or default_host, port


def format_addr(host: str, port: int) -> str:
    """The inverse of :func:`parse_addr` (``[v6]:port`` for IPv6 literals)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """True for the any-address binds (``0.0.0.0``, ``::``, empty)."""
    return host in ("", "0.0.0.0", "::")
