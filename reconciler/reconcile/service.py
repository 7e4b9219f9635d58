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

Identity (:class:`~reconciler.identity.enrol.IdentitySpec`): with ``--ca DIR`` (or a mesh
identity holding ``issuer.key`` beside the state, as ``myco up`` lays it out) the
reconciler issues its own certificate at start into ``--identity`` (default
``<state>/identity``; ``<state>/member`` when that is the mesh identity of ``myco init``)
and serves enrolment, renewal and revocation (:mod:`.ca_http`); without, it uses the
certificate in ``--identity``. Its certificate's name is the cert part of ``--name``, else
the name already held, else the host name; its fabric member name is ``--name``, else
``<cert name>#<pid>`` (a restarted reconciler is a new member). The certificate is renewed
by a task of the service: from the issuing CA, else at another reconciler.

A graceful stop (SIGINT/SIGTERM) cancels the tasks, gives the lease up, stops the server and
leaves the fabric, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.addr import is_wildcard, parse_addr
from reconciler.aio import Service, run_until_signalled, stop_tasks
from reconciler.clock import RealClock
from reconciler.errors import ConfigError, IdentityError, UsageError
from reconciler.fabric.api import FabricAPI
from reconciler.fabric.joining import JoinSettings
from reconciler.files import atomic_write
from reconciler.home import MeshRecord
from reconciler.identity.ca import Issuer
from reconciler.identity.enrol import (
    IdentitySpec,
    issue_own,
    obtain,
    reissue,
    renew_in_fabric,
    renewal_loop,
)
from reconciler.identity.layout import CADir, MemberDir
from reconciler.identity.live import LiveIdentity
from reconciler.identity.member import MemberIdentity
from reconciler.identity.names import check_name, owner_matches
from reconciler.identity.names import member_name as with_suffix
from reconciler.logs import announce
from reconciler.reconcile.builder import Overrides, SporeBuilder
from reconciler.reconcile.lease import LeaseConfig, wall_clock
from reconciler.reconcile.loop import ReconcileLoop, ReconcileSettings, load_overrides
from reconciler.reconcile.source import DirSource, GardenSource, GitSource

if TYPE_CHECKING:
    from reconciler.reconcile.ca_http import CAService

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
    identity: IdentitySpec | None = None  # --identity / --ca; None: no identity

    def member_name(self, live: LiveIdentity | None = None) -> str:
        """The fabric member name (see the module docstring)."""
        if live is None:
            return self.name or f"reconciler-{socket.gethostname()}-{os.getpid()}"
        if not self.name:
            return with_suffix(live.name, str(os.getpid()))
        if not owner_matches(live.name, self.name):
            raise ConfigError(
                f"--name {self.name} does not match the certificate's name {live.name}: give "
                f"{live.name} or {live.name}#SUFFIX (or leave --name out)"
            )
        return self.name

    def cert_name(self, held: str | None) -> str:
        """The name this reconciler's own certificate is issued for (with ``--ca``)."""
        if self.name:
            return check_name(self.name.partition("#")[0], "--name")
        if held:
            return held
        host = socket.gethostname().split(".")[0][:63] or "reconciler"
        try:
            return check_name(host, "the host name")
        except IdentityError as exc:
            raise ConfigError(
                f"{exc}: give --name NAME for this reconciler's certificate"
            ) from None


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

    def open(self, clones: Path | None = None) -> GardenSource:
        """The garden source; a Git remote is cloned under ``clones`` (the state directory's
        ``garden-clones/``, kept and fetched again at a restart; else a temporary one)."""
        if self.watch is not None:
            if not self.watch.is_dir():
                raise UsageError(f"--watch {self.watch}: not a directory")
            return DirSource(self.watch.resolve())
        if not self.git:
            raise UsageError("give --watch DIR or --git URL")
        if self.interval_s <= 0:
            raise UsageError("--interval must be positive")
        workdir = None
        if clones is not None:
            ident = hashlib.sha256(f"{self.git}\n{self.branch}".encode()).hexdigest()[:16]
            workdir = clones / ident
            workdir.mkdir(parents=True, exist_ok=True)
        return GitSource(
            self.git, self.branch, self.interval_s, subdir=self.subdir, workdir=workdir
        )


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
        lease = LeaseConfig(ttl_s=ttl, renew_s=ttl / 3, settle_s=min(1.0, ttl / 4), startup_s=ttl)
        return ReconcileSettings(allow_empty=self.allow_empty, lease=lease)


