"""`myco up` gives every child a certificate from the dev identity's CA: the fabric records
are signed and checked, the HTTP listeners stay plain on loopback (the verbs and dashboards
need nothing), and a restarted reconciler joins again under a new member name with its own
certificate."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from bench.localmesh import LocalMesh, billing_manifest, get_json, wait_serving
from reconciler.identity.layout import MemberDir
from tests.helpers import async_wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _cert_owners(mesh: LocalMesh) -> dict[str, str]:
    """owner -> the certificate name its ``certs/<name>`` record holds, as node-1 sees it."""
    status, view = get_json(f"{mesh.record()['agent_api']}/v1/fabric?prefix=certs/")
    if status != 200:
        return {}
    entries = view.get("entries")
    assert isinstance(entries, list)
    return {str(e["owner"]): str(e["key"]).removeprefix("certs/") for e in entries}


async def test_every_child_runs_with_a_certificate_and_signs_its_records(
    local_mesh: LocalMesh,
) -> None:
    mesh = local_mesh
    await asyncio.to_thread(wait_serving, mesh, 2)
    state = mesh.state
    held = {
        "node-1": ("agent", state / "agents" / "node-1" / "identity"),
        "edge": ("edge", state / "edge" / "identity"),
        "reconciler": ("reconciler", state / "reconciler" / "identity"),
    }
    for name, (role, directory) in held.items():
        p = MemberDir(directory).load().principal
        assert (p.role, p.name) == (role, name)
    owners = await async_wait_for(
        lambda: (lambda o: o if {"node-1", "node-2", "node-3", "edge"} <= set(o) else None)(
            _cert_owners(mesh)
        ),
        within=20,
        what="every member's certificate record",
    )
    reconciler_pid = mesh.record()["children"]["reconciler"]  # type: ignore[index]
    assert owners[f"reconciler#{reconciler_pid}"] == "reconciler"
    # The verbs reach it without credentials (plain HTTP on loopback).
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "reconciler", "status", "--state", str(state)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "billing" in done.stdout

    # A restarted reconciler is a new member with a certificate of its own name.
    os.kill(int(str(reconciler_pid)), signal.SIGKILL)

    def restarted() -> str | None:
        try:
            pid = mesh.record()["children"]["reconciler"]  # type: ignore[index]
        except (OSError, ValueError, KeyError):
            return None
        if pid == reconciler_pid:
            return None
        return _cert_owners(mesh).get(f"reconciler#{pid}")

    assert await async_wait_for(restarted, within=60, what="the new reconciler's certificate")
    mesh.write_app(billing_manifest("1.1.0"))
    await asyncio.to_thread(wait_serving, mesh, 2, "1.1.0", 90)  # and it reconciles
