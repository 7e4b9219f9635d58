"""The content-addressed spore repository and its HTTP face.

Public API (see docs/spore.md)::

    SporeRepo(root).put(path) -> digest        # atomic, idempotent; .path(digest) re-hashes
    SporeRepo(root).list() -> list[RepoEntry]  # also .has, .record_dna_key, .lookup_dna_key
    check_digest(digest) -> digest             # RepoError unless 64 lowercase hex digits
    repo_app(repo) / spore_routes(repo)        # serve GET /spores/<digest> (aiohttp)
    await fetch_spore(session, base_url, digest, dest_dir) -> Path

The store lives in :mod:`.store`, the HTTP server and client in :mod:`.http`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.lazy import lazy_exports

if TYPE_CHECKING:
    from reconciler.repo.http import fetch_spore, repo_app, spore_routes
    from reconciler.repo.store import DIGEST_RE, RepoEntry, SporeRepo, check_digest

# Loaded on first use: the HTTP face pulls in aiohttp, which a build or a CLI listing of a
# local repository does not need.
_LAZY = {
    "DIGEST_RE": "reconciler.repo.store",
    "RepoEntry": "reconciler.repo.store",
    "SporeRepo": "reconciler.repo.store",
    "check_digest": "reconciler.repo.store",
    "fetch_spore": "reconciler.repo.http",
    "repo_app": "reconciler.repo.http",
    "spore_routes": "reconciler.repo.http",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "DIGEST_RE",
    "RepoEntry",
    "SporeRepo",
    "check_digest",
    "fetch_spore",
    "repo_app",
    "spore_routes",
]
