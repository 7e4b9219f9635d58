"""`myco up` shows a dependency build while it runs, and a failed build's last lines
(issue 19, item 4): the real command, its children and build commands."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.localmesh import billing_manifest, start_mesh, wait_for, wait_serving
from tests.mesh.conftest import assert_nothing_left

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def with_build(manifest: str, name: str, script: str) -> str:
    """``manifest`` renamed ``name``, with a command build running the Python ``script``."""
    code = script.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return manifest.replace("name: billing", f"name: {name}") + (
        "  build:\n"
        "    command:\n"
        f'      run: ["{sys.executable}", "-c", "{code}"]\n'
        "      outputs: [dist]\n"
    )


def test_up_prints_build_steps_and_a_failed_builds_last_lines(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    waits = (
        "import os, time\n"
        f"while not os.path.exists({str(flag)!r}):\n"
        "    time.sleep(0.02)\n"
        "os.makedirs('dist')\n"
        "open('dist/made', 'w').write('ok')\n"
    )
    fails = "for i in range(30):\n    print('oops', i)\nraise SystemExit(1)\n"
    garden = {
        "billing.yaml": with_build(billing_manifest(instances=1), "billing", waits),
        "broken.yaml": with_build(billing_manifest(instances=1), "broken", fails),
    }
    mesh = start_mesh(tmp_path, nodes=1, garden=garden)
    try:
        # one line, the script's newlines escaped, then the time since the build began
        running = f"myco: billing: building: running {sys.executable} -c 'import os, time\\n"

        def shown(text: str) -> bool:
            return text in mesh.log.read_text()

        wait_for(lambda: shown(running), timeout=60, what="the build step printed")
        flag.touch()
        wait_serving(mesh, instances=1)
        wait_for(lambda: shown("myco:   | oops 29\n"), timeout=60, what="broken's last lines")
        log = mesh.log.read_text()
        steps = [ln for ln in log.splitlines() if ": building: " in ln]
        assert steps, log
        assert all(ln.endswith("s]") for ln in steps), steps
        assert "myco: broken: build failed; last lines:\nmyco:   | oops 10\n" in log
        assert "oops 9\n" not in log  # the last 20 lines only
        assert log.count("myco:   | oops 29\n") == 1  # once, though polled every second
        broken = [ln for ln in log.splitlines() if ln.startswith("myco: broken: InvalidSpec/")]
        assert broken, log
        assert "(spore build failed: broken: build command failed (exit 1): oops 24 |" in broken[0]
    finally:
        mesh.stop()
    assert mesh.proc.returncode == 0, mesh.log.read_text()[-3000:]
    assert_nothing_left(mesh)
