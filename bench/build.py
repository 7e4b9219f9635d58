"""Dependency builds: cold, cached, and reproducible, on a FastAPI app.

    python -m bench.build [--json] [--app DIR] [--timeout 600]

The app is ``workloads/fastapi-hello/`` when it exists (its ``requirements.txt`` is the
pinned lock), else a built-in FastAPI + uvicorn app with its own pinned lock written to a
temporary directory. The package index is whatever the host is configured for (pip.conf,
``PIP_INDEX_URL``), as in production.

* ``cold_build_s``: a whole spore build (``pip install`` of every pinned package, the
  normalisation, packing and signing) with an empty build cache;
* ``cached_build_s``: the same inputs again with that cache: no installer runs (the spore is
  still packed and signed: what ``myco build`` costs);
* ``reproducible``: a second clean build (another cache, another temporary directory,
  another copy of the source) gives the same spore digest (1) or not (0);
* ``sprout_agent_s``: from publishing an intent for one instance of the spore (command
  ``python3 app.py``, as in garden/fastapi-hello.yaml) to a real ``myco agent`` (a
  subprocess joined to a fabric member played by this process, which serves the spore from
  a repo) until that instance's endpoint answers ``GET /health`` with 200. The spore is
  already fetched, verified and extracted by that agent (a warm-up instance first, timed
  apart as ``sprout_agent_cold_s``); ``sprout_spore_cached`` says so;
* ``sprout_by_hand_s``: from ``Popen`` of ``app.py`` with the python of a virtual
  environment (``python3 -m venv`` + ``pip install -r requirements.txt``, both untimed)
  until ``GET /health`` answers 200;
* ``sprout_ratio = sprout_by_hand_s / sprout_agent_s``: medians of ``--runs`` (3) each,
  interleaved, polled every 10 ms. Both sides run the same base ``python3`` (no FastAPI of
  its own: the agent's instance finds it in ``_vendor/python``, the hand-started one in
  its venv) with a whole CPU (no CPU quota throttling the start-up). A part that cannot
  run here reads ``{"skipped": reason}``.

Targets: ``cached_build_s <= 0.5``, ``reproducible == 1``, ``sprout_ratio >= 0.8`` (the
agent's start at most 25% slower than by hand). ``--json`` prints one object with the
figures, ``targets`` and ``targets_met``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from reconciler.fabric import open_fabric
from reconciler.model import Build, Dna, Health, RestartPolicy
from reconciler.records import IntentInstance, IntentRecord, Nutrients, intents_key
from reconciler.repo.http import repo_app
from reconciler.repo.store import SporeRepo
from reconciler.spore.build import BuiltSpore
from reconciler.spore.deps import BuildSettings, build_app_spore
from reconciler.spore.keys import generate_keypair

WORKLOAD = Path(__file__).resolve().parent.parent / "workloads" / "fastapi-hello"

LOCK = """\
annotated-types==0.7.0
anyio==4.8.0
click==8.1.8
fastapi==0.115.6
h11==0.14.0
idna==3.10
pydantic==2.10.4
pydantic-core==2.27.2
sniffio==1.3.1
starlette==0.41.3
typing-extensions==4.12.2
uvicorn==0.32.1
"""

APP = """\
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/")
def hello() -> dict[str, str]:
    return {"hello": "world"}


if __name__ == "__main__":
    import os

    import uvicorn

    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8083"))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
"""

POLL_S = 0.01  # the /health polling interval of both sides
START_DEADLINE_S = 120.0  # bound on one start (either side) reaching its first 200
NODE = "bench-node"


def _source(root: Path, given: Path | None) -> Path:
    src = root / "src"
    if given is not None:
        shutil.copytree(given, src, ignore=shutil.ignore_patterns("node_modules", "_vendor"))
    else:
        src.mkdir(parents=True)
        (src / "app.py").write_text(APP)
        (src / "requirements.txt").write_text(LOCK)
    return src


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - loopback
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def _until_healthy(endpoint: Any, t0: float, what: str) -> float:
    """Poll ``GET http://{endpoint()}/health`` every 10 ms until 200; seconds since ``t0``.

    ``endpoint`` returns HOST:PORT, or None while it is not known yet (asked again each poll).
    """
    deadline = t0 + START_DEADLINE_S
    while True:
        where = endpoint()
        if where and _get(f"http://{where}/health")[0] == 200:
            return time.perf_counter() - t0
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what}: no 200 on /health within {START_DEADLINE_S:.0f}s")
        time.sleep(POLL_S)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _clean_env(python_bin: Path) -> dict[str, str]:
    """This environment without our venv: ``python3`` on PATH is the base interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(Path(sys.prefix) / "bin")
    rest = [d for d in env.get("PATH", "").split(os.pathsep) if d and d != venv_bin]
    env["PATH"] = os.pathsep.join([str(python_bin), *rest])
    return env


