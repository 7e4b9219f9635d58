"""The mesh identity: signing key, trust policy, gossip keyring and CA in one directory.

``myco init DIR`` makes a production identity; ``myco up`` makes a dev identity in its
state directory on first run (and says so; an older dev identity without a CA gets one).
Layout::

    DIR/signing.key   Ed25519 private key (PKCS#8 PEM, mode 0600): signs spores
    DIR/signing.pub   its public key
    DIR/trust.yaml    trust policy: signing.pub trusted for the app names given ("*" in dev)
    DIR/gossip.key    the fabric's AES-256 keyring (mode 0600)
    DIR/ca.crt        the mesh root CA (every host trusts it)
    DIR/ca.key        its key (0600; keep it offline)
    DIR/issuer.crt    the issuing CA reconcilers hold (signed by the root)
    DIR/issuer.key    its key (0600): issues member certificates, tokens, revocations

The CA files are :class:`reconciler.identity.layout.CADir`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from reconciler.errors import ConfigError
from reconciler.fabric.keyring import Keyring
from reconciler.identity.layout import CA_KEY, ISSUER_CERT, ISSUER_KEY, CADir
from reconciler.identity.names import check_mesh
from reconciler.spore.keys import generate_keypair

DEFAULT_MESH = "myco"


@dataclass(frozen=True)
class Identity:
    root: Path

    @property
    def signing_key(self) -> Path:
        return self.root / "signing.key"

    @property
    def signing_pub(self) -> Path:
        return self.root / "signing.pub"

    @property
    def trust(self) -> Path:
        return self.root / "trust.yaml"

    @property
    def gossip_key(self) -> Path:
        return self.root / "gossip.key"

    @property
    def ca(self) -> CADir:
        """The mesh CA: root (``ca.crt``/``ca.key``) and issuing CA (``issuer.*``)."""
        return CADir(self.root)

    def ca_files(self) -> tuple[Path, ...]:
        return (
            self.ca.ca_cert,
            self.root / CA_KEY,
            self.root / ISSUER_CERT,
            self.root / ISSUER_KEY,
        )

    def complete(self) -> bool:
        return all(
            p.is_file() for p in (self.signing_key, self.signing_pub, self.trust, self.gossip_key)
        )


def create_identity(
    root: Path, apps: Sequence[str] = ("*",), force: bool = False, mesh: str = DEFAULT_MESH
) -> Identity:
    """Write a new identity into ``root``; refuse to overwrite one without ``force``."""
    check_mesh(mesh)  # before anything is written
    ident = Identity(root)
    existing = [
        p
        for p in (
            ident.signing_key, ident.signing_pub, ident.trust, ident.gossip_key,
            *ident.ca_files(),
        )
        if p.exists()
    ]  # fmt: skip
    if existing and not force:
        raise ConfigError(
            f"an identity already exists in {root} ({existing[0].name}); use --force to replace it"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission: one line, not a traceback
        in_the_way = isinstance(exc, FileExistsError | NotADirectoryError)
        what = "a file is in the way" if in_the_way else exc.strerror or str(exc)
        raise ConfigError(f"cannot make the identity directory {root}: {what}") from exc
    try:
        generate_keypair(root, "signing", force=force)
        policy = {
            "apiVersion": "myco/v1",
            "kind": "TrustPolicy",
            "keys": [{"name": "mesh", "key": "signing.pub", "apps": list(apps)}],
        }
        tmp = ident.trust.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
        tmp.replace(ident.trust)
        Keyring.generate().save(ident.gossip_key, force=force)
        ident.ca.create(mesh)
    except OSError as exc:
        raise ConfigError(f"cannot write the identity in {root}: {exc.strerror or exc}") from exc
    return ident


def ensure_identity(root: Path) -> tuple[Identity, bool]:
    """The identity in ``root``, created if missing; the flag says whether it was created."""
    ident = Identity(root)
    if ident.complete():
        return ident, False
    if any(
        p.exists() for p in (ident.signing_key, ident.signing_pub, ident.trust, ident.gossip_key)
    ):
        raise ConfigError(
            f"the identity in {root} is incomplete; restore it, or remove it to make a new one"
        )
    return create_identity(root), True


def ensure_ca(ident: Identity, mesh: str = DEFAULT_MESH) -> bool:
    """Give an identity made before the mesh CA existed one; True if it was added."""
    present = [p for p in ident.ca_files() if p.exists()]
    if len(present) == len(ident.ca_files()):
        return False
    if present:
        raise ConfigError(
            f"the mesh CA in {ident.root} is incomplete ({present[0].name} without the rest); "
            "restore it, or remove it to make a new one"
        )
    ident.ca.create(mesh)
    return True
