"""Observe the mesh: status, logs, metrics, dashboard and webhooks, built from the fabric view.

Every service mounts these pieces, so any member can show the whole mesh:

- :mod:`.snapshot` — a frozen fabric view and its wire format (``GET /v1/fabric``).
- :mod:`.status` — pure: snapshot -> :class:`MeshStatus`; :mod:`.render` — tables, JSON.
- :mod:`.logs` — what ``myco logs`` uses (the mesh client is :mod:`reconciler.client`).
- :mod:`.metrics` — Prometheus ``/metrics`` per component.
- :mod:`.feed`, :mod:`.ui` — the live dashboard at ``/ui/`` (server-sent events).
- :mod:`.notify` — webhook notifications.

Names are re-exported lazily: importing this package (or the pure :mod:`.status`) loads
neither aiohttp nor prometheus_client. :mod:`.metrics` is not re-exported at all:
``from reconciler.observe.metrics import Metrics``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.lazy import lazy_exports

if TYPE_CHECKING:
    from reconciler.observe.notify import (
        Event,
        WebhookConfig,
        WebhookNotifier,
        notify_from_fabric,
        status_events,
    )
    from reconciler.observe.snapshot import (
        Entry,
        FabricSnapshot,
        snapshot_from_json,
        snapshot_of,
    )
    from reconciler.observe.status import (
        AppView,
        InstanceView,
        MeshStatus,
        NodeView,
        build_status,
    )
    from reconciler.observe.ui import UiConfig, setup_ui, ui_app

_LAZY = {
    "Event": "reconciler.observe.notify",
    "WebhookConfig": "reconciler.observe.notify",
    "WebhookNotifier": "reconciler.observe.notify",
    "notify_from_fabric": "reconciler.observe.notify",
    "status_events": "reconciler.observe.notify",
    "Entry": "reconciler.observe.snapshot",
    "FabricSnapshot": "reconciler.observe.snapshot",
    "snapshot_from_json": "reconciler.observe.snapshot",
    "snapshot_of": "reconciler.observe.snapshot",
    "AppView": "reconciler.observe.status",
    "InstanceView": "reconciler.observe.status",
    "MeshStatus": "reconciler.observe.status",
    "NodeView": "reconciler.observe.status",
    "build_status": "reconciler.observe.status",
    "UiConfig": "reconciler.observe.ui",
    "setup_ui": "reconciler.observe.ui",
    "ui_app": "reconciler.observe.ui",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "AppView",
    "Entry",
    "Event",
    "FabricSnapshot",
    "InstanceView",
    "MeshStatus",
    "NodeView",
    "UiConfig",
    "WebhookConfig",
    "WebhookNotifier",
    "build_status",
    "notify_from_fabric",
    "setup_ui",
    "snapshot_from_json",
    "snapshot_of",
    "status_events",
    "ui_app",
]
