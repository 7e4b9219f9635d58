"""The CI files are valid for GitHub, checked offline against the schemas check-jsonschema
vendors (GitHub's published workflow and action schemas)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))


def check(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_workflows_match_github_schema() -> None:
    assert WORKFLOWS
    for schema in ("vendor.github-workflows", "custom.github-workflows-require-timeout"):
        proc = check(schema, *WORKFLOWS)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_action_matches_github_schema() -> None:
    proc = check("vendor.github-actions", REPO / "action.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_check_does_catch_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    stepz: []\n")
    assert check("vendor.github-workflows", broken).returncode != 0


def test_workflow_validates_the_garden_and_runs_tests() -> None:
    flows = [yaml.safe_load(p.read_text()) for p in WORKFLOWS]
    # PyYAML reads the key `on` as True (YAML 1.1).
    triggers = [set(f.get("on", f.get(True)) or ()) for f in flows]
    assert any({"push", "pull_request"} <= t for t in triggers)
    steps = [s for f in flows for job in f["jobs"].values() for s in job["steps"]]
    assert any(s.get("uses") == "./" and s.get("with", {}).get("path") == "garden" for s in steps)
    assert any("pytest" in s.get("run", "") for s in steps)


def test_action_runs_myco_validate() -> None:
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    assert action["inputs"]["path"]["default"] == "garden"
    assert any("myco validate" in s.get("run", "") for s in action["runs"]["steps"])


@pytest.mark.parametrize("field", ["id", "name", "entry", "language"])
def test_pre_commit_hook(field: str) -> None:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    [hook] = [h for h in hooks if h["id"] == "myco-validate"]
    assert hook[field]
    assert hook["entry"] == "myco validate"
    assert hook["pass_filenames"] is False
