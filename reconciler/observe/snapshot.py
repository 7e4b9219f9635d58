"""A frozen copy of a fabric view: what every observe tool reads, locally or over HTTP.

The wire format of ``GET /v1/fabric?prefix=`` (an agent's API) is::

    {"members": [{"name", "addr", "state", "incarnation"}],
     "entries": [{"owner", "key", "value", "version"}]}

:func:`snapshot_from_json` also accepts a bare list of entries (an agent that does not
send members yet); :func:`snapshot_of` takes the snapshot from a running member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from reconciler.errors import FabricError
from reconciler.fabric.api import FabricAPI, JSONValue, Member

_STATES = ("alive", "suspect", "dead", "left")


@dataclass(frozen=True)
class Entry:
    owner: str
    key: str
    value: JSONValue
    version: int = 0


@dataclass(frozen=True)
class FabricSnapshot:
    members: tuple[Member, ...] = ()
    entries: tuple[Entry, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "members": [
                {"name": m.name, "addr": m.addr, "state": m.state, "incarnation": m.incarnation}
                for m in self.members
            ],
            "entries": [
                {"owner": e.owner, "key": e.key, "value": e.value, "version": e.version}
                for e in self.entries
            ],
        }


def snapshot_of(fabric: FabricAPI, prefix: str = "") -> FabricSnapshot:
    """The merged view of a running member (keys of gone members left out), sorted."""
    version = getattr(fabric, "version", None)  # Fabric has it; the protocol does not
    entries = []
    for (owner, key), value in sorted(fabric.view(prefix).items()):
        v = version(owner, key) if callable(version) else None
        entries.append(Entry(owner, key, value, int(v) if isinstance(v, int) else 0))
    members = tuple(sorted(fabric.members(), key=lambda m: m.name))
    return FabricSnapshot(members, tuple(entries))


def snapshot_from_json(data: object) -> FabricSnapshot:
    """Parse the wire format above; raises :class:`FabricError` on anything else."""
    if isinstance(data, list):
        data = {"members": [], "entries": data}
    if not isinstance(data, dict):
        raise FabricError(f"fabric view: expected an object, got {type(data).__name__}")
    members = [_member(m) for m in _list(data, "members")]
    entries = [_entry(e) for e in _list(data, "entries")]
    return FabricSnapshot(tuple(members), tuple(entries))


def _list(data: dict[str, Any], name: str) -> Sequence[object]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise FabricError(f"fabric view: {name!r} is not a list")
    return value


def _member(m: object) -> Member:
    if not isinstance(m, dict) or not isinstance(m.get("name"), str):
        raise FabricError(f"fabric view: bad member {m!r:.80}")
    state = m.get("state", "alive")
    if state not in _STATES:
        raise FabricError(f"fabric view: member {m['name']!r} has unknown state {state!r}")
    inc = m.get("incarnation", 0)
    return Member(
        name=m["name"],
        addr=str(m.get("addr", "")),
        state=state,
        incarnation=inc if isinstance(inc, int) else 0,
    )


def _entry(e: object) -> Entry:
    if not isinstance(e, dict) or not isinstance(e.get("owner"), str):
        raise FabricError(f"fabric view: bad entry {e!r:.80}")
    if not isinstance(e.get("key"), str):
        raise FabricError(f"fabric view: bad entry {e!r:.80}")
    version = e.get("version", 0)
    return Entry(
        owner=e["owner"],
        key=e["key"],
        value=cast(JSONValue, e.get("value")),
        version=version if isinstance(version, int) else 0,
    )
