"""How a daemon joins the fabric: one frozen settings object shared by every service.

``myco agent``, ``myco edge`` and ``myco reconcile`` take the same flags
(``--join``, ``--gossip-bind``, ``--advertise``, ``--gossip-key``, ``--cluster``,
``--profile``; see :mod:`reconciler.commands.options`) and turn them into a
:class:`JoinSettings`, which opens the member with :meth:`JoinSettings.open`.

:meth:`JoinSettings.resolved` settles what the member advertises
(:func:`reconciler.addr.choose_advertise`): with a wildcard ``--gossip-bind`` and no
``--advertise``, the local address of the interface that routes to the first seed, found by
:func:`route_source` (a UDP ``connect()``, which sends nothing).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.addr import RouteProbe, choose_advertise, is_loopback, is_wildcard, parse_addr
from reconciler.errors import FabricError
from reconciler.fabric.api import RecordGuard
from reconciler.fabric.config import Profile
from reconciler.fabric.fabric import Fabric, open_fabric
from reconciler.fabric.keyring import Keyring


@dataclass(frozen=True)
class JoinSettings:
    """Where this member listens, what it tells peers, whom it joins, and its keyring."""

    bind: str = "127.0.0.1:0"
    seeds: tuple[str, ...] = ()
    advertise: str | None = None  # host[:port] peers should use; default: the bound address
    gossip_key: Path | None = None  # keyring file; None gossips in plaintext
    cluster: str = "myco"
    profile: Profile = "local"
    insecure: bool = False  # --insecure: plaintext off loopback allowed (and published)
    advertise_why: str = ""  # how the advertised host was found (for the start-up line)

    def resolved(
        self, route_to: RouteProbe | None = None, *, error: type[Exception] = FabricError
    ) -> JoinSettings:
        """These settings with the advertised host settled (see the module docstring);
        refusals (a wildcard or unreachable address) raise ``error``."""
        chosen = choose_advertise(
            self.bind, self.advertise, self.seeds, route_to or route_source, error=error
        )
        advertise = self.advertise or (chosen.host if chosen.why else None)
        return replace(self, advertise=advertise, advertise_why=chosen.why)

    def advertised_host(self) -> str:
        """The host peers reach this member at (``--advertise``, else the bound host)."""
        if self.advertise:
            if ":" in self.advertise:
                return parse_addr(self.advertise, error=FabricError)[0]
            return self.advertise
        return parse_addr(self.bind, error=FabricError)[0]

    def plaintext_off_loopback(self) -> bool:
        """Gossip without a keyring on an address other hosts can reach."""
        host = parse_addr(self.bind, error=FabricError)[0]
        return self.gossip_key is None and (is_wildcard(host) or not is_loopback(host))

    def describe(self, addr: str) -> str:
        """``addr`` for a start-up line, with how it was found and any ``--insecure``."""
        text = addr
        if self.advertise_why:
            text = f"advertising {addr} ({self.advertise_why})"
        if self.insecure:
            text += ", INSECURE (plaintext off loopback allowed by --insecure)"
        return text

    def keyring(self) -> Keyring | None:
        return Keyring.load(self.gossip_key) if self.gossip_key is not None else None

    @asynccontextmanager
    async def open(
        self,
        name: str,
        *,
        state_dir: Path | None = None,
        leave_on_exit: bool = True,
        guard: RecordGuard | None = None,
    ) -> AsyncIterator[Fabric]:
        """The member ``name``, started and joined; left (if asked) and stopped on exit."""
        async with open_fabric(
            name,
            bind=self.bind,
            seeds=self.seeds,
            keyring=self.keyring(),
            cluster=self.cluster,
            profile=self.profile,
            state_dir=state_dir,
            advertise=self.advertise,
            leave_on_exit=leave_on_exit,
            guard=guard,
        ) as fabric:
            yield fabric


def route_source(host: str, port: int) -> str:
    """The local address of the interface that routes to ``host:port``.

    A UDP socket's ``connect()`` only picks the route (no packet is sent); ``OSError`` when
    there is none (or ``host`` does not resolve).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])
