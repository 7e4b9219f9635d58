"""GardenReader re-reads: changed, added and removed files, and a source that appears."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.garden import GardenReader

APP = """\
apiVersion: myco/v1
kind: Spore
metadata:
  name: {name}
spec:
  version: "1"
  source: apps/{name}
  command: [x]
  instances: {n}
"""


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward, so coarse filesystem clocks still see a change."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def test_rereads_follow_changes(tmp_path: Path) -> None:
    (tmp_path / "apps" / "a").mkdir(parents=True)
    (tmp_path / "apps" / "b").mkdir(parents=True)
    write(tmp_path / "a.yaml", APP.format(name="a", n=1))
    reader = GardenReader(tmp_path)
    first = reader.read()
    assert [(a.name, a.deployment.instances) for a in first.garden.apps] == [("a", 1)]

    write(tmp_path / "a.yaml", APP.format(name="a", n=4))
    write(tmp_path / "b.yaml", APP.format(name="b", n=2))
    second = reader.read()
    assert [(a.name, a.deployment.instances) for a in second.garden.apps] == [("a", 4), ("b", 2)]
    assert second.garden.revision != first.garden.revision

    (tmp_path / "a.yaml").unlink()
    assert [a.name for a in reader.read().garden.apps] == ["b"]


def test_source_that_appears_later(tmp_path: Path) -> None:
    write(tmp_path / "c.yaml", APP.format(name="c", n=1))
    reader = GardenReader(tmp_path)
    assert [p.message for p in reader.read().problems] == ["spec.source: 'apps/c' does not exist"]
    (tmp_path / "apps" / "c").mkdir(parents=True)
    result = reader.read()
    assert result.problems == []
    assert [a.name for a in result.garden.apps] == ["c"]
    (tmp_path / "apps" / "c").rmdir()
    assert reader.read().garden.apps == ()


def test_invalid_apps_are_named(tmp_path: Path) -> None:
    (tmp_path / "apps" / "a").mkdir(parents=True)
    write(tmp_path / "a.yaml", APP.format(name="a", n=-1))
    write(tmp_path / "broken.yaml", "a: [\n")
    result = GardenReader(tmp_path, display="").read()
    assert [name for name, _ in result.garden.invalid] == ["a", "broken.yaml"]
    assert result.garden.apps == ()


def test_forget_sources_resolves_again(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "apps").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "apps" / "d").mkdir()
    write(root / "d.yaml", APP.format(name="d", n=1))
    reader = GardenReader(root)
    assert [a.name for a in reader.read().garden.apps] == ["d"]
    # The folder becomes a symlink out of the repository without the manifest changing
    # (as a checkout can do): only a re-resolution catches it.
    (root / "apps" / "d").rmdir()
    (root / "apps" / "d").symlink_to(outside)
    reader.forget_sources()
    assert [p.message for p in reader.read().problems] == [
        "spec.source: 'apps/d' resolves outside the repository root"
    ]
