"""``myco up -d`` runs the mesh in the background and ``myco down`` stops it (README: "`myco
up -d` runs it in the background and `myco down` stops it"): real processes, real ports.

After ``myco down``: no process of the mesh is left (the `myco up` process, every child,
every instance: by pid and by a scan of the process table), its ports are free, and the
state directory is consistent (no mesh record, no instance state, the identity kept for the
next ``myco up``). A second ``myco down`` says nothing is running and exits 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.localmesh import ROOT, billing_manifest, free_port, get_json
from tests.helpers import wait_for

MYCO = [sys.executable, "-m", "reconciler"]


def myco(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MYCO, *args], capture_output=True, text=True, timeout=timeout)


def mesh_processes(state: Path) -> list[psutil.Process]:
    """Every live process started for this state directory: `myco up`, its children (their
    command lines name the state directory) and the instances (run from inside it)."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or ())
            cwd = p.info["cwd"] or ""
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if str(state) in cmd or cwd.startswith(str(state)):
            found.append(p)
    return found


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def garden(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "garden").mkdir(parents=True)
    shutil.copytree(ROOT / "workloads" / "billing", root / "workloads" / "billing")
    (root / "garden" / "billing.yaml").write_text(billing_manifest(instances=1))
    subprocess.run(["git", "init", "-q", str(root)], check=True, timeout=30)
    return root / "garden"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    # Whatever happened: nothing of this mesh outlives the test.
    for p in mesh_processes(state):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            p.kill()


@pytest.mark.slow
def test_up_detached_then_status_then_down_leaves_nothing(garden: Path, state: Path) -> None:
    edge = f"127.0.0.1:{free_port()}"
    up = myco("up", "-d", str(garden), "--nodes", "1", "--edge", edge, "--state", str(state))
    assert up.returncode == 0, up.stdout + up.stderr
    # What it prints is what to do next.
    lines = up.stdout.splitlines()
    assert lines[0].startswith("mesh up in the background (pid ")
    assert f"edge on http://{edge}" in lines[0]
    assert lines[-1] == f"stop it with: myco down --state {state}"
    record = json.loads((state / "mesh.json").read_text())
    up_pid = int(record["pid"])
    assert f"(pid {up_pid})" in lines[0]
    assert alive(up_pid)
    assert set(record["children"]) == {"node-1", "reconciler", "edge"}

    # The mesh serves, and `myco status` finds it through the state directory.
    def serving() -> bool:
        code, body = get_json(f"http://{edge}/billing/hello")
        return code == 200 and body.get("app") == "billing"

    wait_for(serving, timeout=60, what="billing served through the background mesh")

    def healthy() -> dict[str, Any]:
        status = myco("status", "--state", str(state), "-o", "json")
        assert status.returncode == 0, status.stderr
        view: dict[str, Any] = json.loads(status.stdout)
        apps = {a["name"]: a for a in view["apps"]}
        return view if apps.get("billing", {}).get("health") == "Healthy" else {}

    view = wait_for(healthy, timeout=30, interval=0.2, what="`myco status`: billing Healthy")
    assert [i["app"] for i in view["instances"]] == ["billing"]
    with urllib.request.urlopen(f"{record['agent_api']}/v1/instances", timeout=5) as resp:
        (instance,) = json.loads(resp.read())  # the agent knows its instance's pid
    pids = {up_pid, *record["children"].values(), instance["pid"]}
    assert all(alive(p) for p in pids)
    ports = [parse(edge)] + [parse(urllib.parse.urlsplit(a).netloc) for a in record["agent_apis"]]

    down = myco("down", "--state", str(state))
    assert down.returncode == 0, down.stderr
    assert down.stdout == "mesh stopped\n"
    assert not [p for p in pids if alive(p)], "a process of the mesh outlived `myco down`"
    assert not mesh_processes(state)
    for host, port in ports:
        assert port_free(host, port), f"{host}:{port} still taken"
    # The state directory: no mesh record, no instance left to re-adopt, identity kept.
    assert not (state / "mesh.json").exists()
    assert not list((state / "agents" / "node-1" / "instances").glob("*"))
    assert (state / "identity" / "signing.key").is_file()
    assert "mesh stopped" in (state / "logs" / "up.log").read_text()

    again = myco("down", "--state", str(state))
    assert again.returncode == 0
    assert again.stdout == f"no mesh is running from {state}\n"
    assert again.stderr == ""


@pytest.mark.slow
def test_down_stops_what_a_killed_up_left_running(garden: Path, state: Path) -> None:
    """`myco up` killed with -9 leaves its children serving in their own sessions: `myco
    down` stops them (and their instances) instead of only removing the record."""
    edge = f"127.0.0.1:{free_port()}"
    up = myco("up", "-d", str(garden), "--nodes", "1", "--edge", edge, "--state", str(state))
    assert up.returncode == 0, up.stdout + up.stderr
    record = json.loads((state / "mesh.json").read_text())
    wait_for(
        lambda: get_json(f"http://{edge}/billing/hello")[0] == 200,
        timeout=60,
        what="billing served through the background mesh",
    )
    with urllib.request.urlopen(f"{record['agent_api']}/v1/instances", timeout=5) as resp:
        (instance,) = json.loads(resp.read())
    os.kill(record["pid"], signal.SIGKILL)
    wait_for(lambda: not alive(record["pid"]), timeout=10, what="myco up gone")
    children = list(record["children"].values())
    assert all(alive(p) for p in [*children, instance["pid"]])  # still serving, unowned

    down = myco("down", "--state", str(state))
    assert down.returncode == 0, down.stderr
    assert down.stdout == (
        "the mesh's `myco up` process was gone; stopped the 3 process(es) it left running\n"
    )
    assert not [p for p in [*children, instance["pid"]] if alive(p)]
    assert not mesh_processes(state)
    assert port_free(*parse(edge))
    assert not (state / "mesh.json").exists()
    assert myco("down", "--state", str(state)).stdout == f"no mesh is running from {state}\n"


def parse(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)
