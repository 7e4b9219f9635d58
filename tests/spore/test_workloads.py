"""The example workloads answer /health and /hello and stop cleanly on SIGTERM; frontend
shows billing's answer in its own (and billing's failures as a 502); the garden documents
build spores that run once extracted."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
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


@contextlib.contextmanager
def _serving(cwd: Path, command: list[str], app: str, env_extra: dict[str, str]) -> Iterator[int]:
    """Run a workload on a free port until it answers /health; stop it (SIGKILL) after."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "MYCO_INSTANCE": f"{app}-i1", **env_extra}
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: proc.poll() is not None or _up(port), timeout=20, what="workload up")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield port
        assert proc.poll() is None, "the workload died while serving"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def _check_hello(port: int, app: str, env_extra: dict[str, str]) -> dict[str, object]:
    status, body = _get(port, "/hello")
    assert status == 200
    hello = json.loads(body)
    assert hello["app"] == app
    assert hello["instance"] == f"{app}-i1"
    assert hello["version"] == env_extra.get("MYCO_VERSION", "1.0.0")
    assert _get(port, "/nope")[0] == 404
    return dict(hello)


def _run_and_check(cwd: Path, command: list[str], app: str, env_extra: dict[str, str]) -> None:
    if app != "frontend":
        with _serving(cwd, command, app, env_extra) as port:
            _check_hello(port, app, env_extra)
        return
    # frontend calls billing: run a billing for it to call
    billing_cwd = ROOT / "workloads" / "billing"
    with _serving(billing_cwd, [sys.executable, "server.py"], "billing", {}) as billing:
        env = {**env_extra, "BILLING_URL": f"http://127.0.0.1:{billing}/"}
        with _serving(cwd, command, app, env) as port:
            hello = _check_hello(port, app, env_extra)
    assert isinstance(hello["billing"], dict)
    assert (hello["billing"]["app"], hello["billing"]["instance"]) == ("billing", "billing-i1")


@pytest.mark.parametrize("app", ["billing", "frontend"])
def test_workload_serves_and_stops_on_sigterm(app):
    _run_and_check(
        ROOT / "workloads" / app, [sys.executable, "server.py"], app, {"MYCO_VERSION": "9.9"}
    )


def test_the_workloads_differ():
    billing = (ROOT / "workloads" / "billing" / "server.py").read_text()
    frontend = (ROOT / "workloads" / "frontend" / "server.py").read_text()
    assert "BILLING_URL" in frontend
    assert "BILLING_URL" not in billing


def test_frontend_shows_billing_failures_and_stays_healthy():
    """Billing down or broken: frontend answers 502 with the reason; its /health stays 200."""
    cwd = ROOT / "workloads" / "frontend"
    dead = f"http://127.0.0.1:{free_port()}/billing"  # nothing listens there
    env = {"BILLING_URL": dead, "BILLING_TIMEOUT_S": "1"}
    with _serving(cwd, [sys.executable, "server.py"], "frontend", env) as port:
        status, body = _get(port, "/hello")
        assert status == 502
        answer = json.loads(body)
        assert answer["app"] == "frontend"
        assert answer["billing"] is None
        assert str(answer["error"]).startswith(f"billing unreachable at {dead}/hello")
        assert _get(port, "/health") == (200, b"ok\n")
    # billing answers, but not JSON: the same kind of answer
    with _serving(cwd, [sys.executable, "server.py"], "other", {}) as not_billing:
        env = {"BILLING_URL": f"http://127.0.0.1:{not_billing}/nowhere"}
        with _serving(cwd, [sys.executable, "server.py"], "frontend", env) as port:
            status, body = _get(port, "/hello")
            assert status == 502
            assert "billing answered HTTP 404" in json.loads(body)["error"]


@pytest.mark.parametrize("app", ["billing", "frontend"])
def test_garden_document_builds_a_spore_that_runs(app, keys, trust, tmp_path):
    (spec,) = read_app_file(ROOT / "garden" / f"{app}.yaml")
    assert spec.dna.command == ("python3", "server.py")
    built = build_spore(spec.dna, keys.key, tmp_path / "out")
    dest = extract_spore(verify_spore(built.path, trust), tmp_path / "run")
    m = built.manifest
    if app == "frontend":  # through the edge of `myco up`, as the README's example runs
        assert dict(m.env)["BILLING_URL"] == "http://127.0.0.1:8080/billing"
    command = [sys.executable if m.command[0] == "python3" else m.command[0], *m.command[1:]]
    _run_and_check(dest, command + list(m.args), app, dict(m.env))


def _answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.parametrize(
    ("app", "command"),
    [
        ("billing", [sys.executable, "server.py"]),
        ("frontend", [sys.executable, "server.py"]),
        ("greeter", ["node", "server.js"]),
    ],
)
def test_every_example_workload_binds_host(app: str, command: list[str]) -> None:
    """The workload contract: listen on $HOST:$PORT (the host's advertised address).

    127.0.0.2 stands in for a host's address (127.0.0.0/8 is all loopback on Linux); a
    workload that bound 127.0.0.1 instead would not answer there."""
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed")
    host, port = "127.0.0.2", free_port()
    env = {**os.environ, "HOST": host, "PORT": str(port), "MYCO_INSTANCE": f"{app}-i1"}
    proc = subprocess.Popen(
        command,
        cwd=ROOT / "workloads" / app,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: proc.poll() is not None or _answers(host, port), timeout=20, what="up")
        assert proc.poll() is None, f"{app} exited with {proc.returncode}"
        assert not _answers("127.0.0.1", port), f"{app} listens on 127.0.0.1, not on $HOST"
    finally:
        proc.kill()
        proc.wait()
