"""The corpus: every invalid garden under corpus/invalid/ gives exactly the lines of its
expected.txt (path:line:col: message); every garden under corpus/valid/ has no problem."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.garden import GardenReader, read_garden

CORPUS = Path(__file__).parent / "corpus"
INVALID = sorted(p.name for p in (CORPUS / "invalid").iterdir() if p.is_dir())
VALID = sorted(p.name for p in (CORPUS / "valid").iterdir() if p.is_dir())


def problems_of(case: Path) -> list[str]:
    result = GardenReader(case, repo_root=case, display="").read()
    return [str(p) for p in result.problems]


def test_corpus_is_large_enough() -> None:
    assert len(INVALID) >= 30


@pytest.mark.parametrize("name", INVALID)
def test_invalid_garden(name: str) -> None:
    case = CORPUS / "invalid" / name
    expected = (case / "expected.txt").read_text().splitlines()
    assert expected, "every invalid case names at least one error"
    assert problems_of(case) == expected


@pytest.mark.parametrize("name", VALID)
def test_valid_garden(name: str) -> None:
    case = CORPUS / "valid" / name
    result = read_garden(case, repo_root=case)
    assert result.problems == []
    assert result.garden.apps
    assert result.garden.invalid == ()


def test_one_bad_document_never_hides_the_others() -> None:
    case = CORPUS / "invalid" / "one-bad-document-of-two"
    result = read_garden(case, repo_root=case)
    assert [a.name for a in result.garden.apps] == ["good"]
    assert [name for name, _ in result.garden.invalid] == ["bad"]


def test_every_error_of_every_file_in_one_run(capsys: pytest.CaptureFixture[str]) -> None:
    case = CORPUS / "invalid" / "many-errors-two-files"
    code = main(["validate", str(case), "--repo-root", str(case)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out == [f"{case}/{line}" for line in (case / "expected.txt").read_text().splitlines()]


def test_oversized_file_refused(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text("# " + "x" * (1024 * 1024) + "\n")
    assert problems_of(tmp_path) == ["big.yaml:1:1: file is larger than 1 MiB; refused"]


def test_billion_laughs_refused_fast() -> None:
    case = CORPUS / "invalid" / "billion-laughs"
    start = time.perf_counter()
    problems = problems_of(case)
    elapsed = time.perf_counter() - start
    assert problems == ["app.yaml:1:8: aliases expand to more than 1000 nodes (refused)"]
    assert elapsed < 1.0  # generous: it takes a few milliseconds
