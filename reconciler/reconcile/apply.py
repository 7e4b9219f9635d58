"""``myco apply`` and ``myco diff``: a garden against the running mesh.

* :func:`diff_against` plans the garden against a snapshot of the fabric (read through
  :class:`~reconciler.client.MeshClient`) and describes what would change
  (:mod:`.diff`), exactly as the active reconciler would plan it.
* :func:`apply_through` follows the active reconciler (which must watch the same
  directory) until it has converged to the garden's revision.
* :func:`apply_one_shot` is a reconciler for as long as it takes: it joins the fabric
  (:func:`.service.open_member`), holds the lease, converges, and gives the lease back.

Progress is handed to a ``show`` callback (the CLI renders it), dependency builds included
(each step one-shot; the builds under way, polled, through the reconciler); a timeout or
a refusal is an error of the tree in :mod:`reconciler.errors`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from reconciler.aio import first_error
from reconciler.client import MeshClient, active_reconciler
from reconciler.errors import ConfigError, PlanError
from reconciler.garden import GardenResult
from reconciler.reconcile.lease import LeaseConfig
from reconciler.reconcile.loop import ReconcileLoop, ReconcileSettings
from reconciler.reconcile.service import MemberConfig, open_member
from reconciler.reconcile.source import StaticSource
from reconciler.spore.deps import build_line


class Show(Protocol):
    """Where progress goes (the CLI prints it)."""

    def note(self, text: str) -> None:
        """One line about what is being done."""

    def apps(self, apps: Mapping[str, Mapping[str, Any]]) -> None:
        """Every app's status (``{app: {"sync":..., "health":..., ...}}``), often repeated."""

    def build(self, line: str) -> None:
        """A step of a dependency build (:func:`~reconciler.spore.deps.build_line`), maybe
        repeated."""


@dataclass(frozen=True)
class ApplyOptions:
    dir: Path
    wait: bool = False  # also wait until every app is Healthy
    timeout_s: float = 300.0
    allow_empty: bool = False


def finished(apps: Mapping[str, Mapping[str, Any]], healthy: bool) -> tuple[bool, bool]:
    """(finished, failed) for statuses: InvalidSpec fails; ``healthy`` wants all Healthy
    (but for the InvalidSpec apps: an app whose build failed will not get healthy)."""
    failed = any(s.get("sync") == "InvalidSpec" for s in apps.values())
    if healthy:
        ok = all(
            s.get("health") in ("Healthy", "Suspended") or s.get("sync") == "InvalidSpec"
            for s in apps.values()
        )
        degraded = any("reverted" in str(s.get("reason", "")) for s in apps.values())
        return ok or degraded, failed or degraded
    return True, failed


def _not_converged(timeout_s: float) -> PlanError:
    return PlanError(f"not converged after {timeout_s:g}s")


async def apply_through(
    client: MeshClient, holder: str, result: GardenResult, opts: ApplyOptions, show: Show
) -> bool:
    """An active reconciler exists: it must watch ``opts.dir``; follow it to convergence.

    True when converged without failures (or invalid documents).
    """
    status = await client.status()
    source = str(status.get("source", ""))
    same = bool(source) and await asyncio.to_thread(_same_dir, source, opts.dir)
    if not same:
        raise ConfigError(
            f"reconciler {holder} is active on {source or '?'}: change that garden "
            f"(or commit to it) instead of applying {opts.dir}"
        )
    show.note(f"applying {opts.dir} through reconciler {status.get('name', holder)}")
    revision = result.garden.revision
    deadline = time.monotonic() + opts.timeout_s
    while True:
        status = await client.status()
        building = status.get("building")
        if isinstance(building, dict):
            for app, entry in sorted(building.items()):
                if isinstance(entry, dict):
                    show.build(_entry_line(app, entry))
        apps = status.get("apps") or {}
        show.apps(apps)
        if status.get("revision") == revision and status.get("converged"):
            done, failed = finished(apps, opts.wait)
            if done:
                return not (failed or result.problems)
        if time.monotonic() > deadline:
            raise _not_converged(opts.timeout_s)
        await asyncio.sleep(0.25)  # the control API has no push; poll it


