"""The supervisor over real processes: start, health, restart, crash loop, wither, adopt."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path

import pytest

from reconciler.agent.runner import LocalRunner, ProcInfo, read_start_ticks
from reconciler.httpclient import one_attempt_session
from reconciler.model import Health, RestartPolicy
from reconciler.records import Nutrients
from tests.agent.conftest import Harness
from tests.helpers import async_wait_for

BILLING = Path(__file__).parents[2] / "workloads" / "billing" / "server.py"
OTHER_LOOPBACK = "127.0.0.2"  # 127.0.0.0/8 is all loopback: a stand-in for a host's address

FAST_FAIL = RestartPolicy(
    backoff_initial_s=0.02, backoff_max_s=0.05, max_failures=3, window_s=60, stop_grace_s=0.5
)


def environ_of(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def alive(pid: int) -> bool:
    return read_start_ticks(pid) is not None


async def test_healthy_instance_gets_ready_with_its_environment(harness: Harness) -> None:
    p = harness.persisted()
    iid = p.config.instance_id
    sup = harness.supervisor(p)
    await async_wait_for(harness.phase_is(iid, "ready"), what="ready")
    rec = harness.last(iid)
    assert rec is not None
    assert rec.healthy
    assert rec.pid
    assert rec.enforcement == harness.enforcer.mechanism
    assert rec.rss_mb > 1.0  # resource usage is reported
    assert rec.endpoint == sup.endpoint
    async with harness.session.get(f"http://{sup.endpoint}/hello") as resp:
        assert (await resp.text()).strip() == f"{iid} /hello"
    environ = environ_of(rec.pid)
    assert f"MYCO_NODE={harness.node}".encode() in environ
    assert b"MYCO_APP=demo" in environ
    assert f"PORT={p.port}".encode() in environ
    assert b"HOST=127.0.0.1" in environ  # the advertised host, beside PORT
    assert os.getpgid(rec.pid) == rec.pid
    assert os.getsid(rec.pid) == rec.pid
    log = harness.state.log_path(iid).read_text()
    assert f"starting {iid} on port {p.port}" in log


async def test_crash_at_start_is_reported_as_a_crash_loop(harness: Harness) -> None:
    p = harness.persisted("--crash", restart=FAST_FAIL)
    iid = p.config.instance_id
    harness.supervisor(p)
    await async_wait_for(harness.phase_is(iid, "failed"), what="failed")
    rec = harness.last(iid)
    assert rec is not None
    assert rec.last_exit_code == 3
    assert "crash loop: 3 failures" in rec.message
    assert "fatal: configuration missing" in rec.message
    assert rec.restarts == 2
    assert harness.phases(iid).count("starting") >= 3


async def test_never_healthy_is_restarted_then_failed(harness: Harness) -> None:
    p = harness.persisted(
        "--unhealthy",
        health=Health(interval_s=0.05, timeout_s=0.5, grace_s=0.3),
        restart=FAST_FAIL,
    )
    iid = p.config.instance_id
    harness.supervisor(p)
    await async_wait_for(harness.phase_is(iid, "failed"), within=20, what="failed")
    rec = harness.last(iid)
    assert rec is not None
    assert "not healthy within 0.3s" in rec.message
    assert "ready" not in harness.phases(iid)


async def test_exit_after_a_while_is_restarted_and_ready_again(harness: Harness) -> None:
    p = harness.persisted("--exit-after", "0.5")
    iid = p.config.instance_id
    harness.supervisor(p)
    await async_wait_for(
        lambda: (r := harness.last(iid)) is not None and r.restarts >= 1 and r.phase == "ready",
        within=20,
        what="ready after a restart",
    )
    rec = harness.last(iid)
    assert rec is not None
    assert rec.last_exit_code == 0


@pytest.mark.parametrize("harness", ["auto", "rlimit"], indirect=True)
async def test_wither_leaves_nothing_even_if_sigterm_is_ignored(
    harness: Harness, tmp_path: Path
) -> None:
    marker = tmp_path / "grandchild.pid"
    p = harness.persisted("--ignore-term", "--grandchild", str(marker))
    iid = p.config.instance_id
    harness.supervisor(p)
    await async_wait_for(harness.phase_is(iid, "ready"), what="ready")
    await async_wait_for(marker.exists, what="grandchild")
    grandchild = int(marker.read_text())
    rec = harness.last(iid)
    assert rec is not None
    assert rec.pid
    pid = rec.pid
    assert os.getsid(grandchild) != os.getsid(pid)  # it left the session: killpg misses it
    await harness.wither(iid)
    assert not alive(pid)
    assert not alive(grandchild)
    assert harness.phases(iid)[-2:] == ["draining", "exited"]
    assert not (harness.state.root / "instances" / f"{iid}.json").exists()


async def test_wither_waits_until_the_edge_stops_routing(harness: Harness) -> None:
    p = harness.persisted()
    iid = p.config.instance_id
    sup = harness.supervisor(p)
    await async_wait_for(harness.phase_is(iid, "ready"), what="ready")
    harness.routed.add(sup.endpoint)
    sup.request_wither()
    await async_wait_for(harness.phase_is(iid, "draining"), what="draining")
    rec = harness.last(iid)
    assert rec is not None
    assert rec.pid
    # still serving while the route lists it
    async with harness.session.get(f"http://{sup.endpoint}/x") as resp:
        assert resp.status == 200
    assert alive(rec.pid)
    harness.routed.clear()
    await asyncio.wait_for(harness.tasks.pop(iid), 20)
    assert not alive(rec.pid)


async def test_restarted_agent_readopts_and_logs_keep_flowing(harness: Harness) -> None:
    p = harness.persisted("--chatty")
    iid = p.config.instance_id
    harness.supervisor(p)
    await async_wait_for(harness.phase_is(iid, "ready"), what="ready")
    rec = harness.last(iid)
    assert rec is not None
    assert rec.pid
    await harness.detach(iid)  # as if the agent were killed
    log = harness.state.log_path(iid)
    size = log.stat().st_size
    await async_wait_for(lambda: log.stat().st_size > size, what="log grows while detached")

    harness.runner = LocalRunner()  # a new agent process knows no children
    (persisted,) = harness.state.load_all()
    assert persisted.proc is not None
    assert persisted.proc.pid == rec.pid
    harness.supervisor(persisted)
    await async_wait_for(
        lambda: len([r for r in harness.reports if r.phase == "ready"]) >= 2, what="re-ready"
    )
    again = harness.last(iid)
    assert again is not None
    assert again.pid == rec.pid
    assert again.restarts == 0
    size = log.stat().st_size
    await async_wait_for(lambda: log.stat().st_size > size, what="log grows after adoption")


async def test_a_reused_pid_is_never_adopted(harness: Harness) -> None:
    p = harness.persisted()
    iid = p.config.instance_id
    harness.supervisor(p)
    await async_wait_for(harness.phase_is(iid, "ready"), what="ready")
    await harness.detach(iid)
    (persisted,) = harness.state.load_all()
    assert persisted.proc is not None
    real = persisted.proc
    # Pretend the recorded process started at another time: its pid now names another one.
    fake = ProcInfo(real.pid, real.start_ticks + 1)
    assert not harness.runner.adopt(fake)
    bystander = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        impostor = ProcInfo(bystander.pid, (read_start_ticks(bystander.pid) or 0) + 1)
        assert not harness.runner.adopt(impostor)
        seen = len(harness.reports)
        harness.supervisor(dataclasses.replace(persisted, proc=impostor))
        await async_wait_for(
            lambda: any(r.phase == "ready" for r in harness.reports[seen:]),
            what="ready on a new process",
        )
        rec = harness.last(iid)
        assert rec is not None
        assert rec.pid not in (bystander.pid, real.pid)
        assert bystander.returncode is None
        assert alive(bystander.pid)
        # the instance's own leftover (found by its cgroup and environment) was reaped
        assert not alive(real.pid)
    finally:
        bystander.kill()
        await bystander.wait()


async def test_memory_limit_is_enforced(harness: Harness) -> None:
    p = harness.persisted(
        "--hog-mb",
        "400",
        nutrients=Nutrients(200, 48),
        restart=RestartPolicy(policy="never"),
    )
    iid = p.config.instance_id
    sup = harness.supervisor(p)
    await async_wait_for(harness.phase_is(iid, "ready"), what="ready")
    async with one_attempt_session() as s, s.get(f"http://{sup.endpoint}/go") as resp:
        assert resp.status == 200
    await async_wait_for(harness.phase_is(iid, "exited"), within=20, what="killed")
    rec = harness.last(iid)
    assert rec is not None
    assert rec.last_exit_code != 0
    if harness.enforcer.mechanism.startswith("cgroup"):
        assert "OOM killer" in rec.message
        assert rec.last_exit_code == -9
    log = harness.state.log_path(iid).read_text()
    assert "holding 400 MiB" not in log


async def test_a_workload_that_honours_host_is_ready_on_the_advertised_address(
    harness: Harness,
) -> None:
    harness.settings = dataclasses.replace(harness.settings, advertise_host=OTHER_LOOPBACK)
    p = harness.persisted()
    p = dataclasses.replace(
        p, config=dataclasses.replace(p.config, argv=(sys.executable, str(BILLING)))
    )
    iid = p.config.instance_id
    harness.supervisor(p)
    await async_wait_for(harness.phase_is(iid, "ready"), what="ready")
    rec = harness.last(iid)
    assert rec is not None
    assert rec.pid
    assert rec.endpoint == f"{OTHER_LOOPBACK}:{p.port}"
    assert f"HOST={OTHER_LOOPBACK}".encode() in environ_of(rec.pid)
    async with harness.session.get(f"http://{rec.endpoint}/hello") as resp:
        assert resp.status == 200


async def test_a_workload_on_loopback_only_is_never_ready_and_says_why(harness: Harness) -> None:
    # serve.py ignores HOST and binds 127.0.0.1: the advertised endpoint stays closed.
    harness.settings = dataclasses.replace(harness.settings, advertise_host=OTHER_LOOPBACK)
    p = harness.persisted(restart=FAST_FAIL)
    iid = p.config.instance_id
    harness.supervisor(p)
    await async_wait_for(harness.phase_is(iid, "failed"), within=30, what="failed")
    rec = harness.last(iid)
    assert rec is not None
    assert "listens on 127.0.0.1 only: unreachable from other hosts" in rec.message
    assert f"$HOST: {OTHER_LOOPBACK}" in rec.message
    assert "ready" not in harness.phases(iid)
    assert not any(r.healthy for r in harness.reports if r.instance_id == iid)
