"""The identity flags on real daemons: a reconciler holding the issuing CA issues its own
certificate and serves mutual TLS; a new agent enrols with a one-time join token at its
first start (and a second agent with the same token is refused in one line)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import pytest

from reconciler.httpclient import one_attempt_session
from reconciler.identity.layout import CADir, MemberDir
from reconciler.identity.tokens import make_token
from reconciler.spore.keys import generate_keypair

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MYCO = [sys.executable, "-m", "reconciler"]


async def _start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *MYCO, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _line(proc: asyncio.subprocess.Process, marker: bytes, seen: list[bytes]) -> str:
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        seen.append(line)
        if marker in line:
            return line.decode()
    raise AssertionError(f"no {marker!r} line; stderr was: {b''.join(seen).decode()}")


async def _stop(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return rest.decode()


async def test_an_agent_enrols_with_a_join_token_at_a_reconciler_once(tmp_path: Path) -> None:
    ca = CADir(tmp_path / "ca")
    ca.create("procmesh")
    garden = tmp_path / "garden"
    garden.mkdir()
    _, pub = generate_keypair(tmp_path / "keys", "dev")
    rstate = tmp_path / "rstate"
    rec = await _start(
        "reconcile", "--watch", str(garden), "--state", str(rstate), "--ca", str(ca.root),
        "--name", "rec-1", "--lease-ttl", "1.5",
    )  # fmt: skip
    agents: list[asyncio.subprocess.Process] = []
    rec_seen: list[bytes] = []
    try:
        line = await asyncio.wait_for(_line(rec, b"reconciler rec-1:", rec_seen), 60)
        assert "repo and control API https://127.0.0.1:" in line
        assert "identity reconciler rec-1 (issuing CA" in line
        assert MemberDir(rstate / "identity").load().principal.name == "rec-1"
        info = json.loads((rstate / "reconciler.json").read_text())
        url = info["control_url"]
        gossip = line.split("gossip ")[1].split(",")[0].strip()
        token = tmp_path / "join.token"
        token.write_text(
            make_token(ca.issuer(), "join", "node-5", now=time.time(), ttl_s=600, role="agent")
        )

        def agent(state: str) -> list[str]:
            return [
                "agent", "--node", "node-5", "--state", str(tmp_path / state),
                "--trust", str(pub), "--join", gossip, "--join-token", str(token),
                "--enrol", url, "--ca", str(ca.root),
                "--capacity-cpu-milli", "1000", "--capacity-memory-mb", "1024",
            ]  # fmt: skip

        first = await _start(*agent("a1"))
        agents.append(first)
        seen: list[bytes] = []
        started = await asyncio.wait_for(_line(first, b"agent node-5:", seen), 60)
        assert "identity agent node-5 (mutual TLS)" in started
        assert "API https://127.0.0.1:" in started
        held = MemberDir(tmp_path / "a1" / "identity").load()
        assert (held.principal.role, held.name, held.mesh) == ("agent", "node-5", "procmesh")
        assert any(b"enrolled as agent node-5" in x for x in seen)

        second = await _start(*agent("a2"))
        agents.append(second)
        _, raw = await asyncio.wait_for(second.communicate(), 60)  # it gives up by itself
        err = raw.decode()
        assert second.returncode == 1, err
        assert err.strip().splitlines()[-1] == (
            f"myco: error: enrolment refused by {url}: join token refused: it was already "
            "used (for node-5)"
        )
        assert not MemberDir(tmp_path / "a2" / "identity").exists()
        assert "Traceback" not in err
    finally:
        for proc in agents:
            await _stop(proc)
        rest = await _stop(rec)
    assert rec.returncode == 0, rest


async def test_edge_workers_join_as_members_of_their_certificate(tmp_path: Path) -> None:
    """``myco edge --identity DIR --workers 2``: each worker is the member
    ``<cert name>#w<i>`` and its signed records are admitted by the others; the reconciler
    serves its control API over mutual TLS (a person's certificate reads it, nobody else)."""
    import aiohttp

    from reconciler.fabric.fabric import open_fabric
    from reconciler.identity.enrol import issue_to_dir
    from reconciler.identity.live import LiveIdentity
    from reconciler.identity.tls import client_context
    from tests.helpers import async_wait_for

    ca = CADir(tmp_path / "ca")
    ca.create("procmesh")
    garden = tmp_path / "garden"
    garden.mkdir()
    now = time.time()
    issue_to_dir(ca.issuer(), "edge", "edge-1", tmp_path / "edge-id", now=now)
    issue_to_dir(ca.issuer(), "operator", "eve", tmp_path / "op", now=now, access="viewer")
    issue_to_dir(ca.issuer(), "agent", "probe", tmp_path / "probe", now=now)
    rstate = tmp_path / "rstate"
    rec = await _start(
        "reconcile", "--watch", str(garden), "--state", str(rstate), "--ca", str(ca.root),
        "--name", "rec-1",
    )  # fmt: skip
    edge: asyncio.subprocess.Process | None = None
    try:
        line = await asyncio.wait_for(_line(rec, b"reconciler rec-1:", []), 60)
        gossip = line.split("gossip ")[1].split(",")[0].strip()
        url = json.loads((rstate / "reconciler.json").read_text())["control_url"]
        op = MemberDir(tmp_path / "op")
        for ctx, want in (
            (client_context(op.cert, op.key, op.ca_cert), 200),
            (client_context(None, None, op.ca_cert), 401),
        ):
            async with (
                one_attempt_session(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
                session.get(f"{url}/v1/status") as resp,
            ):
                assert resp.status == want
        edge = await _start(
            "edge", "--listen", "127.0.0.1:0", "--workers", "2", "--join", gossip,
            "--identity", str(tmp_path / "edge-id"), "--loop", "asyncio",
        )  # fmt: skip
        probe = LiveIdentity(MemberDir(tmp_path / "probe"), "myco")
        async with open_fabric("probe", seeds=[gossip], guard=probe.guard) as fabric:

            def edge_members() -> set[str]:
                return {o for (o, k) in fabric.view("certs/") if k == "certs/edge-1"}

            await async_wait_for(
                lambda: len(edge_members()) == 2, within=30, what="both edge workers"
            )
            assert edge_members() == {"edge-1#w0", "edge-1#w1"}
            assert not fabric.refused_records()
    finally:
        if edge is not None:
            await _stop(edge)
        rest = await _stop(rec)
    assert rec.returncode == 0, rest
