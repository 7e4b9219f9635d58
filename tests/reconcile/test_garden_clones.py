"""A reconciler following Git keeps its clone in its state directory (not in /tmp, where a
killed reconciler would leave it behind) and fetches into it again after a restart."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.reconcile.service import GardenSpec


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def commit(work: Path, text: str) -> str:
    (work / "garden").mkdir(exist_ok=True)
    (work / "garden" / "README").write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", text)
    git(work, "push", "-q", "origin", "main")
    return git(work, "rev-parse", "HEAD")


def test_the_clone_lives_in_the_state_directory_and_is_reused(tmp_path: Path) -> None:
    remote, work, clones = tmp_path / "garden.git", tmp_path / "work", tmp_path / "state" / "c"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    git(work, "remote", "add", "origin", str(remote))
    first = commit(work, "one")
    spec = GardenSpec(git=str(remote), branch="main", subdir="garden")
    source = spec.open(clones)
    try:
        dirs = list(clones.iterdir())
        assert len(dirs) == 1
        assert (dirs[0] / ".git").is_dir()
        assert source.git.revision() == first  # type: ignore[attr-defined]
    finally:
        source.close()
    assert (dirs[0] / ".git").is_dir()  # kept for the next start
    second = commit(work, "two")
    again = spec.open(clones)
    try:
        assert list(clones.iterdir()) == dirs  # the same clone, fetched again
        assert again.git.revision() == second  # type: ignore[attr-defined]
    finally:
        again.close()


def test_an_interrupted_clone_is_started_over(tmp_path: Path) -> None:
    remote, work, clones = tmp_path / "garden.git", tmp_path / "work", tmp_path / "c"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    git(work, "remote", "add", "origin", str(remote))
    head = commit(work, "one")
    spec = GardenSpec(git=str(remote), branch="main")
    source = spec.open(clones)
    target = next(clones.iterdir())
    source.close()
    for p in sorted(target.rglob("*"), reverse=True):  # a clone cut short: files, no .git
        if p.is_file():
            p.unlink()
        else:
            p.rmdir()
    (target / "half-written").write_text("x")
    again = spec.open(clones)
    try:
        assert again.git.revision() == head  # type: ignore[attr-defined]
    finally:
        again.close()
