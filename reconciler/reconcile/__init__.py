"""The reconcile service (``myco reconcile``): garden in, intents and routes out.

A thin driver around the pure core (:mod:`reconciler.core`): :mod:`.source` reads the
garden (directory or Git), :mod:`.builder` builds and signs the spores the repo lacks,
:mod:`.mirror` turns the fabric into the core's input, :mod:`.lease` decides which
reconciler is active, :mod:`.loop` (:class:`ReconcileLoop`) ties them together,
:mod:`.http` serves the repo and the control API, :mod:`.service` is the composition root
of ``myco reconcile`` and :mod:`.apply` holds ``myco apply``/``diff`` (which reach a running
mesh through :class:`reconciler.client.MeshClient`).

Names are re-exported lazily, so importing this package loads nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.lazy import lazy_exports

if TYPE_CHECKING:
    from reconciler.reconcile.lease import Lease, LeaseConfig
    from reconciler.reconcile.loop import ReconcileLoop, ReconcileSettings
    from reconciler.reconcile.source import DirSource, GardenSource, GitSource, StaticSource

_EXPORTS = {
    "Lease": "reconciler.reconcile.lease",
    "LeaseConfig": "reconciler.reconcile.lease",
    "ReconcileLoop": "reconciler.reconcile.loop",
    "ReconcileSettings": "reconciler.reconcile.loop",
    "DirSource": "reconciler.reconcile.source",
    "GardenSource": "reconciler.reconcile.source",
    "GitSource": "reconciler.reconcile.source",
    "StaticSource": "reconciler.reconcile.source",
}

__all__ = [
    "DirSource",
    "GardenSource",
    "GitSource",
    "Lease",
    "LeaseConfig",
    "ReconcileLoop",
    "ReconcileSettings",
    "StaticSource",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