def _venv(root: Path, src: Path, python3: Path, timeout: float) -> Path:
    """``python3 -m venv`` + ``pip install -r requirements.txt``: untimed. Its python."""
    venv = root / "venv"
    env = _clean_env(python3.parent)
    subprocess.run(
        [str(python3), "-m", "venv", str(venv)], check=True, timeout=120, env=env,
        stdin=subprocess.DEVNULL, capture_output=True,
    )  # fmt: skip
    done = subprocess.run(
        [
            str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps",
            "--disable-pip-version-check", "-q", "-r", str(src / "requirements.txt"),
        ],
        timeout=timeout, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pip install into the venv failed: {done.stderr.strip()[-300:]}")
    return venv / "bin" / "python"


def _by_hand(python: Path, src: Path) -> float:
    """Start ``app.py`` with the venv's python; seconds to the first 200 on /health."""
    port = _free_port()
    env = {**_clean_env(python.parent), "HOST": "127.0.0.1", "PORT": str(port)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(python), "app.py"], cwd=src, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        return _until_healthy(lambda: f"127.0.0.1:{port}", t0, "by hand")
    finally:
        _stop(proc)


def _api(api: str, path: str) -> Any:
    status, body = _get(f"{api}{path}")
    return json.loads(body) if status == 200 else None


def _spawn_agent(
    tmp: Path, seed: str, pub: Path, api: str, python3: Path, log: Any
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "reconciler", "agent", "--node", NODE, "--join", seed,
            "--state", str(tmp / "state"), "--trust", str(pub), "--api", api[7:],
            "--capacity-cpu-milli", "2000", "--capacity-memory-mb", "2048",
        ],
        env=_clean_env(python3.parent), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )  # fmt: skip


