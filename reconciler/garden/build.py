"""Map one schema-valid document to the typed model (:class:`AppSpec` = DNA + deployment).

``spec.build`` (python / node / command) becomes :class:`~reconciler.model.Build`, part of
the DNA: a change to it rebuilds.

Pure: no I/O. ``source`` arrives already resolved by the caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.model import (
    TARGET_KINDS,
    AppSpec,
    Autoscale,
    Build,
    Deployment,
    Dna,
    Health,
    Origin,
    RestartPolicy,
    Rollout,
    ScaleStep,
    Security,
    Slo,
    TargetKind,
)
from reconciler.records import Nutrients


def _f(d: dict[str, Any], key: str, default: float) -> float:
    return float(d.get(key, default))


def build_of(spec: dict[str, Any]) -> Build | None:
    """The ``spec.build`` block as a :class:`Build` (``platform`` is left for the builder)."""
    b: dict[str, Any] | None = spec.get("build")
    if not b:
        return None
    if "python" in b:
        return Build(kind="python", requirements=str(b["python"]["requirements"]))
    if "node" in b:
        return Build(kind="node", lockfile=str(b["node"]["lockfile"]))
    cmd = b["command"]
    return Build(
        kind="command",
        command=tuple(str(a) for a in cmd["run"]),
        outputs=tuple(str(o) for o in cmd["outputs"]),
    )


def autoscale_of(spec: dict[str, Any], where: str = "") -> Autoscale | None:
    """The ``spec.autoscale`` block as :class:`Autoscale` (None without one).

    The rules module has already refused what the schema cannot say (``min > max``, no
    target and no ``slo.p99_budget_ms``); here the defaults are filled in.
    """
    a: dict[str, Any] | None = spec.get("autoscale")
    if a is None:
        return None
    target: dict[str, Any] = a.get("target") or {}
    kind: TargetKind = next((k for k in TARGET_KINDS if k in target), "p99_ms")
    value = target.get(kind)
    if value is None:  # the default target: the SLO's latency budget
        value = (spec.get("slo") or {}).get("p99_budget_ms") or 0
    up_d: dict[str, Any] = a.get("up") or {}
    down_d: dict[str, Any] = a.get("down") or {}
    up, down = ScaleStep(), Autoscale(max=1).down
    to_zero = a.get("to_zero_after_s")
    return Autoscale(
        max=int(a["max"]),
        min=int(a.get("min", 1)),
        target_kind=kind,
        target=float(value),
        up=ScaleStep(
            _f(up_d, "stabilize_s", up.stabilize_s), int(up_d.get("max_step", up.max_step))
        ),
        down=ScaleStep(
            _f(down_d, "stabilize_s", down.stabilize_s),
            int(down_d.get("max_step", down.max_step)),
        ),
        to_zero_after_s=float(to_zero) if to_zero is not None else None,
        where=where,
    )


def build_app(
    value: dict[str, Any], source: Path, origin: Origin, autoscale_at: str = ""
) -> AppSpec:
    """``autoscale_at``: where ``spec.autoscale.max`` is written (for later warnings)."""
    meta: dict[str, Any] = value["metadata"]
    spec: dict[str, Any] = value["spec"]
    name: str = meta["name"]
    nut = spec.get("nutrients", {})
    default_nut = Nutrients(100, 64)
    health_d = spec.get("health", {})
    hd = Health()
    restart_d = spec.get("restart", {})
    rd = RestartPolicy()
    roll_d = spec.get("rollout", {})
    ro = Rollout()
    sec = spec.get("security", {})
    dna = Dna(
        name=name,
        version=spec["version"],
        source=source,
        command=tuple(spec["command"]),
        args=tuple(spec.get("args", ())),
        env=tuple(sorted(spec.get("env", {}).items())),
        nutrients=Nutrients(
            int(nut.get("cpu_milli", default_nut.cpu_milli)),
            int(nut.get("memory_mb", default_nut.memory_mb)),
        ),
        slo=Slo(spec.get("slo", {}).get("p99_budget_ms")),
        security=Security(bool(sec.get("read_only_fs", False)), str(sec.get("lsm_profile", ""))),
        health=Health(
            path=health_d.get("path", hd.path),
            interval_s=_f(health_d, "interval_s", hd.interval_s),
            timeout_s=_f(health_d, "timeout_s", hd.timeout_s),
            grace_s=_f(health_d, "grace_s", hd.grace_s),
        ),
        restart=RestartPolicy(
            policy=restart_d.get("policy", rd.policy),
            backoff_initial_s=_f(restart_d, "backoff_initial_s", rd.backoff_initial_s),
            backoff_max_s=_f(restart_d, "backoff_max_s", rd.backoff_max_s),
            max_failures=int(restart_d.get("max_failures", rd.max_failures)),
            window_s=_f(restart_d, "window_s", rd.window_s),
            stop_grace_s=_f(restart_d, "stop_grace_s", rd.stop_grace_s),
        ),
        build=build_of(spec),
    )
    deployment = Deployment(
        instances=int(spec.get("instances", 1)),
        rollout=Rollout(
            strategy=roll_d.get("strategy", ro.strategy),
            warmup_s=_f(roll_d, "warmup_s", ro.warmup_s),
            max_surge=int(roll_d.get("max_surge", ro.max_surge)),
            max_unavailable=int(roll_d.get("max_unavailable", ro.max_unavailable)),
            canary_weight=int(roll_d.get("canary_weight", ro.canary_weight)),
            canary_steps=tuple(int(w) for w in roll_d.get("canary_steps", ())),
            progress_deadline_s=_f(roll_d, "progress_deadline_s", ro.progress_deadline_s),
        ),
        route_prefix=spec.get("route", {}).get("prefix", ""),
        depends_on=tuple(spec.get("depends_on", ())),
        suspend=bool(spec.get("suspend", False)),
        autoscale=autoscale_of(spec, autoscale_at),
    )
    labels = tuple(sorted(meta.get("labels", {}).items()))
    return AppSpec(name=name, dna=dna, deployment=deployment, labels=labels, origin=origin)