def run(config: ReconcileConfig) -> int:
    """Run the reconciler until SIGINT/SIGTERM (exit 0) or a failure (raised)."""
    source = config.garden.open(config.member.state / "garden-clones")
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
    member = open_member_parts(config.member, source, config.settings(), overrides, open_fabric)
    async with member as parts:
        rec = parts.rec
        rec.overrides_path = overrides_path
        tasks = [service.spawn("the reconcile loop", rec.run())]
        tasks += _spawn_notifiers(service, config.webhooks, rec.fabric)
        tasks += _spawn_identity(service, parts)
        info = state / INFO_FILE
        try:
            record = {"name": rec.fabric.name, "control_url": rec.control_url, "pid": os.getpid()}
            atomic_write(info, json.dumps(record, indent=2) + "\n", durable=False)
            announce("%s", startup_line(rec, config, parts))
            await service.stopping.wait()
        finally:
            await stop_tasks(tasks)  # before the server and the fabric they use go away
            with contextlib.suppress(OSError):
                info.unlink()


def startup_line(
    rec: ReconcileLoop, config: ReconcileConfig, parts: MemberParts | None = None
) -> str:
    gossip = config.member.join.describe(getattr(rec.fabric, "addr", "") or "?")
    line = (
        f"reconciler {rec.fabric.name}: {config.garden.describe()}, repo and control API "
        f"{rec.control_url}, dashboard {rec.control_url}/ui/, gossip {gossip}"
    )
    if parts is not None and parts.live is not None:
        line += f", identity reconciler {parts.live.name}"
        if parts.issuer is not None:
            line += " (issuing CA: enrols, renews and revokes members)"
    elif parts is not None:
        line += ", no identity (unsigned records)"
    return line


def _spawn_identity(service: Service, parts: MemberParts) -> list[asyncio.Task[None]]:
    """The certificate's renewal, and the revocation list kept in the fabric."""
    live = parts.live
    if live is None:
        return []
    republish = getattr(parts.rec.fabric, "identity_renewed", None)
    if republish is not None:
        live.on_renewed(republish)
    issuer = parts.issuer
    fabric = parts.rec.fabric

    async def renew() -> MemberIdentity:
        if issuer is not None:
            return reissue(issuer, live.member, now=live.wall())
        return await renew_in_fabric(fabric, live)

    tasks = [service.spawn("certificate renewal", renewal_loop(live, renew, clock=RealClock()))]
    if parts.ca is not None:
        tasks.append(service.spawn("the revocation list", parts.ca.follow()))
    return tasks


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
    """The mesh identity (``myco init``'s: signing key, keyring, CA): ``<state>/identity``,
    else ``<state>/../identity`` (as ``myco up`` lays it out)."""
    for candidate in (state / "identity", state.parent / "identity"):
        if (candidate / "signing.key").is_file() or (candidate / "gossip.key").is_file():
            return candidate
    return None


def default_member_dir(state: Path) -> Path:
    """Where a reconciler keeps its own certificate by default: ``<state>/identity``,
    unless that is a mesh identity (``myco init``'s), then ``<state>/member``."""
    plain = state / "identity"
    if _identity_dir(state) == plain or any(
        (plain / f).is_file() for f in ("ca.key", "issuer.key")
    ):
        return state / "member"
    return plain


def resolve_identity(spec: IdentitySpec | None, state: Path) -> IdentitySpec | None:
    """``spec`` with the issuing CA filled in from the mesh identity beside ``state`` when
    it holds one (``myco up``'s layout) and ``--ca`` was not given."""
    if spec is None or spec.ca is not None:
        return spec
    mesh = _identity_dir(state)
    if mesh is not None and (mesh / "issuer.key").is_file():
        return replace(spec, ca=mesh)
    return spec


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
    return replace(
        config, join=join, key=key, identity=resolve_identity(config.identity, config.state)
    )


