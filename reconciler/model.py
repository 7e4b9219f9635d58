"""The typed model of a garden (format v1, docs/garden.md).

An :class:`AppSpec` splits in two:

* :class:`Dna` — what determines the spore: its files (``source``) and everything signed
  into ``manifest.json``. A change here means a new spore (a new digest).
* :class:`Deployment` — how many, how to roll out, where to route, ordering and pausing.
  A change here never rebuilds anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reconciler.records import Nutrients

Strategy = Literal["blue-green", "rolling", "canary"]


@dataclass(frozen=True)
class Health:
    path: str = "/health"
    interval_s: float = 1.0
    timeout_s: float = 1.0
    grace_s: float = 10.0  # time allowed from start to first passing check


@dataclass(frozen=True)
class Security:
    read_only_fs: bool = False
    lsm_profile: str = ""


@dataclass(frozen=True)
class Slo:
    p99_budget_ms: int | None = None


@dataclass(frozen=True)
class RestartPolicy:
    """How the agent restarts an instance that exits or fails its health check."""

    policy: Literal["always", "on-failure", "never"] = "always"
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_failures: int = 5  # consecutive failures within ``window_s`` that make a crash loop
    window_s: float = 60.0
    stop_grace_s: float = 5.0  # SIGTERM → SIGKILL


BuildKind = Literal["python", "node", "command"]


@dataclass(frozen=True)
class Build:
    """A reproducible dependency build whose output is vendored into the spore's payload.

    Its inputs (the lock file's bytes are hashed with the source; the fields below; the
    target ``platform``) are part of the DNA, so a change to any of them rebuilds.
    """

    kind: BuildKind
    requirements: str = ""  # python: a pinned lock file, relative to ``source``
    lockfile: str = ""  # node: package-lock.json, relative to ``source``
    command: tuple[str, ...] = ()  # command: the build command, run in a copy of ``source``
    outputs: tuple[str, ...] = ()  # command: the paths it produces, relative to ``source``
    #: the platform the output is for ("" until the builder resolves it; "any" for pure code),
    #: e.g. "cp311-manylinux_x86_64" or "node20-linux_x64"; agents run only what matches
    platform: str = ""


@dataclass(frozen=True)
class Dna:
    """Everything that goes into the signed spore manifest (plus the files under ``source``)."""

    name: str
    version: str
    source: Path  # absolute, resolved; inside the garden's repository root
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs: hashable, canonical
    nutrients: Nutrients = field(default_factory=lambda: Nutrients(100, 64))
    slo: Slo = field(default_factory=Slo)
    security: Security = field(default_factory=Security)
    health: Health = field(default_factory=Health)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    build: Build | None = None


@dataclass(frozen=True)
class Rollout:
    strategy: Strategy = "blue-green"
    warmup_s: float = 2.0
    max_surge: int = 1  # rolling
    max_unavailable: int = 0  # rolling
    canary_weight: int = 10  # canary: percent of traffic to the new version
    canary_steps: tuple[int, ...] = ()  # canary: optional weights to pass through
    progress_deadline_s: float = 120.0


TargetKind = Literal["p99_ms", "rps_per_instance", "inflight_per_instance"]
TARGET_KINDS: tuple[TargetKind, ...] = ("p99_ms", "rps_per_instance", "inflight_per_instance")


@dataclass(frozen=True)
class ScaleStep:
    """One direction of scaling: how long a wish must hold, and how far one decision goes."""

    stabilize_s: float = 0.0
    max_step: int = 0  # 0: no limit


@dataclass(frozen=True)
class Autoscale:
    """``spec.autoscale`` (docs/autoscale.md): the reconciler sets the count from the edge's
    signals, within ``[min, max]`` and the nutrient credits. A deployment field.

    ``target_kind``/``target`` are resolved when the garden is read: without
    ``autoscale.target`` they are ``p99_ms`` = ``slo.p99_budget_ms``.
    """

    max: int
    min: int = 1
    target_kind: TargetKind = "p99_ms"
    target: float = 0.0
    up: ScaleStep = field(default_factory=ScaleStep)
    down: ScaleStep = field(default_factory=lambda: ScaleStep(stabilize_s=60.0))
    to_zero_after_s: float | None = None  # None: never below ``min``
    #: where ``autoscale.max`` is written ("path:line:col"), for warnings about it
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class Deployment:
    """Fields that never trigger a rebuild."""

    instances: int = 1  # with ``autoscale``: the starting count
    rollout: Rollout = field(default_factory=Rollout)
    route_prefix: str = ""  # "" means "/<name>"
    depends_on: tuple[str, ...] = ()
    suspend: bool = False
    autoscale: Autoscale | None = None


@dataclass(frozen=True)
class Origin:
    """Where a document came from: the file, and the line of its first node (1-based)."""

    path: str
    line: int = 1
    col: int = 1


@dataclass(frozen=True)
class AppSpec:
    name: str
    dna: Dna
    deployment: Deployment
    labels: tuple[tuple[str, str], ...] = ()
    origin: Origin = field(default_factory=lambda: Origin(""))

    @property
    def prefix(self) -> str:
        return self.deployment.route_prefix or f"/{self.name}"


@dataclass(frozen=True)
class Garden:
    """A whole garden at one revision: the valid apps plus what was wrong with the rest."""

    apps: tuple[AppSpec, ...]
    revision: str = ""  # Git commit SHA, or a content hash for a plain directory
    source: str = ""  # the directory or Git URL it was read from
    invalid: tuple[tuple[str, str], ...] = ()  # (app name or file, first error line)
