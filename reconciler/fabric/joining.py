"""How a daemon joins the fabric: one frozen settings object shared by every service.

``myco agent``, ``myco edge`` and ``myco reconcile`` take the same flags
(``--join``, ``--gossip-bind``, ``--advertise``, ``--gossip-key``, ``--cluster``,
``--profile``; see :mod:`reconciler.commands.options`) and turn them into a
:class:`JoinSettings`, which opens the member with :meth:`JoinSettings.open`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

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

    def keyring(self) -> Keyring | None:
        return Keyring.load(self.gossip_key) if self.gossip_key is not None else None

    @asynccontextmanager
    async def open(
        self, name: str, *, state_dir: Path | None = None, leave_on_exit: bool = True
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
        ) as fabric:
            yield fabric
