""":class:`MeshStatus` as plain-text tables (``myco status``) and as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from reconciler.spore.deps import build_line

from .status import AppView, MeshStatus, NodeView


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, like ``kubectl get``; no trailing blanks."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row))
        lines.append(line.rstrip())
    return "\n".join(lines)


def _mb(mb: int) -> str:
    return f"{mb / 1024:.1f}Gi" if mb >= 1024 else f"{mb}Mi"


def _rollout(a: AppView) -> str:
    return "-" if a.rollout in ("", "idle") else f"{a.rollout} {a.ready}/{a.desired}"


def _short(revision: str) -> str:
    """A Git commit, or the content hash of a plain directory (``sha256:...``), shortened."""
    if revision.startswith("sha256:"):
        return revision[:19]
    return revision[:12] if len(revision) == 40 else revision


def _node_state(n: NodeView) -> str:
    flags = (",draining" if n.draining else "") + (",INSECURE" if n.insecure else "")
    return n.state + flags


def _target(target: object) -> str:
    if not isinstance(target, dict) or not target:
        return "-"
    kind, value = next(iter(target.items()))
    unit = {"p99_ms": "p99 {}ms", "rps_per_instance": "{} rps/inst"}
    return unit.get(str(kind), "{} in flight/inst").format(
        f"{value:g}" if isinstance(value, int | float) else value
    )


def _decision(block: dict[str, Any]) -> str:
    """The last change of the count and why, then what holds the count now."""
    words = []
    last = block.get("last")
    if isinstance(last, dict):
        move = f"{last.get('previous', '?')}->{last.get('desired', '?')}"
        words.append(f"{last.get('direction', '?')} {move}: {last.get('reason', '')}")
    for key in ("blocked", "pending", "warning"):
        if block.get(key):
            words.append(str(block[key]))
    if block.get("panic"):
        words.append("panic")
    return "; ".join(words) or "-"


def build_lines(st: MeshStatus) -> list[str]:
    """Builds under way (one line each) and failed builds' last output lines."""
    out: list[str] = []
    for a in st.apps:
        if a.building:
            elapsed = a.building.get("elapsed_s")
            seconds = float(elapsed) if isinstance(elapsed, int | float) else 0.0
            out.append(build_line(a.name, str(a.building.get("step", "")), seconds))
        if a.build_log:
            out.append(f"{a.name}: build failed; its last output lines:")
            out += [f"  | {line}" for line in a.build_log.splitlines()]
    return out


def render_text(st: MeshStatus) -> str:
    head = f"GARDEN  revision {_short(st.revision) or '-'}"
    if st.source:
        head += f"  source {st.source}"
    if st.reconciler:
        head += f"  (reported by {st.reconciler})"
    parts = [head]
    parts += [f"  problem: {p}" for p in st.problems]
    insecure = st.insecure_nodes()
    if insecure:
        parts.append(
            f"WARNING: {len(insecure)} node(s) run with --insecure (plaintext off loopback, "
            f"no --gossip-key): {', '.join(insecure)}"
        )
    parts.append("")
    parts.append("NODES")
    parts.append(
        table(
            ("NAME", "STATE", "ROLES", "CPU FREE/CAP", "MEM FREE/CAP", "INSTANCES", "API"),
            [
                (
                    n.name,
                    _node_state(n),
                    ",".join(n.roles) or "-",
                    f"{n.free_cpu_milli}m/{n.cpu_milli}m" if n.cpu_milli else "-",
                    f"{_mb(n.free_memory_mb)}/{_mb(n.memory_mb)}" if n.memory_mb else "-",
                    str(n.instances),
                    n.api_url or "-",
                )
                for n in st.nodes
            ],
        )
    )
    parts.append("")
    parts.append("APPS")
    parts.append(
        table(
            ("NAME", "SYNC", "HEALTH", "READY", "ROLLOUT", "REVISION", "PREFIX", "RPS", "REASON"),
            [
                (
                    a.name,
                    a.sync,
                    a.health,
                    f"{a.ready}/{a.desired}",
                    _rollout(a),
                    _short(a.revision) or "-",
                    a.prefix or "-",
                    f"{a.rps:g}",
                    a.reason,
                )
                for a in st.apps
            ],
        )
    )
    builds = build_lines(st)
    if builds:
        parts.append("")
        parts.append("BUILDS")
        parts += [f"  {line}" for line in builds]
    scaled = [a for a in st.apps if a.autoscale]
    if scaled:
        parts.append("")
        parts.append("AUTOSCALE")
        parts.append(
            table(
                ("NAME", "CURRENT", "DESIRED", "MIN", "MAX", "TARGET", "LAST DECISION"),
                [
                    (
                        a.name,
                        str(a.autoscale.get("current", a.ready)),
                        str(a.autoscale.get("desired", a.desired)),
                        str(a.autoscale.get("min", "-")),
                        str(a.autoscale.get("max", "-")),
                        _target(a.autoscale.get("target")),
                        _decision(a.autoscale),
                    )
                    for a in scaled
                ],
            )
        )
    parts.append("")
    parts.append("INSTANCES")
    parts.append(
        table(
            ("ID", "APP", "VERSION", "NODE", "PHASE", "RESTARTS", "ENDPOINT", "MESSAGE"),
            [
                (
                    i.instance_id,
                    i.app,
                    i.version or "-",
                    i.node,
                    i.phase,
                    str(i.restarts),
                    i.endpoint or "-",
                    i.message,
                )
                for i in st.instances
            ],
        )
    )
    return "\n".join(parts) + "\n"


def render_json(st: MeshStatus) -> str:
    return json.dumps(st.to_json(), indent=2, sort_keys=True) + "\n"
