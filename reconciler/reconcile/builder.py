"""Garden → :class:`~reconciler.core.model.Desired`: build, sign and publish missing spores.

A spore is recognised by :func:`reconciler.spore.build.dna_key` (the DNA plus the hashes
of its files): when the repo already holds the spore for that key nothing is built, so
a change of ``instances`` or ``rollout`` never rebuilds. An app whose spore cannot be
built is treated like an invalid manifest: it keeps running at its last good spore and
shows InvalidSpec with the build error, while the other apps go on.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.core.model import Desired, DesiredApp
from reconciler.errors import MycoError
from reconciler.model import Dna, Garden
from reconciler.records import Nutrients
from reconciler.repo import SporeRepo
from reconciler.spore.build import build_spore, dna_key
from reconciler.spore.keys import load_private_key

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

    def __init__(self, repo: SporeRepo, key: Ed25519PrivateKey | Path | None) -> None:
        self.repo = repo
        self._key_src = key
        self._key: Ed25519PrivateKey | None = None
        self._known: dict[tuple[Dna, str], str] = {}

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

    def digest_for(self, dna: Dna) -> str:
        """The digest of the spore for ``dna``, built, signed and stored if missing."""
        key, digest = self.lookup(dna)
        if digest:
            return digest
        with tempfile.TemporaryDirectory(prefix="myco-build-") as tmp:
            built = build_spore(dna, self._signing_key(), Path(tmp))
            digest = self.repo.put(built.path)
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
    for spec in garden.apps:
        digest = ""
        if spec.name in ov.pins:
            digest = ov.pins[spec.name]
        elif builder is not None:
            try:
                digest = builder.digest_for(spec.dna) if build else builder.lookup(spec.dna)[1]
            except MycoError as exc:
                log.warning("cannot build the spore of %s: %s", spec.name, exc)
                invalid[spec.name] = f"spore build failed: {exc}"
                continue
            except OSError as exc:
                invalid[spec.name] = f"spore build failed: {exc.strerror or exc}"
                continue
        apps[spec.name] = DesiredApp(spec=spec, digest=digest)
    return Desired(
        apps=apps,
        invalid=invalid,
        revision=garden.revision,
        fetch_urls=fetch_urls,
        allow_empty=allow_empty,
        drain=ov.drain,
        suspended=ov.suspended,
        capacity=ov.capacity,
    )
