"""``myco reconcile`` as a service: the composition root of the reconciler daemon.

The CLI turns its flags into a frozen :class:`ReconcileConfig` and calls :func:`run`; here
the parts are put together and run through :func:`reconciler.aio.run_until_signalled`:

* :func:`open_member` joins the fabric, makes the :class:`ReconcileLoop` and serves the
  spore repo, the control API, ``/metrics`` and ``/ui`` (one aiohttp server); ``myco apply``
  uses the same member for a one-shot reconcile;
* :func:`main` runs the loop and one webhook sender per ``--notify-webhook`` as tasks of the
  service (:meth:`Service.spawn`): if one of them ends or fails, the process stops with
  :class:`~reconciler.errors.ServiceFailed` instead of running on half alive;
* ``<state>/reconciler.json`` (name, control URL, pid) exists while it runs.

The spore/control URL published to agents is ``--repo-url`` if given, else the served one:
for a wildcard ``--repo-listen``, ``http://<advertised gossip host>:<port>``.

A graceful stop (SIGINT/SIGTERM) cancels the tasks, gives the lease up, stops the server and
leaves the fabric, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from reconciler.addr import is_wildcard, parse_addr
from reconciler.aio import Service, run_until_signalled, stop_tasks
from reconciler.errors import UsageError
from reconciler.fabric.api import FabricAPI
from reconciler.fabric.joining import JoinSettings
from reconciler.files import atomic_write
from reconciler.home import MeshRecord
from reconciler.logs import announce
from reconciler.reconcile.builder import Overrides, SporeBuilder
from reconciler.reconcile.lease import LeaseConfig
from reconciler.reconcile.loop import ReconcileLoop, ReconcileSettings, load_overrides
from reconciler.reconcile.source import DirSource, GardenSource, GitSource

log = logging.getLogger("myco.reconciler")

#: Opens the fabric member named by its argument (tests pass an in-memory fabric).
FabricOpener = Callable[[str], AbstractAsyncContextManager[FabricAPI]]

INFO_FILE = "reconciler.json"


@dataclass(frozen=True)
class MemberConfig:
    """A reconciler's place in the mesh: name, fabric, keys, repo and served address."""

    state: Path  # absolute
    join: JoinSettings = field(default_factory=JoinSettings)
    name: str = ""  # default reconciler-<host>-<pid>
    key: Path | None = None  # signs spores (default: <identity>/signing.key, if any)
    repo: Path | None = None  # default <state>/repo
    listen: str = "127.0.0.1:0"  # the repo + control API
    public_url: str = ""  # what agents fetch spores from (default: the served URL)
    build_timeout_s: float = 600.0  # one dependency installer or build command run

    def member_name(self) -> str:
        return self.name or f"reconciler-{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class GardenSpec:
    """What the reconciler follows: a directory (``watch``) or a Git remote and branch."""

    watch: Path | None = None
    git: str = ""
    branch: str = "main"
    subdir: str = ""
    interval_s: float = 5.0

    def describe(self) -> str:
        if self.watch is not None:
            return f"watching {self.watch}"
        return f"following {self.git}@{self.branch}" + (f" ({self.subdir})" if self.subdir else "")

    def open(self) -> GardenSource:
        if self.watch is not None:
            if not self.watch.is_dir():
                raise UsageError(f"--watch {self.watch}: not a directory")
            return DirSource(self.watch.resolve())
        if not self.git:
            raise UsageError("give --watch DIR or --git URL")
        if self.interval_s <= 0:
            raise UsageError("--interval must be positive")
        return GitSource(self.git, self.branch, self.interval_s, subdir=self.subdir)


@dataclass(frozen=True)
class ReconcileConfig:
    """Everything ``myco reconcile`` was told."""

    member: MemberConfig
    garden: GardenSpec
    allow_empty: bool = False
    lease_ttl_s: float = 3.0
    webhooks: tuple[str, ...] = ()

    def settings(self) -> ReconcileSettings:
        ttl = self.lease_ttl_s
        lease = LeaseConfig(ttl_s=ttl, renew_s=ttl / 3, settle_s=min(1.0, ttl / 4))
        return ReconcileSettings(allow_empty=self.allow_empty, lease=lease)


def run(config: ReconcileConfig) -> int:
    """Run the reconciler until SIGINT/SIGTERM (exit 0) or a failure (raised)."""
    source = config.garden.open()
    try:
        return run_until_signalled(partial(main, config=config, source=source), name="reconcile")
    finally:
        source.close()


