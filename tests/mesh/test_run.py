"""The seed's own quick start on the same machinery: build → publish → `myco run`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from bench.localmesh import ROOT, LocalMesh, free_port, get_json, wait_serving
from tests.helpers import wait_for
from tests.mesh.conftest import assert_nothing_left

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def myco(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_seed_quick_start(tmp_path):
    # The seed built a binary; any executable will do: here a script with a shebang.
    binary = tmp_path / "bin" / "billing"
    binary.parent.mkdir()
    source = (ROOT / "workloads" / "billing" / "server.py").read_text()
    binary.write_text(f"#!{sys.executable}\n{source}")
    binary.chmod(0o755)
    dna = tmp_path / "billing.json"
    dna.write_text(json.dumps({
        "kind": "Spore", "name": "billing", "version": "v0.1.0", "command": "billing",
        "env": {"GREETING": "Hello from billing service"},
        "nutrients": {"cpu_milli": 200, "memory_mb": 128},
    }))  # fmt: skip
    myco("keygen", "--out", str(tmp_path / "keys"), "--name", "dev")
    built = myco(
        "build", "--manifest", str(dna), "--binary", str(binary),
        "--key", str(tmp_path / "keys" / "dev.key"), "--out", str(tmp_path / "out"),
    )  # fmt: skip
    spore = next((tmp_path / "out").glob("*.spore"))
    assert str(spore) in built
    digest = myco("publish", str(spore), "--repo", str(tmp_path / "repo")).split()[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", digest)

    state = tmp_path / "state"
    edge = f"127.0.0.1:{free_port()}"
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "reconciler", "run", "--repo", str(tmp_path / "repo"),
                "--digest", digest, "--app", "billing", "--instances", "2", "--nodes", "2",
                "--edge", ":" + edge.split(":")[1], "--state", str(state),
                "--trust", str(tmp_path / "keys" / "dev.pub"),
            ],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    mesh = LocalMesh(state / "run", state, state / "run" / "garden", edge, proc, log)
    try:
        wait_for(lambda: (state / "mesh.json").exists() or proc.poll() is not None, 60)
        assert proc.poll() is None, log.read_text()
        seen = wait_serving(mesh, instances=2, version="v0.1.0")
        assert len(seen) == 2
        status, body = get_json(f"{mesh.url}/billing/hello")
        assert status == 200
        assert body["message"] == "Hello from billing service"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert_nothing_left(mesh)


def test_run_refuses_a_spore_signed_by_an_untrusted_key(tmp_path):
    myco("keygen", "--out", str(tmp_path / "keys"), "--name", "dev")
    myco("keygen", "--out", str(tmp_path / "keys"), "--name", "other")
    built = myco(
        "build", str(ROOT / "garden" / "billing.yaml"), "--key", str(tmp_path / "keys" / "dev.key"),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert built
    spore = next((tmp_path / "out").glob("*.spore"))
    digest = myco("publish", str(spore), "--repo", str(tmp_path / "repo")).split()[-1]
    out = subprocess.run(
        [
            sys.executable, "-m", "reconciler", "run", "--repo", str(tmp_path / "repo"),
            "--digest", digest, "--app", "billing", "--state", str(tmp_path / "state"),
            "--trust", str(tmp_path / "keys" / "other.pub"),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("myco: error:")
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "state" / "mesh.json").exists()
