"""The state directory every command shares, and the record that finds a running mesh.

State directory: ``--state``, else ``$MYCO_HOME``, else ``./.myco``.
``<state>/mesh.json`` (:class:`MeshRecord`) is written by ``myco up`` once the mesh is
ready and removed when it stops; short-lived verbs (``status``, ``logs``, ``apply``...)
read ``agent_api`` from it (through :mod:`reconciler.client`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError
from reconciler.files import atomic_write


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("MYCO_HOME")
    return Path(env) if env else Path(".myco")


def absolute_state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The shared state directory, made absolute (children run elsewhere)."""
    return state_dir(explicit).resolve()


@dataclass(frozen=True)
class MeshRecord:
    pid: int  # the `myco up` process
    garden: str
    edge: str  # host:port of the edge
    agent_api: str  # http://host:port of the first agent
    agent_apis: list[str] = field(default_factory=list)
    edge_metrics: str = ""  # http://host:port/metrics of the edge
    seeds: list[str] = field(default_factory=list)  # gossip addresses
    children: dict[str, int] = field(default_factory=dict)  # name -> pid
    started_at: float = 0.0

    def save(self, state: Path) -> None:
        atomic_write(state / "mesh.json", json.dumps(asdict(self), indent=2), durable=False)

    @classmethod
    def load(cls, state: Path) -> MeshRecord | None:
        path = state / "mesh.json"
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable mesh record: {exc}") from exc
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{path}: unexpected mesh record: {exc}") from exc
