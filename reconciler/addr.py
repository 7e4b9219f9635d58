"""The one address parser: ``HOST:PORT``, ``:PORT`` and ``[V6]:PORT``.

Every flag, config setting and record that holds an address goes through :func:`parse_addr`
(and is printed back with :func:`format_addr`), so a malformed address gets the same clear
error everywhere. :func:`choose_advertise` decides what a member advertises (the
probe that finds a route is passed in). Pure; no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Advertised:
    """What a member tells its peers: ``host``, and ``port`` (None: the port it binds)."""

    host: str
    port: int | None = None
    why: str = ""  # how ``host`` was found, for the start-up line ("" when it was given)

    def text(self, bound_port: int | None = None) -> str:
        port = self.port if self.port is not None else bound_port
        return self.host if port is None else format_addr(self.host, port)


#: route_to(seed_host, seed_port) -> the local address of the interface that routes there
RouteProbe = Callable[[str, int], str]


def choose_advertise(
    bind: str,
    advertise: str | None,
    seeds: Sequence[str],
    route_to: RouteProbe,
    *,
    error: type[Exception] = ConfigError,
) -> Advertised:
    """The gossip address to advertise: the pure decision behind ``--advertise``.

    * ``advertise`` given (``HOST`` or ``HOST:PORT``): that, unless it is a wildcard;
    * else a concrete bind host: the bind host;
    * else (a wildcard bind): the local address that routes to the first seed, found by
      ``route_to`` (no seed: refused, there is nothing to learn it from).

    A loopback address is refused when a seed is not loopback: no other host could reach it.
    ``route_to`` raising :class:`OSError` (no route) is refused too. Errors are ``error``.
    """
    bind_host, _ = parse_addr(bind, what="--gossip-bind", error=error)
    if advertise:
        if ":" in advertise:
            host, port = parse_addr(advertise, what="--advertise", error=error, allow_zero=False)
            chosen = Advertised(host, port)
        else:
            chosen = Advertised(advertise)
        if is_wildcard(chosen.host):
            raise error(
                f"cannot advertise {advertise}: no peer can reach a wildcard address; "
                "give --advertise HOST with this host's own address"
            )
    elif not is_wildcard(bind_host):
        chosen = Advertised(bind_host)
    elif not seeds:
        raise error(
            f"--gossip-bind {bind} listens on every address and there is no --join seed "
            "to learn the right one from: give --advertise HOST (the address other hosts "
            "reach this one at)"
        )
    else:
        seed = seeds[0]
        seed_host, seed_port = parse_addr(seed, what="--join address", error=error)
        try:
            host = route_to(seed_host, seed_port)
        except OSError as exc:
            raise error(
                f"cannot find the address that routes to seed {seed}: "
                f"{exc.strerror or exc}; give --advertise HOST"
            ) from None
        chosen = Advertised(host, None, f"the address that routes to seed {seed}")
    if is_loopback(chosen.host):
        for seed in seeds:
            seed_host, _ = parse_addr(seed, what="--join address", error=error)
            if not is_loopback(seed_host):
                raise error(
                    f"cannot advertise {chosen.text()} to seed {seed}: a loopback address "
                    "is unreachable from other hosts; give --advertise HOST (or "
                    "--gossip-bind 0.0.0.0:PORT to find it)"
                )
    return chosen


def url_host(bind_host: str, advertised_host: str | None) -> str:
    """The host to put in a URL for a server bound to ``bind_host``.

    A wildcard bind is shown as ``advertised_host`` (the address peers reach this host
    at), or loopback when there is none; a concrete host is shown as it is.
    """
    if is_wildcard(bind_host):
        return advertised_host or "127.0.0.1"
    return bind_host


def http_url(host: str, port: int) -> str:
    return f"http://{format_addr(host, port)}"
