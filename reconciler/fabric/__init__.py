"""The gossip control fabric: SWIM + Lifeguard membership, Scuttlebutt state.

Public API (see docs/fabric.md)::

    open_fabric(name, bind, seeds, ...) -> async context of Fabric   # UDP + TCP
    open_memory_fabric(name, MemoryNetwork(RealClock()), seeds)      # tests of other parts
    JoinSettings(...).open(name)                                     # how daemons join
    Fabric: FabricAPI  # publish/delete/get/items/members/subscribe/join/leave/close

Time comes from an injected :class:`~reconciler.clock.Clock` (re-exported here with
:class:`~reconciler.clock.RealClock` and :class:`~reconciler.clock.VirtualClock`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.lazy import lazy_exports

if TYPE_CHECKING:
    from reconciler.clock import Clock, RealClock, VirtualClock
    from reconciler.fabric.api import Change, FabricAPI, JSONValue, Member
    from reconciler.fabric.config import FabricConfig
    from reconciler.fabric.fabric import Fabric, Subscription, open_fabric, open_memory_fabric
    from reconciler.fabric.joining import JoinSettings
    from reconciler.fabric.keyring import Keyring
    from reconciler.fabric.memory import MemoryNetwork

# Loaded on first use: importing a submodule (the codec, the config) or the front door for
# one name should not pull in the engine, the sockets and the crypto.
_LAZY = {
    "Clock": "reconciler.clock",
    "RealClock": "reconciler.clock",
    "VirtualClock": "reconciler.clock",
    "Change": "reconciler.fabric.api",
    "FabricAPI": "reconciler.fabric.api",
    "JSONValue": "reconciler.fabric.api",
    "Member": "reconciler.fabric.api",
    "FabricConfig": "reconciler.fabric.config",
    "Fabric": "reconciler.fabric.fabric",
    "Subscription": "reconciler.fabric.fabric",
    "open_fabric": "reconciler.fabric.fabric",
    "open_memory_fabric": "reconciler.fabric.fabric",
    "JoinSettings": "reconciler.fabric.joining",
    "Keyring": "reconciler.fabric.keyring",
    "MemoryNetwork": "reconciler.fabric.memory",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "Change",
    "Clock",
    "Fabric",
    "FabricAPI",
    "FabricConfig",
    "JSONValue",
    "JoinSettings",
    "Keyring",
    "Member",
    "MemoryNetwork",
    "RealClock",
    "Subscription",
    "VirtualClock",
    "open_fabric",
    "open_memory_fabric",
]
