"""The mesh identity: signing key, trust policy and gossip keyring in one directory.

``myco init DIR`` makes a production identity; ``myco up`` makes a dev identity in its
state directory on first run (and says so). Layout::

    DIR/signing.key   Ed25519 private key (PKCS#8 PEM, mode 0600): signs spores
    DIR/signing.pub   its public key
    DIR/trust.yaml    trust policy: signing.pub trusted for the app names given ("*" in dev)
    DIR/gossip.key    the fabric's AES-256 keyring (mode 0600)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from reconciler.errors import ConfigError
from reconciler.fabric.keyring import Keyring
from reconciler.spore.keys import generate_keypair


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

    def complete(self) -> bool:
        return all(
            p.is_file() for p in (self.signing_key, self.signing_pub, self.trust, self.gossip_key)
        )


def create_identity(root: Path, apps: Sequence[str] = ("*",), force: bool = False) -> Identity:
    """Write a new identity into ``root``; refuse to overwrite one without ``force``."""
    ident = Identity(root)
    existing = [
        p
        for p in (ident.signing_key, ident.signing_pub, ident.trust, ident.gossip_key)
        if p.exists()
    ]
    if existing and not force:
        raise ConfigError(
            f"an identity already exists in {root} ({existing[0].name}); use --force to replace it"
        )
    root.mkdir(parents=True, exist_ok=True)
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