async def _sprout_agent_side(
    tmp: Path, spore: BuiltSpore, pub: Path, python3: Path, hand: Any, runs: int
) -> dict[str, Any]:
    """A real agent; ``runs`` timed sprouts, each after one ``hand()`` start (interleaved)."""
    repo = SporeRepo(tmp / "repo")
    repo.put(spore.path)
    runner = web.AppRunner(repo_app(repo), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    repo_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    api = f"http://127.0.0.1:{_free_port()}"
    nutrients = Nutrients(1000, 256)  # a whole CPU: no quota throttling the start-up
    epoch = 0
    out: dict[str, Any] = {"agent": [], "hand": [], "gossip": []}
    try:
        with (tmp / "agent.log").open("wb") as log:
            async with open_fabric("bench-build-reconciler", state_dir=tmp / "rf") as rec:
                agent = _spawn_agent(tmp, rec.addr, pub, api, python3, log)
                try:

                    def publish(*ids: str) -> None:
                        nonlocal epoch
                        epoch += 1
                        insts = tuple(
                            IntentInstance(
                                i, "fastapi-hello", spore.digest, "1.0", nutrients, (repo_url,)
                            )
                            for i in ids
                        )
                        rec.publish(
                            intents_key(NODE),
                            IntentRecord(NODE, epoch, f"r{epoch}", instances=insts).to_json(),
                        )

                    def endpoint(iid: str) -> Any:
                        def get() -> str | None:
                            for r in _api(api, "/v1/instances") or ():
                                if r["instance_id"] == iid and r.get("endpoint"):
                                    return str(r["endpoint"])
                            return None

                        return get

                    async def wait(cond: Any, within: float, what: str) -> None:
                        deadline = time.monotonic() + within
                        while not await asyncio.to_thread(cond):
                            if agent.poll() is not None:
                                raise RuntimeError(f"the agent exited {agent.returncode}")
                            if time.monotonic() > deadline:
                                raise RuntimeError(
                                    f"timed out after {within:.0f}s waiting for {what}"
                                )
                            await asyncio.sleep(0.05)

                    async def sprout(iid: str) -> float:
                        t0, wall0 = time.perf_counter(), time.time()
                        publish(iid)
                        took = await asyncio.to_thread(_until_healthy, endpoint(iid), t0, "agent")
                        node = await asyncio.to_thread(_api, api, "/v1/node")
                        for r in await asyncio.to_thread(_api, api, "/v1/instances") or ():
                            out["enforcement"] = r.get("enforcement", "")
                        out["gossip"].append(float(node["intent_seen_at"]) - wall0)
                        publish()  # wither it
                        await wait(
                            lambda: _api(api, "/v1/instances") == [], 60, "the instance to go"
                        )
                        return took

                    await wait(lambda: _api(api, "/v1/instances") is not None, 60, "the agent API")
                    out["cold"] = await sprout("fh-warm")  # fetch + verify + extract, then start
                    payload = tmp / "state" / "payloads" / spore.digest
                    cached = []
                    for i in range(runs):
                        out["hand"].append(await asyncio.to_thread(hand))
                        cached.append(payload.is_dir())
                        out["agent"].append(await sprout(f"fh-{i}"))
                    out["cached"] = all(cached)
                finally:
                    agent.send_signal(signal.SIGTERM)
                    try:
                        agent.wait(30)
                    except subprocess.TimeoutExpired:
                        agent.kill()
                        agent.wait(10)
    finally:
        await runner.cleanup()
    return out


def sprout(
    root: Path, dna: Dna, key: Any, pub: Path, given: Path | None, settings: BuildSettings,
    runs: int,
) -> dict[str, Any]:  # fmt: skip
    """The sprout figures, or ``{"sprout_skipped": reason}`` for what cannot run here."""
    python3 = Path(sys.base_prefix) / "bin" / "python3"
    if not python3.is_file():
        return {"sprout_skipped": f"no base interpreter at {python3}"}
    app = replace(
        dna,
        command=("python3", "app.py"),
        nutrients=Nutrients(1000, 256),
        health=Health(path="/health", interval_s=1.0, timeout_s=1.0, grace_s=60.0),
        restart=RestartPolicy(stop_grace_s=5.0),
    )
    spore = build_app_spore(app, key, root / "out-sprout", root / "cache-a", settings)
    hand_src = _source(root / "hand", given)
    try:
        python = _venv(root / "hand", hand_src, python3, settings.timeout_s)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        return {"sprout_skipped": f"cannot make the by-hand venv here: {exc}"}
    (root / "agent").mkdir()
    got = asyncio.run(
        _sprout_agent_side(
            root / "agent", spore, pub, python3, lambda: _by_hand(python, hand_src), runs
        )
    )
    agent_s, hand_s = statistics.median(got["agent"]), statistics.median(got["hand"])
    return {
        "sprout_agent_s": round(agent_s, 3),
        "sprout_by_hand_s": round(hand_s, 3),
        "sprout_ratio": round(hand_s / agent_s, 3),
        "sprout_runs": runs,
        "sprout_agent_runs_s": [round(x, 3) for x in got["agent"]],
        "sprout_by_hand_runs_s": [round(x, 3) for x in got["hand"]],
        "sprout_agent_cold_s": round(got["cold"], 3),
        "sprout_intent_gossip_s": round(statistics.median(got["gossip"]), 3),
        "sprout_spore_cached": got["cached"],
        "sprout_enforcement": got.get("enforcement", ""),
        "sprout_python": f"{python3} (base; no FastAPI of its own)",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.build", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--app", type=Path, help="an app directory with requirements.txt")
    ap.add_argument("--timeout", type=float, default=600.0, help="installer timeout (600 s)")
    ap.add_argument("--runs", type=int, default=3, help="sprouts timed per side (3)")
    args = ap.parse_args(argv)
    given = args.app or (WORKLOAD if (WORKLOAD / "requirements.txt").is_file() else None)
    settings = BuildSettings(timeout_s=args.timeout)

    with tempfile.TemporaryDirectory(prefix="myco-bench-build-") as tmp:
        root = Path(tmp)
        src = _source(root / "a", given)
        key, pub = generate_keypair(root / "keys", "bench")
        build = Build("python", requirements="requirements.txt")
        dna = Dna("fastapi-hello", "1.0", src, ("python3", "-m", "uvicorn", "app:app"), build=build)

        t0 = time.perf_counter()
        cold = build_app_spore(dna, key, root / "out-cold", root / "cache-a", settings)
        cold_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        cached = build_app_spore(dna, key, root / "out-cached", root / "cache-a", settings)
        cached_s = time.perf_counter() - t0

        other = _source(root / "b" / "elsewhere", given)
        clean = build_app_spore(
            replace(dna, source=other), key, root / "out-b", root / "cache-b", settings
        )
        assert cold.manifest.build is not None
        figures = {
            "app": str(given) if given else "built-in fastapi+uvicorn",
            "packages": sum(
                1 for f in cold.manifest.files if f.path.endswith("dist-info/METADATA")
            ),
            "files": len(cold.manifest.files),
            "spore_mb": round(cold.path.stat().st_size / 1e6, 2),
            "platform": cold.manifest.build.platform,
            "cold_build_s": round(cold_s, 3),
            "cached_build_s": round(cached_s, 3),
            "cached_same_digest": int(cached.digest == cold.digest),
            "reproducible": int(clean.digest == cold.digest),
            "cpus": os.cpu_count(),
        }
        sprouted = sprout(root, dna, key, pub, given, settings, args.runs)
    if "sprout_skipped" in sprouted:
        skipped = {"skipped": sprouted.pop("sprout_skipped")}
        sprouted = {k: skipped for k in ("sprout_agent_s", "sprout_by_hand_s", "sprout_ratio")}
    figures.update(sprouted)
    ratio = figures["sprout_ratio"]
    targets: dict[str, Any] = {
        "cached_build_s <= 0.5": cached_s <= 0.5,
        "reproducible == 1": clean.digest == cold.digest,
        "sprout_ratio >= 0.8": ratio >= 0.8 if isinstance(ratio, float) else ratio,
    }
    ok = all(v for v in targets.values() if isinstance(v, bool))
    if args.json:
        print(json.dumps({**figures, "targets": targets, "targets_met": ok}))
    else:
        for k, v in figures.items():
            print(f"{k:>18}: {v}")
        for name, met in targets.items():
            print(f"{'target':>18}: {name}: {'met' if met else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
