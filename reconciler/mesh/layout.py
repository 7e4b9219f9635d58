"""Where a local mesh keeps its files, and the record that lets other commands find it.

``<state>/mesh.json`` is written by ``myco up`` once the mesh is ready and removed when it
stops. Short-lived verbs (``status``, ``logs``, ``apply``...) read ``agent_api`` from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reconciler import home
from reconciler.errors import ConfigError


def state_dir(explicit: str | None = None) -> Path:
    """The shared state directory, made absolute (children run elsewhere)."""
    return home.state_dir(explicit).resolve()


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
        path = state / "mesh.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        tmp.replace(path)

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
