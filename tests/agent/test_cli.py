"""``myco agent`` as a real process: usage errors, and re-adoption after ``kill -9``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.agent.runner import read_start_ticks
from reconciler.fabric import Fabric, open_fabric
from reconciler.records import InstanceRecord
from tests.agent.mesh import instance_seen, make_spore, one, publish_intent, serve_repo
from tests.helpers import NETNS_SETUP, async_wait_for, netns_skip_reason

MYCO = [sys.executable, "-m", "reconciler"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MYCO, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["agent"], 2, "--node is required"),
        (["agent", "--node", "n"], 2, "--state is required"),
        (["agent", "--node", "n", "--state", "{tmp}/s"], 1, "no trusted keys"),
        (["agent", "--node", "n", "--state", "{tmp}/s", "--trust", "{tmp}/nope"], 1, "nope"),
        (["agent", "--config", "{tmp}/missing.yaml"], 1, "cannot read"),
        (["agent", "--node", "n", "--state", "{tmp}/s", "--label", "x"], 2, "bad label"),
        (
            ["agent", "--node", "n", "--state", "{tmp}/s", "--gossip-bind", "0.0.0.0:0"],
            1,
            "agent: refusing to gossip in plaintext on 0.0.0.0:0: "
            "give --gossip-key FILE, or --insecure",
        ),
        (
            ["agent", "--node", "n", "--state", "{tmp}/s", "--api", "0.0.0.0:0"],
            1,
            "agent: refusing to serve the agent API in plaintext on 0.0.0.0:0 without an "
            "identity: give --identity DIR (mutual TLS), or --insecure",
        ),
        (
            ["agent", "--node", "n", "--state", "{tmp}/s", "--gossip-bind", "0.0.0.0:0"]
            + ["--insecure"],
            1,
            "there is no --join seed to learn the right one from: give --advertise HOST",
        ),
        (
            ["agent", "--node", "n", "--state", "{tmp}/s", "--join", "10.0.0.1:7946"],
            1,
            "cannot advertise 127.0.0.1 to seed 10.0.0.1:7946: a loopback address is "
            "unreachable from other hosts",
        ),
        (
            ["agent", "--node", "n", "--state", "{tmp}/s", "--join", "10.0.0.1"],
            2,
            "bad --join address '10.0.0.1': expected HOST:PORT",
        ),
        (
            ["agent", "--node", "n", "--state", "{tmp}/s", "--advertise-host", "0.0.0.0"],
            1,
            "cannot advertise instances on '0.0.0.0'",
        ),
    ],
)
def test_usage_errors_are_one_line(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    done = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("myco: error:")


async def _start_agent(
    state: Path, pub: Path, seed: str, *extra: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *MYCO,
        "agent",
        "--node",
        "node-k",
        "--join",
        seed,
        "--state",
        str(state),
        "--trust",
        str(pub),
        "--capacity-cpu-milli",
        "1000",
        "--capacity-memory-mb",
        "1024",
        *extra,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.fixture
async def reconciler_side(tmp_path: Path) -> AsyncIterator[tuple[Fabric, str, str, Path]]:
    spore, digest, pub = make_spore(tmp_path)
    async with (
        serve_repo(tmp_path / "repo") as (repo, url),
        open_fabric("reconciler", state_dir=tmp_path / "rf") as rec,
    ):
        await asyncio.to_thread(repo.put, spore)
        yield rec, digest, url, pub


def ready_record(rec: Fabric, iid: str, newer_than: float = 0.0) -> InstanceRecord | None:
    r = instance_seen(rec, "node-k", iid)
    if r is not None and r.phase == "ready" and r.updated_at > newer_than:
        return r
    return None


@pytest.mark.slow
async def test_kill_9_the_agent_and_it_readopts(
    tmp_path: Path, reconciler_side: tuple[Fabric, str, str, Path]
) -> None:
    rec, digest, url, pub = reconciler_side
    state = tmp_path / "state"
    agent = await _start_agent(state, pub, rec.addr)
    pids: list[int] = []
    try:
        publish_intent(rec, "node-k", 1, one("web-1", "web", digest, (url,)))
        first = await async_wait_for(lambda: ready_record(rec, "web-1"), within=60, what="ready")
        assert first.pid
        pids.append(first.pid)
        agent.send_signal(signal.SIGKILL)
        await agent.wait()
        assert read_start_ticks(first.pid) is not None  # the instance outlived its agent

        agent = await _start_agent(state, pub, rec.addr)
        again = await async_wait_for(
            lambda: ready_record(rec, "web-1", newer_than=first.updated_at),
            within=60,
            what="reported again by the new agent",
        )
        assert again.pid == first.pid
        assert again.restarts == 0

        publish_intent(rec, "node-k", 2)
        await async_wait_for(
            lambda: instance_seen(rec, "node-k", "web-1") is None, within=60, what="withered"
        )
        assert read_start_ticks(first.pid) is None
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(agent.wait(), 30)
            except TimeoutError:
                agent.kill()
                await agent.wait()
        for pid in pids:  # never leave a workload behind, even if the test failed
            if read_start_ticks(pid) is not None:
                os.killpg(pid, signal.SIGKILL)
    assert agent.returncode == 0, await agent.stderr.read() if agent.stderr else b""


@pytest.mark.slow
async def test_wither_on_exit_stops_the_instances(
    tmp_path: Path, reconciler_side: tuple[Fabric, str, str, Path]
) -> None:
    rec, digest, url, pub = reconciler_side
    agent = await _start_agent(tmp_path / "state", pub, rec.addr, "--wither-on-exit")
    pid = 0
    try:
        publish_intent(rec, "node-k", 1, one("web-1", "web", digest, (url,)))
        first = await async_wait_for(lambda: ready_record(rec, "web-1"), within=60, what="ready")
        assert first.pid
        pid = first.pid
        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 60) == 0
        assert read_start_ticks(pid) is None
        assert not list((tmp_path / "state" / "instances").iterdir())
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
        if pid and read_start_ticks(pid) is not None:
            os.killpg(pid, signal.SIGKILL)


def test_config_file_is_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("node: n1\nstate: s\nreplicas: 3\n")
    done = run_cli("agent", "--config", str(cfg))
    assert done.returncode == 1
    assert "unknown setting(s): replicas" in done.stderr
    cfg.write_text(f"node: n1\nstate: {tmp_path / 's'}\n")
    done = run_cli("agent", "--config", str(cfg))
    assert done.returncode == 1
    assert "no trusted keys" in done.stderr  # node and state came from the file


async def test_myco_agent_prints_its_startup_line_without_v(tmp_path: Path) -> None:
    from reconciler.spore.keys import generate_keypair

    _, pub = generate_keypair(tmp_path / "keys", "dev")
    proc = await asyncio.create_subprocess_exec(
        *MYCO, "agent", "--node", "n-line", "--state", str(tmp_path / "state"),
        "--trust", str(pub), "--capacity-cpu-milli", "1000", "--capacity-memory-mb", "1024",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    seen: list[bytes] = []

    async def startup_line() -> str:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            seen.append(line)
            if b"agent n-line:" in line:
                return line.decode()
        raise AssertionError(f"no start-up line; stderr was: {b''.join(seen).decode()}")

    try:
        line = await asyncio.wait_for(startup_line(), 60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, rest = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert "API http://127.0.0.1:" in line
    assert "dashboard http://127.0.0.1:" in line
    assert "/ui/" in line
    assert "gossip 127.0.0.1:" in line
    assert any(f"enforcement {m}," in line for m in ("cgroup2", "cgroup1", "rlimit")), line
    assert "1 trusted key" in line
    assert proc.returncode == 0, rest.decode()


async def test_insecure_wildcard_binds_start_and_say_so(tmp_path: Path) -> None:
    """``--insecure`` lets a keyless agent bind 0.0.0.0, and it advertises the address that
    routes to its seed: run in a network namespace of its own (loopback, and a veth pair
    holding 10.77.0.3/24), so the wildcard reaches nothing outside this test."""
    reason = netns_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from reconciler.spore.keys import generate_keypair

    _, pub = generate_keypair(tmp_path / "keys", "dev")
    seed = "10.77.0.1:7946"  # nobody there: the agent warns and keeps trying
    argv = [
        *MYCO, "agent", "--node", "n-open", "--state", str(tmp_path / "state"),
        "--trust", str(pub), "--capacity-cpu-milli", "1000", "--capacity-memory-mb", "1024",
        "--gossip-bind", "0.0.0.0:0", "--api", "0.0.0.0:0", "--join", seed, "--insecure",
    ]  # fmt: skip
    script = NETNS_SETUP + ' && exec "$@"'
    proc = await asyncio.create_subprocess_exec(
        "unshare", "-n", "sh", "-c", script, "sh", *argv,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    seen: list[str] = []

    async def lines_until_started() -> str:
        assert proc.stderr is not None
        while raw := await proc.stderr.readline():
            seen.append(raw.decode())
            if "agent n-open:" in seen[-1]:
                return seen[-1]
        raise AssertionError(f"no start-up line; stderr was: {''.join(seen)}")

    try:
        line = await asyncio.wait_for(lines_until_started(), 60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, rest = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert f"(the address that routes to seed {seed})" in line
    assert "gossip advertising 10.77.0.3:" in line
    assert "INSECURE (plaintext off loopback allowed by --insecure)" in line
    assert "API http://10.77.0.3:" in line  # a wildcard API is published at the advertised host
    assert "instances on 10.77.0.3" in line
    assert any("no member answered from 10.77.0.3:" in x and "still trying" in x for x in seen)
    assert "Traceback" not in "".join(seen) + rest.decode()
    assert proc.returncode == 0, rest.decode()
