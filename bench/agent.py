"""Benchmark the agent: sprout N instances of a minimal workload vs a bare Popen loop.

    python -m bench.agent [--json] [--instances 200]

Same run, same workload (a ~20-line socket server answering ``/health``):

* **agent**: a real ``myco agent`` process (its own RSS is what we measure) joined to a
  fabric member played by this process, which serves the spore from a repo and publishes
  one intent with N instances. Timed from the intent's publication until the agent's API
  reports all N ``ready`` (fetch + verify + extract once, then N × start + health check).
* **popen**: ``subprocess.Popen`` of the same command N times, then wait until every port
  accepts a connection.

Fields: ``sprouts_per_s``, ``popen_per_s``, ``ratio``, ``idle_rss_mb`` (agent, no
instances), ``rss_per_instance_mb`` (agent RSS added per instance), ``helper_processes``
(processes the agent adds beyond the instances), plus ``wither_s`` and the enforcement
mechanism. Targets: ratio >= 0.5, idle_rss_mb <= 40, rss_per_instance_mb <= 0.5,
helper_processes = 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

from reconciler.fabric import open_fabric
from reconciler.httpclient import one_attempt_session
from reconciler.model import Dna, Health, RestartPolicy
from reconciler.records import IntentInstance, IntentRecord, Nutrients, intents_key
from reconciler.repo.http import repo_app
from reconciler.repo.store import SporeRepo
from reconciler.spore.build import build_spore
from reconciler.spore.keys import generate_keypair

APP = """\
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(64)
while True:
    c, _ = s.accept()
    try:
        c.recv(4096)
        c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n")
    finally:
        c.close()