def _entry_line(app: str, entry: Mapping[str, Any]) -> str:
    elapsed = entry.get("elapsed_s")
    seconds = float(elapsed) if isinstance(elapsed, int | float) else 0.0
    return build_line(app, str(entry.get("step", "")), seconds)


def _same_dir(a: str, b: Path) -> bool:
    return Path(a).resolve() == b.resolve()


async def apply_one_shot(
    member: MemberConfig, result: GardenResult, opts: ApplyOptions, show: Show
) -> bool:
    """No reconciler runs: be one until the mesh has converged, then hand the lease back."""
    source = StaticSource(result, description=str(opts.dir.resolve()))
    settings = ReconcileSettings(
        allow_empty=opts.allow_empty, resync_s=0.5, lease=LeaseConfig(1.5, 0.3, 0.3)
    )
    try:
        async with open_member(member, source, settings) as rec, asyncio.TaskGroup() as tg:
            rec.step_listeners.append(lambda step: show.build(step.line()))
            task = tg.create_task(rec.run(), name="apply")
            try:
                return await _follow(rec, result, opts, show)
            finally:
                task.cancel()
    except BaseExceptionGroup as eg:  # the loop failed, or following it did
        raise first_error(eg) from None


async def _follow(rec: ReconcileLoop, result: GardenResult, opts: ApplyOptions, show: Show) -> bool:
    deadline = time.monotonic() + opts.timeout_s
    while True:
        holder = rec.lease.holder
        if holder and not rec.lease.active and holder != rec.fabric.name:
            raise ConfigError(f"reconciler {holder} became active; stopping")
        apps = {a: s.to_json() for a, s in rec.statuses.items()}
        show.apps(apps)
        if rec.converged.is_set() and rec.passes > 0:
            done, failed = finished(apps, opts.wait)
            if done:
                return not (failed or result.problems)
        if time.monotonic() > deadline:
            raise _not_converged(opts.timeout_s)
        await asyncio.sleep(0.1)  # statuses change inside the loop; look again


async def apply(
    client: MeshClient, member: MemberConfig, result: GardenResult, opts: ApplyOptions, show: Show
) -> bool:
    """Through the active reconciler if there is one (or ``--reconciler``), else one-shot."""
    holder = ""
    if client.reconciler is None and client.recorded:
        holder, _ = await client.active()
    if client.reconciler is not None or holder:
        return await apply_through(client, holder or await client.control_url(), result, opts, show)
    if not member.join.seeds and not (member.state / "mesh.json").exists():
        raise ConfigError("no mesh found: give --join ADDR (and --gossip-key), or run `myco up`")
    return await apply_one_shot(member, result, opts, show)


async def diff_against(
    client: MeshClient, result: GardenResult, repo_dir: Path | None = None
) -> list[str]:
    """What applying ``result`` would change in the running mesh, one line per app."""
    from reconciler.core.model import DesiredApp
    from reconciler.reconcile.builder import Overrides, SporeBuilder, desired_from
    from reconciler.reconcile.diff import UNBUILT, diff_lines
    from reconciler.reconcile.mirror import FabricMirror
    from reconciler.records import KEY_GARDEN
    from reconciler.repo import SporeRepo
    from reconciler.spore.build import dna_key

    snap = await client.fabric()
    repo_dir = repo_dir or client.state / "repo"
    builder = SporeBuilder(SporeRepo(repo_dir), None) if repo_dir.is_dir() else None
    holder, _ = active_reconciler(snap, time.time())
    record = snap.get(holder, KEY_GARDEN) if holder else None
    overrides = Overrides.from_json(record.get("overrides") if isinstance(record, dict) else None)
    desired = await asyncio.to_thread(
        desired_from, result.garden, builder, overrides=overrides, build=False
    )
    apps = dict(desired.apps)
    for name, app in apps.items():
        if not app.digest:
            key = await asyncio.to_thread(dna_key, app.spec.dna)
            apps[name] = DesiredApp(app.spec, UNBUILT + key[:16])
    desired = replace(desired, apps=apps)
    actual = FabricMirror(snap).actual(0, adopt=True)
    epochs = [r.epoch for r in actual.intents.values()] + [r.epoch for r in actual.routes.values()]
    actual = replace(actual, epoch=max(epochs, default=0))
    return diff_lines(desired, actual, time.time())
