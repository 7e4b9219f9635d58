"""Old home of the mesh client; everything here now lives in :mod:`reconciler.client`.

Kept as re-exports for callers not yet moved (``reconciler.mesh.up``, ``bench/``); new code
imports :mod:`reconciler.client` (:class:`~reconciler.client.MeshClient`).
"""

from __future__ import annotations

from reconciler.client import TOKEN_FILE, auth_headers, fetch_snapshot, normalize_api

__all__ = ["TOKEN_FILE", "auth_headers", "fetch_snapshot", "normalize_api"]
