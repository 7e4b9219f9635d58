"""The content-addressed repo: atomic idempotent put, digest re-check on read, listing."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

import pytest

from reconciler.errors import CorruptObjectError, NotFoundError, RepoError, SporeFormatError
from reconciler.repo.store import RepoEntry, SporeRepo
from reconciler.spore.build import build_spore


def test_put_stores_under_the_sha256_of_the_bytes(built, tmp_path):
    repo = SporeRepo(tmp_path / "repo")
    digest = repo.put(built.path)
    assert digest == hashlib.sha256(built.path.read_bytes()).hexdigest() == built.digest
    assert repo.has(digest)
    assert repo.path(digest).read_bytes() == built.path.read_bytes()
    assert repo.list() == [RepoEntry("billing", "1.0.0", digest, built.path.stat().st_size)]


def test_put_is_idempotent_and_leaves_no_temp_files(built, tmp_path):
    repo = SporeRepo(tmp_path / "repo")
    assert repo.put(built.path) == repo.put(built.path)
    assert len(list((tmp_path / "repo" / "spores").iterdir())) == 1
    assert list((tmp_path / "repo" / "tmp").iterdir()) == []
    assert len(repo.list()) == 1


def test_put_refuses_what_is_not_a_spore(tmp_path):
    junk = tmp_path / "junk.spore"
    junk.write_bytes(b"not a zip at all" * 10)
    repo = SporeRepo(tmp_path / "repo")
    with pytest.raises(SporeFormatError):
        repo.put(junk)
    assert repo.list() == []
    assert list((tmp_path / "repo" / "tmp").iterdir()) == []
    with pytest.raises(RepoError, match="cannot read"):
        repo.put(tmp_path / "absent.spore")


def test_every_read_rechecks_the_digest(built, tmp_path):
    repo = SporeRepo(tmp_path / "repo")
    digest = repo.put(built.path)
    obj = tmp_path / "repo" / "spores" / f"{digest}.spore"
    obj.chmod(0o644)
    raw = bytearray(obj.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    obj.write_bytes(bytes(raw))
    with pytest.raises(CorruptObjectError, match="corrupt"):
        repo.path(digest)
    assert repo.put(built.path) == digest  # publishing again repairs it
    assert repo.path(digest).read_bytes() == built.path.read_bytes()


def test_unknown_and_malformed_digests(tmp_path):
    repo = SporeRepo(tmp_path / "repo")
    with pytest.raises(NotFoundError):
        repo.path("a" * 64)
    assert not repo.has("a" * 64)
    for bad in ("A" * 64, "abc", "../" + "a" * 61, "a" * 63 + "/"):
        with pytest.raises(RepoError, match="malformed digest"):
            repo.path(bad)


def test_list_sorts_and_survives_a_missing_index(built, dna, keys, tmp_path):
    repo = SporeRepo(tmp_path / "repo")
    d1 = repo.put(built.path)
    d2 = repo.put(build_spore(replace(dna, version="0.9.0"), keys.key, tmp_path / "o").path)
    os.unlink(tmp_path / "repo" / "index" / f"{d2}.json")
    assert [(e.name, e.version, e.digest) for e in repo.list()] == [
        ("billing", "0.9.0", d2),
        ("billing", "1.0.0", d1),
    ]
    assert SporeRepo(tmp_path / "empty").list() == []


def test_dna_keys(built, tmp_path):
    repo = SporeRepo(tmp_path / "repo")
    key = "b" * 64
    assert repo.lookup_dna_key(key) is None
    digest = repo.put(built.path)
    repo.record_dna_key(key, digest)
    assert repo.lookup_dna_key(key) == digest
    os.unlink(repo.path(digest))
    assert repo.lookup_dna_key(key) is None  # the spore is gone: build again
    with pytest.raises(RepoError):
        repo.record_dna_key("../x", digest)
