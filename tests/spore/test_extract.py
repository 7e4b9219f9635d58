"""Extract: only verified spores, modes from the manifest, only inside a fresh directory."""

from __future__ import annotations

import stat

import pytest

from reconciler.errors import IntegrityError, SporeError
from reconciler.spore.extract import extract_spore
from reconciler.spore.verify import verify_spore


def test_extracts_files_with_their_modes(built, trust, source, tmp_path):
    v = verify_spore(built.path, trust)
    dest = extract_spore(v, tmp_path / "x")
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["app.py", "lib/blob.bin", "run.sh"]
    for rel in got:
        assert (dest / rel).read_bytes() == (source / rel).read_bytes()
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "app.py").stat().st_mode) == 0o644


def test_empty_existing_directory_is_fine(built, trust, tmp_path):
    (tmp_path / "x").mkdir()
    extract_spore(verify_spore(built.path, trust), tmp_path / "x")
    assert (tmp_path / "x" / "app.py").is_file()


def test_refuses_non_empty_or_non_directory_destinations(built, trust, tmp_path):
    v = verify_spore(built.path, trust)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("mine")
    with pytest.raises(SporeError, match="not an empty directory"):
        extract_spore(v, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(SporeError):
        extract_spore(v, tmp_path / "file")
    (tmp_path / "link").symlink_to(tmp_path / "full")
    with pytest.raises(SporeError, match="symlink"):
        extract_spore(v, tmp_path / "link")


def test_requires_a_verified_spore(built, tmp_path):
    with pytest.raises(SporeError, match="VerifiedSpore"):
        extract_spore(built, tmp_path / "x")  # type: ignore[arg-type]


def test_swapped_archive_with_other_valid_content_is_refused(built, trust, dna, keys, tmp_path):
    """A different spore (valid, same signer) put in place after verification."""
    from dataclasses import replace

    from reconciler.spore.build import build_spore

    v = verify_spore(built.path, trust)
    other = build_spore(replace(dna, version="2.0.0"), keys.key, tmp_path / "o2")
    other.path.replace(built.path)
    (tmp_path / "x").mkdir()
    with pytest.raises(IntegrityError, match="changed since"):
        extract_spore(v, tmp_path / "x")
    assert list((tmp_path / "x").iterdir()) == []  # a pre-existing empty dir stays, emptied
