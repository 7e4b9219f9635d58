"""The README's autoscaled app, run as the README shows it: its manifest (read from the
README) in a garden beside ``workloads/paced``, a real local mesh (`myco up`), requests
through the edge, ``myco status``'s AUTOSCALE table, and the wake from zero."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.localmesh import ROOT, get_json, start_mesh, wait_for
from reconciler.garden import read_app_file


def readme_manifest() -> str:
    """The README's ``yaml`` block of the ``paced`` app."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (doc,) = [b for b in blocks if "name: paced" in b]
    return str(doc)


def test_the_readme_manifest_is_an_autoscaled_app(tmp_path: Path) -> None:
    """Read as `myco up` reads it, from ``garden/`` beside ``workloads/paced``."""
    (tmp_path / "garden").mkdir()
    shutil.copytree(ROOT / "workloads" / "paced", tmp_path / "workloads" / "paced")
    (tmp_path / "garden" / "paced.yaml").write_text(readme_manifest())
    (spec,) = read_app_file(tmp_path / "garden" / "paced.yaml", repo_root=tmp_path)
    auto = spec.deployment.autoscale
    assert auto is not None
    assert (auto.min, auto.max, auto.to_zero_after_s) == (1, 10, 60)
    assert (auto.target_kind, auto.target) == ("p99_ms", 100)  # the SLO's budget, by default
    assert spec.dna.slo.p99_budget_ms == 100


def status(state: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "reconciler", "status", "--state", str(state)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout


def autoscale_row(text: str) -> list[str]:
    rows = text.split("AUTOSCALE\n", 1)[1].split("\n\n", 1)[0].splitlines()
    (row,) = [r for r in rows if r.startswith("paced ")]
    return row.split()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_readme_autoscaled_app_serves_scales_to_zero_and_wakes(tmp_path: Path) -> None:
    doc = readme_manifest()
    # The README's one minute to zero, made short here: the rest is the README's text.
    short = re.sub(r"to_zero_after_s: \d+", "to_zero_after_s: 3", doc)
    assert short != doc
    mesh = start_mesh(tmp_path, garden={"paced.yaml": short}, workloads=("paced",))
    try:
        url = f"{mesh.url}/paced/hello"
        wait_for(lambda: get_json(url)[0] == 200, timeout=60, what="paced through the edge")
        code, body = get_json(url)
        assert (code, body["app"]) == (200, "paced")
        wait_for(lambda: "AUTOSCALE" in status(mesh.state), timeout=30, what="the table")
        name, current, desired, lo, hi, *_ = autoscale_row(status(mesh.state))
        assert (name, lo, hi) == ("paced", "1", "10")
        assert "p99 100ms" in " ".join(autoscale_row(status(mesh.state)))
        # idle: it goes to zero; a request wakes it, held at the edge meanwhile
        wait_for(lambda: autoscale_row(status(mesh.state))[2] == "0", timeout=60, what="zero")
        t0 = time.monotonic()
        code, body = get_json(url, timeout=30)
        assert (code, body.get("app")) == (200, "paced"), "the held request was answered"
        assert time.monotonic() - t0 < 30
        row = " ".join(autoscale_row(status(mesh.state)))
        assert "up 0->1: woken" in row
    finally:
        mesh.stop()
    assert mesh.proc.returncode == 0, mesh.log.read_text()[-3000:]