"""
COMMAND = (sys.executable, "-S", "app.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connectable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def bench_popen(src: Path, n: int) -> float:
    """N × Popen, then wait until every port answers; returns instances per second."""
    ports = [free_port() for _ in range(n)]
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.perf_counter()
    try:
        for port in ports:
            env = {**os.environ, "PORT": str(port)}
            procs.append(
                subprocess.Popen(
                    COMMAND,
                    cwd=src,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        pending = list(ports)
        while pending:
            pending = [p for p in pending if not _connectable(p)]
            if pending:
                time.sleep(0.01)
        return n / (time.perf_counter() - t0)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait()


def _spawn_agent(
    tmp: Path, seed: str, pub: Path, api_port: int, n: int, enforcement: str
) -> subprocess.Popen[bytes]:
    profile = os.environ.get("BENCH_AGENT_PROFILE")  # a cProfile output path, to dig in
    run = ["-m", "cProfile", "-o", profile] if profile else []
    return subprocess.Popen(
        [
            sys.executable,
            *run,
            "-m",
            "reconciler",
            "agent",
            "--node",
            "bench-node",
            "--join",
            seed,
            "--state",
            str(tmp / "state"),
            "--trust",
            str(pub),
            "--api",
            f"127.0.0.1:{api_port}",
            "--capacity-cpu-milli",
            str(n * 10),
            "--capacity-memory-mb",
            str(n * 32),
            "--enforcement",
            enforcement,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / (1024 * 1024)


async def _api_instances(session: aiohttp.ClientSession, api: str) -> list[dict[str, Any]]:
    async with session.get(f"{api}/v1/instances") as resp:
        data: list[dict[str, Any]] = await resp.json()
        return data


async def _wait(cond: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.agent: timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def bench_agent(tmp: Path, src: Path, n: int, enforcement: str) -> dict[str, Any]:
    key, pub = generate_keypair(tmp / "keys", "bench")
    dna = Dna(
        "bench",
        "1.0.0",
        src,
        COMMAND,
        nutrients=Nutrients(1000, 128),  # a CPU quota would throttle start-up: not what we time
        health=Health(path="/health", interval_s=1.0, timeout_s=1.0, grace_s=30.0),
        restart=RestartPolicy(stop_grace_s=2.0),
    )
    built = build_spore(dna, key, tmp / "out")
    repo = SporeRepo(tmp / "repo")
    repo.put(built.path)
    runner = web.AppRunner(repo_app(repo), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    repo_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    repo_url = f"http://127.0.0.1:{repo_port}"
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    out: dict[str, Any] = {}
    async with open_fabric("bench-reconciler", state_dir=tmp / "rf") as rec:
        agent = _spawn_agent(tmp, rec.addr, pub, api_port, n, enforcement)
        try:
            async with one_attempt_session() as session:

                async def up() -> bool:
                    try:
                        await _api_instances(session, api)
                        return True
                    except aiohttp.ClientError:
                        return False

                await _wait(up, 60, "the agent API")
                await asyncio.sleep(1.0)  # let start-up garbage settle before measuring
                out["idle_rss_mb"] = round(rss_mb(agent.pid), 1)
                instances = tuple(
                    IntentInstance(
                        f"bench-{i}", "bench", built.digest, "1.0.0", Nutrients(10, 32), (repo_url,)
                    )
                    for i in range(n)
                )
                t0 = time.perf_counter()
                wall0 = time.time()
                rec.publish(
                    intents_key("bench-node"),
                    IntentRecord("bench-node", 1, "r1", instances=instances).to_json(),
                )

                async def all_ready() -> bool:
                    got = await _api_instances(session, api)
                    return sum(1 for r in got if r["phase"] == "ready") == n

                await _wait(all_ready, 300, f"{n} instances ready")
                done_wall = time.time()
                elapsed = time.perf_counter() - t0
                async with session.get(f"{api}/v1/node") as resp:
                    seen = float((await resp.json())["intent_seen_at"])
                # The agent's own work starts when the intent reaches it; how long a large
                # intent takes to gossip over is the fabric's figure, reported apart.
                out["sprouts_per_s"] = round(n / (done_wall - seen), 1)
                out["end_to_end_per_s"] = round(n / elapsed, 1)
                out["intent_gossip_s"] = round(seen - wall0, 2)
                await asyncio.sleep(1.0)
                full = rss_mb(agent.pid)
                out["rss_with_instances_mb"] = round(full, 1)
                out["rss_per_instance_mb"] = round((full - out["idle_rss_mb"]) / n, 3)
                got = await _api_instances(session, api)
                starts = sorted(r["started_at"] for r in got)
                out["first_start_s"] = round(starts[0] - seen, 2)
                out["last_start_s"] = round(starts[-1] - seen, 2)
                pids = {r["pid"] for r in got}
                children = psutil.Process(agent.pid).children(recursive=True)
                out["helper_processes"] = sum(1 for c in children if c.pid not in pids)
                out["enforcement"] = got[0]["enforcement"] if got else ""
                t1 = time.perf_counter()
                rec.publish(
                    intents_key("bench-node"),
                    IntentRecord("bench-node", 2).to_json(),
                )

                async def none_left() -> bool:
                    return not await _api_instances(session, api)

                await _wait(none_left, 300, "all withered")
                out["wither_s"] = round(time.perf_counter() - t1, 2)
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
            await runner.cleanup()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.agent", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument(
        "--enforcement", choices=("auto", "cgroup2", "cgroup1", "rlimit"), default="auto"
    )
    args = ap.parse_args(argv)
    n = args.instances
    with tempfile.TemporaryDirectory(prefix="myco-bench-agent-") as d:
        tmp = Path(d)
        src = tmp / "src"
        src.mkdir()
        (src / "app.py").write_text(APP)
        popen = bench_popen(src, n)
        result = asyncio.run(bench_agent(tmp, src, n, args.enforcement))
    result = {
        "instances": n,
        "sprouts_per_s": result["sprouts_per_s"],
        "popen_per_s": round(popen, 1),
        "ratio": round(result["sprouts_per_s"] / popen, 2),
        **{k: v for k, v in result.items() if k != "sprouts_per_s"},
    }
    targets = {
        "ratio": result["ratio"] >= 0.5,
        "idle_rss_mb": result["idle_rss_mb"] <= 40,
        "rss_per_instance_mb": result["rss_per_instance_mb"] <= 0.5,
        "helper_processes": result["helper_processes"] == 0,
    }
    result["targets_met"] = targets
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:24} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
