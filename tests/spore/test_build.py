"""Build: reproducible bytes, the manifest's content, source rules, dna_key, streaming."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tracemalloc
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.errors import SporeError
from reconciler.reconcile.builder import SporeBuilder
from reconciler.repo.store import SporeRepo
from reconciler.spore.build import build_spore, dna_key, scan_source
from reconciler.spore.extract import extract_spore
from reconciler.spore.manifest import SporeManifest
from reconciler.spore.verify import verify_spore


def test_same_source_and_dna_give_identical_bytes(dna, keys, tmp_path):
    a = build_spore(dna, keys.key, tmp_path / "a")
    # Another checkout: different absolute path, different mtimes, same content.
    copy = tmp_path / "elsewhere" / "src"
    shutil.copytree(dna.source, copy)
    for p in copy.rglob("*"):
        os.utime(p, (1_000_000_000, 1_000_000_000))
    b = build_spore(replace(dna, source=copy), keys.key, tmp_path / "b")
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.digest == b.digest
    assert a.path.name == "billing-1.0.0.spore"


def test_a_changed_byte_or_field_changes_the_digest(dna, keys, tmp_path, built):
    (dna.source / "app.py").write_text("print('changed')\n")
    assert build_spore(dna, keys.key, tmp_path / "c").digest != built.digest
    assert build_spore(replace(dna, version="1.0.1"), keys.key, tmp_path / "d").digest != (
        built.digest
    )


def test_out_dir_holds_exactly_one_spore(built):
    assert [p.name for p in built.path.parent.iterdir()] == ["billing-1.0.0.spore"]


def test_layout_and_manifest(built):
    with zipfile.ZipFile(built.path) as zf:
        names = zf.namelist()
        manifest = SporeManifest.from_bytes(zf.read("manifest.json"))
        infos = {i.filename: i for i in zf.infolist()}
    assert names == [
        "payload/app.py",
        "payload/lib/blob.bin",
        "payload/run.sh",
        "manifest.json",
        "signature.json",
    ]
    region = built.path.read_bytes()[: manifest.payload.size]
    assert manifest.payload.sha256 == hashlib.sha256(region).hexdigest()
    assert manifest.payload.size == infos["manifest.json"].header_offset
    assert infos["payload/app.py"].compress_type == zipfile.ZIP_DEFLATED
    assert infos["payload/lib/blob.bin"].compress_type == zipfile.ZIP_STORED
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos.values())
    assert manifest == built.manifest
    assert manifest.command == ("python3", "app.py")
    assert manifest.env == (("K", "V"),)
    modes = {f.path: f.mode for f in manifest.files}
    assert modes == {"app.py": 0o644, "lib/blob.bin": 0o644, "run.sh": 0o755}


def test_skips_caches_and_vcs(source):
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"x")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref")
    (source / "mod.pyc").write_bytes(b"x")
    assert [s.path for s in scan_source(source)] == ["app.py", "lib/blob.bin", "run.sh"]


def test_refuses_symlinks_in_source(source, dna, keys, tmp_path):
    (source / "link").symlink_to(source / "app.py")
    with pytest.raises(SporeError, match="not a regular file"):
        build_spore(dna, keys.key, tmp_path / "o")
    (source / "link").unlink()
    (source / "dirlink").symlink_to(source / "lib")
    with pytest.raises(SporeError, match="symlink"):
        build_spore(dna, keys.key, tmp_path / "o")
    assert not list((tmp_path / "o").glob("*"))


def test_missing_source(dna, keys, tmp_path):
    with pytest.raises(SporeError, match="not a directory"):
        build_spore(replace(dna, source=tmp_path / "nope"), keys.key, tmp_path / "o")


def test_dna_key_is_stable_and_tracks_content(dna):
    k1 = dna_key(dna)
    assert k1 == dna_key(dna)
    assert len(k1) == 64
    (dna.source / "app.py").write_text("other\n")
    assert dna_key(dna) != k1
    assert dna_key(replace(dna, env=())) != dna_key(dna)
    assert dna_key(dna, signer=b"a" * 32) != dna_key(dna, signer=b"b" * 32) != dna_key(dna)


def test_build_verify_extract_stream_big_files(dna, keys, trust, tmp_path):
    """No file is ever held whole in memory: Python's peak stays far below the file size."""
    big = dna.source / "big.bin"
    with open(big, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        b = build_spore(dna, keys.key, tmp_path / "o")
        v = verify_spore(b.path, trust, expected_digest=b.digest)
        extract_spore(v, tmp_path / "x")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "x" / "big.bin").stat().st_size == 24 << 20
    assert peak < 8 << 20, f"peak Python allocation {peak} bytes"


def test_a_failed_build_leaves_the_previous_spore_and_no_partial_file(dna, keys, built):
    before = built.path.read_bytes()
    files = scan_source(dna.source)
    gone = files[-1].source
    gone.rename(gone.with_name(gone.name + ".moved"))  # vanishes after the scan
    with pytest.raises(FileNotFoundError):
        build_spore(dna, keys.key, built.path.parent, files)
    assert [p.name for p in built.path.parent.iterdir()] == ["billing-1.0.0.spore"]
    assert built.path.read_bytes() == before
    assert built.path.stat().st_mode & 0o777 == 0o644


def test_a_standby_rebuilds_the_same_digest_from_its_own_git_checkout(dna, keys, tmp_path):
    """Failover: the standby reconciler's repo has none of the active one's spores; built
    from another clone of the same commit (other path, mtimes, umask), they are the same
    bytes, so the digests in the intents do not change and agents find them anywhere."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }

    def run(*args: str, cwd: Path) -> None:
        subprocess.run([git, *args], cwd=cwd, env=env, check=True, capture_output=True)

    origin = tmp_path / "origin"
    shutil.copytree(dna.source, origin / "billing")
    run("init", "-q", str(origin), cwd=tmp_path)
    run("add", "-A", cwd=origin)
    run("commit", "-q", "-m", "billing", cwd=origin)

    digests = []
    for name, umask in (("active", 0o022), ("standby", 0o077)):
        old = os.umask(umask)
        try:
            run("clone", "-q", str(origin), str(tmp_path / name), cwd=tmp_path)
        finally:
            os.umask(old)
        builder = SporeBuilder(SporeRepo(tmp_path / f"{name}-repo"), keys.key)
        digests.append(builder.digest_for(replace(dna, source=tmp_path / name / "billing")))
    assert digests[0] == digests[1]
    assert oct((tmp_path / "standby" / "billing" / "app.py").stat().st_mode & 0o777) == "0o600"
    assert digests[0] == build_spore(dna, keys.key, tmp_path / "direct").digest
