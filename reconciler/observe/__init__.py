"""Observe the mesh (DESIGN §9 ``observe/``): status, logs, metrics, dashboard, webhooks.

- :mod:`.snapshot` — a frozen fabric view and its wire format (``GET /v1/fabric``).
- :mod:`.status` — pure: snapshot -> :class:`MeshStatus`; :mod:`.render` — tables, JSON.
- :mod:`.client`, :mod:`.logs` — what ``myco status`` and ``myco logs`` use.
- :mod:`.metrics` — Prometheus ``/metrics`` per component.
- :mod:`.feed`, :mod:`.ui` — the live dashboard at ``/ui/`` (server-sent events).
- :mod:`.notify` — webhook notifications.

:mod:`.metrics` (which needs ``prometheus_client``) is not imported here, so that the CLI
verbs work without it: ``from reconciler.observe.metrics import Metrics``.
"""

from .notify import Event, WebhookConfig, WebhookNotifier, notify_from_fabric, status_events
from .snapshot import Entry, FabricSnapshot, snapshot_from_json, snapshot_of
from .status import AppView, InstanceView, MeshStatus, NodeView, build_status
from .ui import UiConfig, setup_ui, ui_app

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
