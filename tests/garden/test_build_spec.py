"""``spec.build`` maps to :class:`~reconciler.model.Build` in the DNA; its lock file is
checked on every read, at the line of its key."""

from __future__ import annotations

from pathlib import Path

from reconciler.garden import GardenReader, read_garden
from reconciler.model import Build

CORPUS = Path(__file__).parent / "corpus"


def test_the_three_kinds_map_to_build() -> None:
    case = CORPUS / "valid" / "build-kinds"
    result = read_garden(case, repo_root=case)
    builds = {a.name: a.dna.build for a in result.garden.apps}
    assert builds == {
        "py": Build("python", requirements="requirements.txt"),
        "web": Build("node", lockfile="package-lock.json"),
        "tool": Build("command", command=("make", "dist"), outputs=("dist",)),
    }


def test_no_build_is_none() -> None:
    case = CORPUS / "valid" / "full-spec"
    result = read_garden(case, repo_root=case)
    assert all(a.dna.build is None for a in result.garden.apps)


def test_a_lock_file_removed_later_is_caught_by_a_cached_reader(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    lock = tmp_path / "app" / "requirements.txt"
    lock.write_text("six==1.16.0\n")
    (tmp_path / "app.yaml").write_text(
        "apiVersion: myco/v1\nkind: Spore\nmetadata:\n  name: api\nspec:\n"
        '  version: "1"\n  source: ./app\n  command: [python3, app.py]\n'
        "  build:\n    python:\n      requirements: requirements.txt\n"
    )
    reader = GardenReader(tmp_path, repo_root=tmp_path, display="")
    assert reader.read().problems == []
    lock.unlink()
    assert [str(p) for p in reader.read().problems] == [
        "app.yaml:11:21: spec.build.python.requirements: 'requirements.txt' does not exist "
        "in the app's source"
    ]
