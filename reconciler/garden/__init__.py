"""The garden: the directory of YAML documents that says what should run (format v1).

Its safe loader, schema validator and cross-document rules, the builder from a document to
the domain model (:mod:`reconciler.model`: ``AppSpec`` = ``Dna`` + ``Deployment``), the Git
source and the watcher; docs/garden.md says how and why.

Public API (see docs/INTERFACES.md)::

    read_garden(root) -> GardenResult          # .garden (valid apps, revision), .problems
    read_app_file(path) -> list[AppSpec]       # raises GardenInvalid / GardenLoadError
    GardenReader(root).read()                  # the same, re-parsing only changed files
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.lazy import lazy_exports

if TYPE_CHECKING:
    from reconciler.garden.reader import (
        GardenReader,
        GardenResult,
        find_repo_root,
        read_app_file,
        read_garden,
    )
    from reconciler.garden.schema import Problem

# Loaded on first use: processes that only need the model (agents, the edge) should not pay
# for the YAML loader, the schema and jsonschema.
_LAZY = {
    "GardenReader": "reconciler.garden.reader",
    "GardenResult": "reconciler.garden.reader",
    "find_repo_root": "reconciler.garden.reader",
    "read_app_file": "reconciler.garden.reader",
    "read_garden": "reconciler.garden.reader",
    "Problem": "reconciler.garden.schema",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "GardenReader",
    "GardenResult",
    "Problem",
    "find_repo_root",
    "read_app_file",
    "read_garden",
]
