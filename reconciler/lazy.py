"""Lazy re-exports for the packages' front doors (PEP 562 module ``__getattr__``).

Every subpackage's ``__init__`` names its public API in a table ``name -> module`` and sets
``__getattr__ = lazy_exports(__name__, TABLE)``: importing the package (or one pure module
of it) loads nothing else, and a name is imported on first use, then cached as a plain
attribute. Its ``TYPE_CHECKING`` imports give type checkers the same names.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``table[name]`` on first use."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # the next lookup is a plain attribute
        return value

    return __getattr__
