"""The CLI skeleton: usage errors exit 2, help works, no traceback."""

from __future__ import annotations

import subprocess
import sys

from reconciler.cli import main


def test_no_command_is_usage_error(capsys):
    assert main([]) == 2


def test_unknown_command_is_usage_error(capsys):
    assert main(["no-such-verb"]) == 2
    err = capsys.readouterr().err
    assert "myco: error:" in err
    assert "Traceback" not in err


def test_python_dash_m_runs():
    out = subprocess.run(
        [sys.executable, "-m", "reconciler", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert out.stdout.startswith("myco ")
