"""The gossip control fabric (DESIGN §3): SWIM + Lifeguard membership, Scuttlebutt state.

Other parts use :class:`Fabric` (which implements :class:`~.api.FabricAPI`), usually
through :func:`open_fabric`; tests may use :func:`open_memory_fabric` with a
:class:`~.memory.MemoryNetwork`.
"""

from .api import Change, FabricAPI, JSONValue, Member
from .clock import AsyncioScheduler, VirtualScheduler
from .config import FabricConfig
from .fabric import Fabric, Subscription, open_fabric, open_memory_fabric
from .keyring import Keyring
from .memory import MemoryNetwork

__all__ = [
    "AsyncioScheduler",
    "Change",
    "Fabric",
    "FabricAPI",
    "FabricConfig",
    "JSONValue",
    "Keyring",
    "Member",
    "MemoryNetwork",
    "Subscription",
    "VirtualScheduler",
    "open_fabric",
    "open_memory_fabric",
]