async def main(
    service: Service,
    *,
    config: ReconcileConfig,
    source: GardenSource,
    open_fabric: FabricOpener | None = None,
) -> None:
    """The reconciler service: runs until the service stops or one of its tasks fails."""
    state = config.member.state
    state.mkdir(parents=True, exist_ok=True)
    overrides_path = state / "overrides.json"
    overrides = load_overrides(overrides_path)
    member = open_member(config.member, source, config.settings(), overrides, open_fabric)
    async with member as rec:
        rec.overrides_path = overrides_path
        tasks = [service.spawn("the reconcile loop", rec.run())]
        tasks += _spawn_notifiers(service, config.webhooks, rec.fabric)
        info = state / INFO_FILE
        try:
            record = {"name": rec.fabric.name, "control_url": rec.control_url, "pid": os.getpid()}
            atomic_write(info, json.dumps(record, indent=2) + "\n", durable=False)
            announce("%s", startup_line(rec, config))
            await service.stopping.wait()
        finally:
            await stop_tasks(tasks)  # before the server and the fabric they use go away
            with contextlib.suppress(OSError):
                info.unlink()


def startup_line(rec: ReconcileLoop, config: ReconcileConfig) -> str:
    gossip = config.member.join.describe(getattr(rec.fabric, "addr", "") or "?")
    return (
        f"reconciler {rec.fabric.name}: {config.garden.describe()}, repo and control API "
        f"{rec.control_url}, dashboard {rec.control_url}/ui/, gossip {gossip}"
    )


def _spawn_notifiers(
    service: Service, urls: Iterable[str], fabric: FabricAPI
) -> list[asyncio.Task[None]]:
    """One webhook sender per URL, fed from the fabric: never in the reconcile loop's way."""
    from reconciler.observe.notify import WebhookConfig, WebhookNotifier, notify_from_fabric

    tasks = []
    for url in urls:
        notifier = WebhookNotifier(WebhookConfig(url))
        tasks.append(service.spawn(f"webhook sender {url}", notifier.run()))
        tasks.append(service.spawn(f"webhook feed {url}", notify_from_fabric(fabric, notifier)))
    return tasks


def _identity_dir(state: Path) -> Path | None:
    """``<state>/identity``, else ``<state>/../identity`` (as ``myco up`` lays it out)."""
    for candidate in (state / "identity", state.parent / "identity"):
        if candidate.is_dir():
            return candidate
    return None


def identity_gossip_key(state: Path) -> Path | None:
    """The keyring of the identity beside ``state`` (as ``myco up`` lays it out), if any."""
    identity = _identity_dir(state)
    key = identity / "gossip.key" if identity is not None else None
    return key if key is not None and key.is_file() else None


def advertised_host(fabric: FabricAPI) -> str | None:
    """The host of the member's gossip address, which peers reach (None if unknown)."""
    try:
        host, _ = parse_addr(str(getattr(fabric, "addr", "")), error=ValueError)
    except ValueError:
        return None
    return None if is_wildcard(host) else host


def resolve(config: MemberConfig) -> MemberConfig:
    """Fill in what the state directory knows: keys from the identity, seeds from mesh.json."""
    identity = _identity_dir(config.state)
    join = config.join
    if join.gossip_key is None and identity is not None:
        join = replace(join, gossip_key=identity / "gossip.key")
    if not join.seeds:
        record = MeshRecord.load(config.state)
        if record is not None and record.seeds:
            join = replace(join, seeds=tuple(record.seeds))
    key = config.key or (identity / "signing.key" if identity is not None else None)
    return replace(config, join=join, key=key)


@contextlib.asynccontextmanager
async def open_member(
    config: MemberConfig,
    source: GardenSource,
    settings: ReconcileSettings,
    overrides: Overrides | None = None,
    open_fabric: FabricOpener | None = None,
) -> AsyncIterator[ReconcileLoop]:
    """A ReconcileLoop joined to the fabric, its repo + control API served (not yet run)."""
    from reconciler.reconcile.http import make_app
    from reconciler.repo import SporeRepo
    from reconciler.spore.deps import BuildSettings
    from reconciler.webserve import start_app

    config = resolve(config)
    host, port = parse_addr(config.listen, what="--repo-listen", error=UsageError)
    repo = SporeRepo(config.repo or config.state / "repo")
    name = config.member_name()
    opener: FabricOpener = open_fabric or partial(
        config.join.open, state_dir=config.state / "fabric", leave_on_exit=True
    )
    async with opener(name) as fabric:
        builder = SporeBuilder(
            repo,
            config.key,
            cache_dir=config.state / "build-cache",
            settings=BuildSettings(timeout_s=config.build_timeout_s),
        )
        rec = ReconcileLoop(fabric, source, builder, settings, overrides=overrides)
        runner, served = await start_app(
            make_app(rec, repo), host, port, "the repo", advertise_host=advertised_host(fabric)
        )
        try:
            url = (config.public_url or served).rstrip("/")
            rec.settings = replace(rec.settings, fetch_urls=(url,))
            rec.control_url = url
            yield rec
        finally:
            rec.lease.release()
            await runner.cleanup()
