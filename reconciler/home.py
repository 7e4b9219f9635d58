"""The state directory every command shares: ``--state``, else ``$MYCO_HOME``, else ``./.myco``."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("MYCO_HOME")
    return Path(env) if env else Path(".myco")
