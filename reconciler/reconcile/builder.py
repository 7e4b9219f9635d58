"""Garden → :class:`~reconciler.core.model.Desired`: build, sign and publish missing spores.

A spore is recognised by :func:`reconciler.spore.build.dna_key` (the DNA plus the hashes
of its files): when the repo already holds the spore for that key nothing is built, so
a change of ``instances`` or ``rollout`` never rebuilds. An app whose spore cannot be
built is treated like an invalid manifest: it keeps running at its last good spore and
shows InvalidSpec with the build error, while the other apps go on.

A DNA with a dependency build (``spec.build``) is built by :mod:`reconciler.spore.deps`,
whose outputs are cached by input hash in ``cache_dir`` (default ``<repo>/../build-cache``,
i.e. ``<state>/build-cache`` for the default repo); each build step is logged as one line
and handed to ``on_step`` (the reconcile loop publishes it: ``myco up``, ``myco apply`` and
``myco status`` show it). A failed build's installer lines go to ``Desired.build_logs``.
A build that failed is not run again for the same DNA before ``retry_failed_s``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.core.model import Desired, DesiredApp
from reconciler.errors import MycoError
from reconciler.model import Dna, Garden
from reconciler.records import Nutrients
from reconciler.repo import SporeRepo
from reconciler.spore.build import dna_key
from reconciler.spore.deps import BuildError, BuildSettings, BuildStep, build_app_spore
from reconciler.spore.keys import load_private_key
from reconciler.spore.verify import read_manifest

log = logging.getLogger("myco.reconciler.build")


@dataclass(frozen=True)
class Overrides:
    """What the CLI asked for beside the garden: suspended apps, drained nodes, pins."""

    suspended: frozenset[str] = frozenset()
    drain: frozenset[str] = frozenset()
    pins: Mapping[str, str] = field(default_factory=dict)  # app -> digest (rollback)
    capacity: Mapping[str, Nutrients] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "suspended": sorted(self.suspended),
            "drain": sorted(self.drain),
            "pins": dict(sorted(self.pins.items())),
        }

    @classmethod
    def from_json(cls, data: object) -> Overrides:
        if not isinstance(data, dict):
            return cls()
        pins = data.get("pins") or {}
        return cls(
            suspended=frozenset(str(x) for x in data.get("suspended") or ()),
            drain=frozenset(str(x) for x in data.get("drain") or ()),
            pins={str(k): str(v) for k, v in pins.items()} if isinstance(pins, dict) else {},
        )


class SporeBuilder:
    """Finds or builds the spore of each DNA; remembers results per DNA object."""

    def __init__(
        self,
        repo: SporeRepo,
        key: Ed25519PrivateKey | Path | None,
        *,
        cache_dir: Path | None = None,
        settings: BuildSettings | None = None,
        retry_failed_s: float = 60.0,
    ) -> None:
        self.repo = repo
        self._key_src = key
        self._key: Ed25519PrivateKey | None = None
        self._known: dict[tuple[Dna, str], str] = {}
        self.cache_dir = cache_dir or Path(repo.root).parent / "build-cache"
        self.settings = settings or BuildSettings()
        self.retry_failed_s = retry_failed_s
        self._failed: dict[str, tuple[float, MycoError]] = {}  # dna key -> (when, error)
        self._platforms: dict[str, str] = {}  # digest -> its manifest's build.platform
        #: called (in the building thread) with every step of a dependency build
        self.on_step: Callable[[BuildStep], None] | None = None

    def _progress(self, step: BuildStep) -> None:
        log.info("build %s", step)
        if self.on_step is not None:
            self.on_step(step)

    def _signing_key(self) -> Ed25519PrivateKey:
        if self._key is None:
            if self._key_src is None:
                raise MycoError("no signing key given (--key): cannot build spores")
            src = self._key_src
            self._key = src if isinstance(src, Ed25519PrivateKey) else load_private_key(src)
        return self._key

    def lookup(self, dna: Dna) -> tuple[str, str]:
        """(dna key, digest or "") without building."""
        key = dna_key(dna)
        return key, self.repo.lookup_dna_key(key) or ""

    def platform_of(self, digest: str) -> str:
        """The platform the stored spore ``digest`` was built for ("" without a build)."""
        known = self._platforms.get(digest)
        if known is None:
            with open(self.repo.path(digest), "rb") as f:
                manifest, _, _ = read_manifest(f)
            known = manifest.build.platform if manifest.build is not None else ""
            self._platforms[digest] = known
        return known

    def digest_for(self, dna: Dna) -> str:
        """The digest of the spore for ``dna``, built, signed and stored if missing."""
        key, digest = self.lookup(dna)
        if digest:
            return digest
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < self.retry_failed_s:
            raise failed[1]
        try:
            with tempfile.TemporaryDirectory(prefix="myco-build-") as tmp:
                built = build_app_spore(
                    dna,
                    self._signing_key(),
                    Path(tmp),
                    self.cache_dir,
                    self.settings,
                    progress=self._progress,
                )
                digest = self.repo.put(built.path)
        except MycoError as exc:
            if dna.build is not None:  # an installer run is costly: not again at once
                self._failed[key] = (time.monotonic(), exc)
            raise
        self._failed.pop(key, None)
        self.repo.record_dna_key(key, digest)
        log.info("built spore %s %s: %s", dna.name, dna.version, digest)
        return digest


def desired_from(
    garden: Garden,
    builder: SporeBuilder | None,
    *,
    fetch_urls: tuple[str, ...] = (),
    allow_empty: bool = False,
    overrides: Overrides | None = None,
    build: bool = True,
) -> Desired:
    """The desired state of ``garden``; with ``build`` False, missing spores stay ""."""
    ov = overrides or Overrides()
    apps: dict[str, DesiredApp] = {}
    invalid: dict[str, str] = dict(garden.invalid)
    build_logs: dict[str, str] = {}
    for spec in garden.apps:
        digest = platform = ""
        if spec.name in ov.pins:
            digest = ov.pins[spec.name]
            if builder is not None:  # a rolled-back spore runs where its build runs
                with contextlib.suppress(MycoError, OSError):
                    platform = builder.platform_of(digest)
        elif builder is not None:
            try:
                digest = builder.digest_for(spec.dna) if build else builder.lookup(spec.dna)[1]
                if digest and spec.dna.build is not None:  # placed only where it runs
                    platform = builder.platform_of(digest)
            except MycoError as exc:
                log.warning("cannot build the spore of %s: %s", spec.name, exc)
                invalid[spec.name] = f"spore build failed: {exc}"
                build_logs[spec.name] = exc.log if isinstance(exc, BuildError) else ""
                continue
            except OSError as exc:
                invalid[spec.name] = f"spore build failed: {exc.strerror or exc}"
                build_logs[spec.name] = ""
                continue
        apps[spec.name] = DesiredApp(spec=spec, digest=digest, platform=platform)
    return Desired(
        apps=apps,
        invalid=invalid,
        build_logs=build_logs,
        revision=garden.revision,
        fetch_urls=fetch_urls,
        allow_empty=allow_empty,
        drain=ov.drain,
        suspended=ov.suspended,
        capacity=ov.capacity,
    )
