"""Fixtures for the spore and repo tests: keys, a small source tree, a built spore."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.model import Dna
from reconciler.spore.build import BuiltSpore, build_spore
from reconciler.spore.keys import (
    generate_keypair,
    load_private_key,
    load_public_key,
    raw_public_bytes,
)
from reconciler.spore.trust import TrustPolicy


@dataclass(frozen=True)
class KeyPair:
    key: Path
    pub: Path

    @property
    def raw(self) -> bytes:
        return raw_public_bytes(load_public_key(self.pub))

    @property
    def private(self):  # noqa: ANN201 - cryptography type
        return load_private_key(self.key)


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return KeyPair(*generate_keypair(tmp_path / "keys", "dev"))


@pytest.fixture
def other_keys(tmp_path: Path) -> KeyPair:
    return KeyPair(*generate_keypair(tmp_path / "keys", "other"))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "app.py").write_text("print('hello')\n" * 200)  # compressible: deflated
    (src / "lib" / "blob.bin").write_bytes(os.urandom(4096))  # random: stored
    run = src / "run.sh"
    run.write_text("#!/bin/sh\nexec python3 app.py\n")
    run.chmod(0o755)
    return src


@pytest.fixture
def dna(source: Path) -> Dna:
    return Dna("billing", "1.0.0", source, ("python3", "app.py"), env=(("K", "V"),))


@pytest.fixture
def built(dna: Dna, keys: KeyPair, tmp_path: Path) -> BuiltSpore:
    return build_spore(dna, keys.key, tmp_path / "out")


@pytest.fixture
def trust(keys: KeyPair) -> TrustPolicy:
    return TrustPolicy.load([keys.pub])
