"""What the agent keeps in its state directory so a restarted agent re-adopts instances.

Layout of ``<state>``::

    audit.log                 state-changing API calls, one JSON line each (identity.audit)
    spores/<digest>.spore     fetched spores (verified again before every use)
    payloads/<digest>/        extracted payloads (the instances' working directories)
    instances/<id>.json       one per instance: config, pid + start ticks, port, limits
    logs/<id>.log[.N]         instance stdout+stderr, size-rotated

Every write is atomic (temp file + rename), so a ``kill -9`` never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reconciler.agent.nutrients import Limits
from reconciler.agent.runner import ProcInfo
from reconciler.files import atomic_write
from reconciler.model import Health, RestartPolicy
from reconciler.records import Nutrients

log = logging.getLogger("myco.agent")


@dataclass(frozen=True)
class InstanceConfig:
    """Everything needed to (re)start and supervise one instance, fixed at sprout time."""

    instance_id: str
    app: str
    digest: str
    node: str
    argv: tuple[str, ...]
    cwd: str
    version: str = ""
    env: tuple[tuple[str, str], ...] = ()
    nutrients: Nutrients = field(default_factory=Nutrients)
    health: Health = field(default_factory=Health)
    restart: RestartPolicy = field(default_factory=RestartPolicy)


@dataclass(frozen=True)
class PersistedInstance:
    config: InstanceConfig
    port: int
    limits: Limits
    proc: ProcInfo | None = None
    started_at: float = 0.0
    restarts: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> PersistedInstance:
        c = dict(d["config"])
        c["argv"] = tuple(c["argv"])
        c["env"] = tuple((str(k), str(v)) for k, v in c.get("env", ()))
        c["nutrients"] = Nutrients(**c["nutrients"])
        c["health"] = Health(**c["health"])
        c["restart"] = RestartPolicy(**c["restart"])
        lim = dict(d["limits"])
        lim["cgroup_dirs"] = tuple(lim.get("cgroup_dirs", ()))
        proc = d.get("proc")
        return PersistedInstance(
            config=InstanceConfig(**c),
            port=int(d["port"]),
            limits=Limits(**lim),
            proc=ProcInfo(**proc) if proc else None,
            started_at=float(d.get("started_at", 0.0)),
            restarts=int(d.get("restarts", 0)),
        )


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("spores", "payloads", "instances", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def spores(self) -> Path:
        return self.root / "spores"

    @property
    def payloads(self) -> Path:
        return self.root / "payloads"

    def log_path(self, instance_id: str) -> Path:
        return self.root / "logs" / f"{instance_id}.log"

    def save(self, inst: PersistedInstance) -> None:
        path = self.root / "instances" / f"{inst.config.instance_id}.json"
        atomic_write(path, json.dumps(inst.to_json(), sort_keys=True).encode())

    def forget(self, instance_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / "instances" / f"{instance_id}.json").unlink()

    def instance_ids(self) -> set[str]:
        """The instances persisted here (readable or not): their cgroups are kept."""
        return {p.stem for p in (self.root / "instances").glob("*.json")}

    def load_all(self) -> list[PersistedInstance]:
        out: list[PersistedInstance] = []
        for p in sorted((self.root / "instances").glob("*.json")):
            try:
                out.append(PersistedInstance.from_json(json.loads(p.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable instance state %s: %s", p, exc)
        return out
