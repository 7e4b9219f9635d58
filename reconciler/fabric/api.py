"""What the other parts may use of the control fabric (docs/fabric.md).

This is the contract between the fabric and its users (agent, edge, reconciler, observe).
:class:`reconciler.fabric.Fabric` implements it over a real or in-memory transport.

State is a set of per-owner maps ``key -> (JSON value, version)``. A member writes only
its own keys (``publish``/``delete``) and reads the merged view of everybody's keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

JSONValue: TypeAlias = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]

MemberState = Literal["alive", "suspect", "dead", "left"]


@dataclass(frozen=True)
class Member:
    name: str
    addr: str  # "host:port" of its gossip endpoint
    state: MemberState
    incarnation: int


@dataclass(frozen=True)
class Change:
    """One key of one owner changed (``value`` None: deleted, or its owner is gone)."""

    owner: str
    key: str
    value: JSONValue
    version: int


# Signed records (docs/identity.md): the engine asks a guard, which lives in
# reconciler.identity (a part beside this one), through this protocol.
PENDING = "no-certificate"  # admit(): the writer's certificate has not arrived yet
CERT_PREFIX = "certs/"  # keys holding a member's certificate chain


class RecordGuard(Protocol):
    def sign(self, owner: str, key: str, version: int, value: JSONValue) -> str:
        """This member's signature of one of its records (``owner``: this member's name)."""
        ...

    def admit(self, owner: str, key: str, version: int, value: JSONValue, sig: str) -> str:
        """ "" if another member's record may be used, else why not (``PENDING``: park it)."""
        ...

    def park(self, owner: str, item: object) -> None: ...

    def unpark(self, owner: str) -> list[object]: ...

    def applied(self, owner: str, key: str, version: int, value: JSONValue) -> list[str]:
        """An admitted record was stored; returns owners to hide from now on (revoked)."""
        ...

    def blocked(self, owner: str) -> bool: ...

    def forget(self, owner: str) -> None: ...

    def cert_record(self) -> tuple[str, dict[str, JSONValue]]:
        """This member's ``certs/<name>`` record, published first and after a renewal."""
        ...


class FabricAPI(Protocol):
    @property
    def name(self) -> str:
        """This member's name (the node id)."""
        ...

    def publish(self, key: str, value: JSONValue) -> None:
        """Set one of this member's own keys; spreads eagerly and by anti-entropy."""
        ...

    def delete(self, key: str) -> None:
        """Remove one of this member's own keys (a versioned tombstone)."""
        ...

    def get(self, owner: str, key: str) -> JSONValue:
        """The value of ``owner``'s ``key`` in the merged view, or None."""
        ...

    def view(
        self, prefix: str = "", *, include_gone: bool = False
    ) -> dict[tuple[str, str], JSONValue]:
        """``(owner, key) -> value`` for every key starting with ``prefix``.

        Keys of members that are dead or have left are left out unless ``include_gone``.
        """
        ...

    def subscribe(self, prefix: str = "") -> AsyncIterator[Change]:
        """Changes to keys starting with ``prefix``, as they are merged (local ones too).

        Membership changes that hide or reveal an owner's keys are delivered as changes.
        The iterator ends when the fabric stops.
        """
        ...

    def members(self) -> Sequence[Member]:
        """Every member known, this one included, with its state."""
        ...

    async def join(self, addrs: Sequence[str]) -> int:
        """Contact ``addrs`` (``host:port``) and merge; returns how many answered."""
        ...

    async def leave(self) -> None:
        """Announce a graceful leave (others show this member as ``left``)."""
        ...
