"""The example workloads answer /health and /hello and stop cleanly on SIGTERM; the garden
documents build spores that run once extracted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from reconciler.garden import read_app_file
from reconciler.spore.build import build_spore
from reconciler.spore.extract import extract_spore
from reconciler.spore.verify import verify_spore
from tests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _up(port: int) -> bool:
    try:
        return _get(port, "/health") == (200, b"ok\n")
    except OSError:
        return False


def _run_and_check(cwd: Path, command: list[str], app: str, env_extra: dict[str, str]) -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "MYCO_INSTANCE": f"{app}-i1", **env_extra}
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: proc.poll() is not None or _up(port), timeout=20, what="workload up")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        status, body = _get(port, "/hello")
        assert status == 200
        hello = json.loads(body)
        assert hello["app"] == app
        assert hello["instance"] == f"{app}-i1"
        assert hello["version"] == env_extra.get("MYCO_VERSION", "1.0.0")
        assert _get(port, "/nope")[0] == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


@pytest.mark.parametrize("app", ["billing", "frontend"])
def test_workload_serves_and_stops_on_sigterm(app):
    _run_and_check(
        ROOT / "workloads" / app, [sys.executable, "server.py"], app, {"MYCO_VERSION": "9.9"}
    )


@pytest.mark.parametrize("app", ["billing", "frontend"])
def test_garden_document_builds_a_spore_that_runs(app, keys, trust, tmp_path):
    (spec,) = read_app_file(ROOT / "garden" / f"{app}.yaml")
    assert spec.dna.command == ("python3", "server.py")
    built = build_spore(spec.dna, keys.key, tmp_path / "out")
    dest = extract_spore(verify_spore(built.path, trust), tmp_path / "run")
    m = built.manifest
    command = [sys.executable if m.command[0] == "python3" else m.command[0], *m.command[1:]]
    _run_and_check(dest, command + list(m.args), app, dict(m.env))