async def member_identity(config: MemberConfig) -> tuple[LiveIdentity | None, Issuer | None]:
    """The reconciler's identity, issued now from its CA if it has one; and that issuer."""
    spec = config.identity
    if spec is None:
        return None, None
    cluster = config.join.cluster
    if spec.ca is None:
        live = await obtain(spec, "reconciler", cluster)
        return live, None
    ca = CADir(spec.ca)
    if not (ca.issuer_cert.is_file() and ca.issuer_key.is_file()):
        raise ConfigError(f"--ca {spec.ca}: no issuing CA there (issuer.crt and issuer.key)")
    issuer = ca.issuer()
    mdir = MemberDir(spec.dir)
    held = None
    if mdir.cert.is_file():
        try:
            held = mdir.load().name
        except (ConfigError, IdentityError):
            held = None
    issue_own(ca, spec.dir, config.cert_name(held), now=time.time())
    return LiveIdentity(mdir, cluster), issuer


@dataclass
class MemberParts:
    """What :func:`open_member_parts` yields: the loop, and the identity it runs with."""

    rec: ReconcileLoop
    live: LiveIdentity | None = None
    issuer: Issuer | None = None
    ca: CAService | None = None


@contextlib.asynccontextmanager
async def open_member(
    config: MemberConfig,
    source: GardenSource,
    settings: ReconcileSettings,
    overrides: Overrides | None = None,
    open_fabric: FabricOpener | None = None,
) -> AsyncIterator[ReconcileLoop]:
    """A ReconcileLoop joined to the fabric, its repo + control API served (not yet run)."""
    async with open_member_parts(config, source, settings, overrides, open_fabric) as parts:
        yield parts.rec


@contextlib.asynccontextmanager
async def open_member_parts(
    config: MemberConfig,
    source: GardenSource,
    settings: ReconcileSettings,
    overrides: Overrides | None = None,
    open_fabric: FabricOpener | None = None,
) -> AsyncIterator[MemberParts]:
    """:func:`open_member`, with the identity it runs with (its renewal is the caller's)."""
    from reconciler.identity.audit import AuditLog
    from reconciler.reconcile.ca_http import CAService
    from reconciler.reconcile.http import make_app
    from reconciler.repo import SporeRepo
    from reconciler.spore.deps import BuildSettings
    from reconciler.webserve import start_app

    config = resolve(config)
    host, port = parse_addr(config.listen, what="--repo-listen", error=UsageError)
    repo = SporeRepo(config.repo or config.state / "repo")
    live, issuer = await member_identity(config)
    name = config.member_name(live)
    opener: FabricOpener = open_fabric or partial(
        config.join.open,
        state_dir=config.state / "fabric",
        leave_on_exit=True,
        guard=live.guard if live is not None else None,
    )
    async with opener(name) as fabric:
        builder = SporeBuilder(
            repo,
            config.key,
            cache_dir=config.state / "build-cache",
            settings=BuildSettings(timeout_s=config.build_timeout_s),
        )
        rec = ReconcileLoop(
            fabric, source, builder, settings, overrides=overrides, wall=wall_clock()
        )
        rec.lease.remember(config.state / "lease-epoch.json")
        ca = None
        if live is not None:

            def lease() -> tuple[bool, str]:
                return rec.lease.active, rec.lease.holder

            ca = CAService(issuer=issuer, live=live, state=config.state, fabric=fabric, lease=lease)
        # mutual TLS with the identity, unless --loopback-http (myco up: plain on loopback)
        spec = config.identity
        http_live = None if spec is None or spec.loopback_http else live
        app = make_app(
            rec,
            repo,
            live=http_live,
            extra_routes=ca.routes() if ca is not None else (),
            audit=AuditLog.in_state(config.state),
        )
        runner, served = await start_app(
            app,
            host,
            port,
            "the repo",
            advertise_host=advertised_host(fabric),
            ssl_context=http_live.server_ssl if http_live is not None else None,
        )
        try:
            url = (config.public_url or served).rstrip("/")
            rec.settings = replace(rec.settings, fetch_urls=(url,))
            rec.control_url = url
            yield MemberParts(rec, live, issuer, ca)
        finally:
            rec.lease.release()
            await runner.cleanup()
