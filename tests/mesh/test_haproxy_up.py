"""`myco up --data-plane haproxy` (docs/edge.md): the local mesh's edge drives HAProxy."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from bench.localmesh import start_mesh, wait_serving
from tests.mesh.conftest import assert_nothing_left

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        shutil.which("haproxy") is None,
        reason="haproxy is not installed (apt-get install haproxy; .ci/run does)",
    ),
]


def _haproxy_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "haproxy"], capture_output=True, text=True, timeout=10)
    return {int(p) for p in out.stdout.split()}


def test_myco_up_with_the_haproxy_data_plane_serves_and_stops_it(tmp_path):
    before = _haproxy_pids()
    mesh = start_mesh(tmp_path, extra_args=("--data-plane", "haproxy"))
    try:
        seen = wait_serving(mesh, instances=2)
        assert len(seen) == 2  # both instances, through HAProxy
        assert _haproxy_pids() - before, "no haproxy process serves the edge"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{mesh.url}/nope/x", timeout=5)  # noqa: S310 - loopback
        assert info.value.code == 404
        assert json.loads(info.value.read())["error"] == "unknown app"  # the edge's JSON
    finally:
        mesh.stop()
    assert_nothing_left(mesh)
    assert not (_haproxy_pids() - before), "haproxy left running"
