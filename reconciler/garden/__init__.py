"""The garden: format v1 (DESIGN §5), its loader, validator, typed model, Git source, watcher.

Public API (see docs/INTERFACES.md)::

    read_garden(root) -> GardenResult          # .garden (valid apps, revision), .problems
    read_app_file(path) -> list[AppSpec]       # raises GardenInvalid / GardenLoadError
    GardenReader(root).read()                  # the same, re-parsing only changed files
"""

from __future__ import annotations

from reconciler.garden.reader import (
    GardenReader,
    GardenResult,
    find_repo_root,
    read_app_file,
    read_garden,
)
from reconciler.garden.schema import Problem

__all__ = [
    "GardenReader",
    "GardenResult",
    "Problem",
    "find_repo_root",
    "read_app_file",
    "read_garden",
]
