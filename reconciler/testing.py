"""The fakes Mycelium Mesh ships for tests: one public index, like ``trio.testing``.

Each part keeps its fakes next to the seam they stand in for; this module only names them,
so a test (ours or a user's) has one place to look::

    from reconciler.testing import MemoryNetwork, VirtualClock, open_memory_fabric

==========================  ================================================================
``VirtualClock``            time that moves only when told to (:mod:`reconciler.clock`)
``MemoryNetwork``           an in-memory gossip network: latency, loss, partitions
``open_memory_fabric``      a fabric member on a ``MemoryNetwork`` (async context manager)
``FakeRunner``, ``Script``  the agent's process runner, following a script of exits
``MockUpstream``,           the edge's upstream seam answering from a handler with
``MockResponse``            ``MockResponse`` values (:mod:`reconciler.edge.fake`)
``FakeDownstream``          the edge's client seam: a fixed request, the answer recorded
``StaticRouteSource``       a fixed route table for an edge without a mesh
``StaticSource``            a fixed garden for the reconcile loop (``.set()`` replaces it)
``agents_step``             a pure stand-in for the agents between two plans of the core
``make_nodes``,             values for the core's plan: nodes, apps, the desired state
``make_app``,
``make_desired``
==========================  ================================================================

Importing this module is cheap: each name is imported from its home on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.lazy import lazy_exports

if TYPE_CHECKING:
    from reconciler.agent.fake import FakeRunner, Script
    from reconciler.clock import VirtualClock
    from reconciler.core.sim import agents_step, make_app, make_desired, make_nodes
    from reconciler.edge.fake import FakeDownstream, MockResponse, MockUpstream
    from reconciler.edge.source import StaticRouteSource
    from reconciler.fabric.fabric import open_memory_fabric
    from reconciler.fabric.memory import MemoryNetwork
    from reconciler.reconcile.source import StaticSource

# name -> the module that defines it (the one place each fake lives).
_HOMES = {
    "VirtualClock": "reconciler.clock",
    "MemoryNetwork": "reconciler.fabric.memory",
    "open_memory_fabric": "reconciler.fabric.fabric",
    "FakeRunner": "reconciler.agent.fake",
    "Script": "reconciler.agent.fake",
    "MockUpstream": "reconciler.edge.fake",
    "MockResponse": "reconciler.edge.fake",
    "FakeDownstream": "reconciler.edge.fake",
    "StaticRouteSource": "reconciler.edge.source",
    "StaticSource": "reconciler.reconcile.source",
    "agents_step": "reconciler.core.sim",
    "make_app": "reconciler.core.sim",
    "make_desired": "reconciler.core.sim",
    "make_nodes": "reconciler.core.sim",
}


__getattr__ = lazy_exports(__name__, _HOMES)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "FakeRunner",
    "MemoryNetwork",
    "MockResponse",
    "MockUpstream",
    "FakeDownstream",
    "Script",
    "StaticRouteSource",
    "StaticSource",
    "VirtualClock",
    "agents_step",
    "make_app",
    "make_desired",
    "make_nodes",
    "open_memory_fabric",
]
