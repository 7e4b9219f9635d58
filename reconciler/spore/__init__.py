"""Spores: signed, reproducible bundles of an app's files and DNA.

Public API (see docs/spore.md)::

    generate_keypair(out_dir, name) -> (key_path, pub_path)     # Ed25519, key file 0600
    build_spore(dna, key, out_dir) -> BuiltSpore                # .path, .digest, .manifest
    verify_spore(path, trust) -> VerifiedSpore                  # structure, hashes, signer
    extract_spore(verified, dest) -> Path                       # hostile-input safe
    TrustPolicy                                                 # keys -> app-name patterns

Modules: :mod:`.manifest` (the signed DNA), :mod:`.keys` (Ed25519 key files),
:mod:`.signature` (the signature record), :mod:`.trust` (keys → app-name patterns),
:mod:`.archive` (the zip container and its hostile-input reader), :mod:`.build`,
:mod:`.verify`, :mod:`.extract`, :mod:`.seed` (the seed-JSON form of a DNA).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.lazy import lazy_exports

if TYPE_CHECKING:
    from reconciler.spore.build import BuiltSpore, SourceFile, build_spore, dna_key
    from reconciler.spore.extract import extract_spore
    from reconciler.spore.keys import (
        fingerprint,
        generate_keypair,
        load_private_key,
        load_public_key,
    )
    from reconciler.spore.manifest import SporeManifest
    from reconciler.spore.seed import dna_from_seed_json
    from reconciler.spore.trust import TrustPolicy
    from reconciler.spore.verify import VerifiedSpore, verify_spore

# Loaded on first use: a verifier does not need the builder, and nobody needs the
# cryptography backend before touching a key or a signature.
_LAZY = {
    "BuiltSpore": "reconciler.spore.build",
    "SourceFile": "reconciler.spore.build",
    "build_spore": "reconciler.spore.build",
    "dna_key": "reconciler.spore.build",
    "extract_spore": "reconciler.spore.extract",
    "fingerprint": "reconciler.spore.keys",
    "generate_keypair": "reconciler.spore.keys",
    "load_private_key": "reconciler.spore.keys",
    "load_public_key": "reconciler.spore.keys",
    "SporeManifest": "reconciler.spore.manifest",
    "dna_from_seed_json": "reconciler.spore.seed",
    "TrustPolicy": "reconciler.spore.trust",
    "VerifiedSpore": "reconciler.spore.verify",
    "verify_spore": "reconciler.spore.verify",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "BuiltSpore",
    "SourceFile",
    "SporeManifest",
    "TrustPolicy",
    "VerifiedSpore",
    "build_spore",
    "dna_from_seed_json",
    "dna_key",
    "extract_spore",
    "fingerprint",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "verify_spore",
]
