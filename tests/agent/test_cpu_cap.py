"""The CPU nutrient really throttles: a busy loop whose DNA asks for 200m, run by a real agent
from a real signed spore, gets about a fifth of one core, and the kernel says it throttled
it (``nr_throttled`` grows in the instance's ``cpu.stat``).

Measured on the host's own mechanism (cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``, as the
agent detects it); skipped, with the reason, where only rlimits are in force (no CPU cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.agent.nutrients import Enforcer
from reconciler.fabric import open_fabric
from reconciler.model import Dna, Health, RestartPolicy
from reconciler.records import Nutrients
from reconciler.spore.build import build_spore
from reconciler.spore.keys import generate_keypair
from reconciler.spore.trust import TrustPolicy
from tests.agent.mesh import one, publish_intent, serve_repo
from tests.helpers import async_wait_for

#: one thread spins, the main thread answers the health check
SPIN = textwrap.dedent(
    """\
    import os, threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    def spin():
        n = 0
        while True:
            n += 1

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    threading.Thread(target=spin, daemon=True).start()
    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Health).serve_forever()
    """
)
CPU_MILLI = 200
WINDOW_S = 3.0
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: set[int]) -> float:
    """utime + stime of ``pids`` (every thread of each), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / TICK


def _cpu_stat(dirs: list[Path]) -> dict[str, int]:
    """The instance's ``cpu.stat`` (the one holding ``nr_throttled``: the cpu hierarchy)."""
    for d in dirs:
        with contextlib.suppress(OSError):
            stat = dict(line.split() for line in (d / "cpu.stat").read_text().splitlines())
            if "nr_throttled" in stat:
                return {k: int(v) for k, v in stat.items()}
    raise AssertionError(f"no cpu.stat with nr_throttled in {dirs}")


def _outweigh_the_neighbours(groups: list[Path]) -> None:
    """Give the node's group (``myco-<node>``, the instance's parent) the highest CPU weight.

    On a shared host other busy processes would otherwise starve the loop *below* its
    quota (the group weighs 200m against their full share each), and then nothing shows
    whether the cap works. With the weight out of the way, only the quota can hold the
    loop at 20%; the quota itself is the agent's, untouched.
    """
    for g in groups:
        for name, most in (("cpu.shares", "262144"), ("cpu.weight", "10000")):
            if (g / name).is_file():
                (g / name).write_text(most)


def _procs(dirs: list[Path]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        with contextlib.suppress(OSError):
            pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
    return pids


async def test_a_200m_busy_loop_is_throttled_to_a_fifth_of_a_core(tmp_path: Path) -> None:
    node = f"cpu-{os.getpid()}-{tmp_path.name[-6:]}".replace("_", "-")
    probe = Enforcer(node)
    if probe.mechanism not in ("cgroup2", "cgroup1"):
        pytest.skip(f"no CPU cap on this host: {probe.reason}")
    src = tmp_path / "src"
    src.mkdir()
    (src / "spin.py").write_text(SPIN)
    key, pub = generate_keypair(tmp_path / "keys", "dev")
    dna = Dna(
        "spin",
        "1.0.0",
        src.resolve(),
        (sys.executable, "spin.py"),
        nutrients=Nutrients(CPU_MILLI, 64),  # what the agent enforces: the signed DNA's
        health=Health(interval_s=0.2, timeout_s=2.0, grace_s=20.0),
        restart=RestartPolicy(backoff_initial_s=0.05, backoff_max_s=0.2, stop_grace_s=1.0),
    )
    built = build_spore(dna, key, tmp_path / "out")
    cfg = AgentConfig(
        node=node,
        state_dir=tmp_path / "state",
        capacity=Nutrients(1000, 1024),
        resync_s=0.2,
        drain_delay_s=0.05,
        drain_timeout_s=5.0,
        wither_on_exit=True,
    )
    pid = 0
    try:
        async with (
            serve_repo(tmp_path / "repo") as (repo, url),
            open_fabric("reconciler", state_dir=tmp_path / "rf") as rec,
            open_fabric(node, seeds=[rec.addr], state_dir=tmp_path / "af") as fab,
        ):
            await asyncio.to_thread(repo.put, built.path)
            agent = Agent(cfg, fab, TrustPolicy.load([pub]))
            task = asyncio.ensure_future(agent.run())
            try:
                publish_intent(rec, node, 1, one("spin-1", "spin", built.digest, (url,)))

                def ready() -> bool:
                    r = agent.records.get("spin-1")
                    return r is not None and r.phase == "ready"

                await async_wait_for(ready, within=30, what="the busy loop ready")
                record = agent.records["spin-1"]
                assert record.enforcement == probe.mechanism
                dirs = [g / "spin-1" for g in probe.agent_dirs()]
                pids = _procs(dirs)
                assert record.pid in pids
                pid = record.pid or 0

                _outweigh_the_neighbours(probe.agent_dirs())
                before_stat, before_cpu, t0 = _cpu_stat(dirs), _cpu_seconds(pids), time.monotonic()
                await asyncio.sleep(WINDOW_S)  # the measuring window (nothing to wait for)
                after_stat, after_cpu, t1 = _cpu_stat(dirs), _cpu_seconds(pids), time.monotonic()
                share = (after_cpu - before_cpu) / (t1 - t0)
                throttled = after_stat["nr_throttled"] - before_stat["nr_throttled"]
                periods = after_stat["nr_periods"] - before_stat["nr_periods"]
                print(
                    f"{probe.mechanism}: {share:.1%} of a core over {t1 - t0:.2f}s, "
                    f"throttled in {throttled}/{periods} periods"
                )
                # Unthrottled it would spin a whole core (100%); capped, about 20%.
                assert 0.10 <= share <= 0.35, f"{share:.1%} of a core"
                # The quota ran out in most 100 ms periods of the window: the cap did that.
                assert periods >= 0.8 * WINDOW_S * 10
                assert throttled >= 0.5 * periods, (throttled, periods)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert not _procs([g / "spin-1" for g in probe.agent_dirs()])  # withered on exit
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for g in probe.agent_dirs():
            for c in g.glob("*/") if g.is_dir() else ():
                with contextlib.suppress(OSError):
                    os.rmdir(c)
            with contextlib.suppress(OSError):
                os.rmdir(g)
