"""The example garden's two apps on a real mesh: frontend calls billing through the edge
and shows billing's answer in its own."""

from __future__ import annotations

import pytest

from bench.localmesh import (
    billing_manifest,
    free_port,
    frontend_manifest,
    get_json,
    start_mesh,
    wait_serving,
)
from tests.helpers import wait_for
from tests.mesh.conftest import assert_nothing_left

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_frontend_answers_with_billing_through_the_edge(tmp_path):
    edge = f"127.0.0.1:{free_port()}"
    garden = {"billing.yaml": billing_manifest(), "frontend.yaml": frontend_manifest(edge)}
    mesh = start_mesh(tmp_path, garden=garden, workloads=("billing", "frontend"), edge=edge)
    try:
        billing = wait_serving(mesh, instances=2)
        wait_serving(mesh, instances=1, app="frontend")
        seen: set[str] = set()

        def both_billing_instances_seen() -> bool:
            status, body = get_json(f"{mesh.url}/frontend/hello")
            assert status == 200, body
            assert body["app"] == "frontend"
            answer = body["billing"]
            assert isinstance(answer, dict)
            assert (answer["app"], answer["version"]) == ("billing", "1.0.0")
            seen.add(str(answer["instance"]))
            return seen == billing

        # billing's answers come through the edge: round-robin over both of its instances
        wait_for(both_billing_instances_seen, 20, 0.05, "frontend showing both billing instances")
    finally:
        mesh.stop()
    assert mesh.proc.returncode == 0, mesh.log.read_text()
    assert_nothing_left(mesh)
