"""The host's platform tags, the agent's refusal of a foreign build, vendored dependencies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform as stdlib_platform
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.agent.platform import (
    NODE_PROBE,
    PYTHON_PROBE,
    PlatformMismatch,
    check_platform,
    detect,
    host_tags,
    node_tag,
    python_tag,
    spore_platform,
)
from reconciler.agent.supervisor import vendored_paths
from reconciler.fabric import Fabric, open_fabric
from reconciler.model import Build, Dna, Health, RestartPolicy
from reconciler.records import KEY_NODE, InstanceRecord, NodeRecord, Nutrients
from reconciler.repo.store import SporeRepo
from reconciler.spore.build import build_spore
from reconciler.spore.manifest import SporeManifest
from reconciler.spore.platforms import node_platform, python_platform
from reconciler.spore.trust import TrustPolicy
from tests.agent.mesh import WORKLOADS, instance_seen, make_spore, one, publish_intent, serve_repo
from tests.helpers import async_wait_for

HOST = ("cp311-manylinux_x86_64", "any")


# --- the tags -------------------------------------------------------------------------


def py(
    impl: str = "cpython", version: tuple[int, int] = (3, 11), **kw: object
) -> dict[str, object]:
    info: dict[str, object] = {"impl": impl, "version": list(version), "machine": "x86_64"}
    info.update(libc="glibc", gil_disabled=False)
    info.update(kw)
    return info


@pytest.mark.parametrize(
    ("info", "tag"),
    [
        (py(), "cp311-manylinux_x86_64"),
        (py(version=(3, 12), machine="aarch64"), "cp312-manylinux_aarch64"),
        (py(libc=""), "cp311-musllinux_x86_64"),  # musl: platform.libc_ver() finds no glibc
        (py(version=(3, 13), gil_disabled=True), "cp313t-manylinux_x86_64"),
        (py(impl="pypy", version=(3, 10)), "pp310-manylinux_x86_64"),
        (py(machine="AMD64"), "cp311-manylinux_amd64"),
        (py(machine=""), ""),
        ({"impl": "cpython"}, ""),
    ],
)
def test_python_tag(info: dict[str, object], tag: str) -> None:
    assert python_tag(info) == tag


@pytest.mark.parametrize(
    ("info", "tag"),
    [
        ({"version": "20.20.2", "platform": "linux", "arch": "x64"}, "node20-linux_x64"),
        ({"version": "v22.1.0", "platform": "linux", "arch": "arm64"}, "node22-linux_arm64"),
        ({"version": "", "platform": "linux", "arch": "x64"}, ""),
        ({"version": "20.1.0", "platform": "linux"}, ""),
    ],
)
def test_node_tag(info: dict[str, object], tag: str) -> None:
    assert node_tag(info) == tag


def test_host_tags_end_with_any_and_skip_what_is_missing() -> None:
    node = {"version": "20.1.0", "platform": "linux", "arch": "x64"}
    assert host_tags(py(), node) == ("cp311-manylinux_x86_64", "node20-linux_x64", "any")
    assert host_tags(None, node) == ("node20-linux_x64", "any")
    assert host_tags(None, None) == ("any",)
    assert host_tags(py(machine=""), None) == ("any",)


@pytest.mark.parametrize("platform", ["", "any", "cp311-manylinux_x86_64"])
def test_check_platform_lets_through_what_the_host_runs(platform: str) -> None:
    check_platform(platform, HOST)


def test_check_platform_refuses_a_foreign_build_in_one_line() -> None:
    with pytest.raises(PlatformMismatch) as err:
        check_platform("cp312-manylinux_aarch64", HOST)
    assert str(err.value) == (
        "built for cp312-manylinux_aarch64; this host runs cp311-manylinux_x86_64, any"
    )
    with pytest.raises(PlatformMismatch, match="this host runs none$"):
        check_platform("node20-linux_x64", ())


def test_spore_platform_reads_the_manifest_or_its_json() -> None:
    manifest = SporeManifest(name="a", version="1", command=("x",))
    assert spore_platform(manifest) == ""
    built = replace(
        manifest, build=Build(kind="node", lockfile="package-lock.json", platform="any")
    )
    assert spore_platform(built) == "any"
    assert spore_platform({"build": {"platform": "node20-linux_x64"}}) == "node20-linux_x64"
    assert spore_platform({"runtime": {}}) == ""
    assert spore_platform({"build": {"platform": 3}}) == ""


# --- detection --------------------------------------------------------------------------


def fake(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


PY312_ARM = '{"impl": "cpython", "version": [3, 12], "machine": "aarch64", "libc": "glibc"}'
NODE22_ARM = '{"version": "22.3.0", "platform": "linux", "arch": "arm64"}'


async def test_detect_asks_the_interpreters_on_the_path(tmp_path: Path) -> None:
    fake(tmp_path, "python3", f"echo '{PY312_ARM}'")
    fake(tmp_path, "node", f"echo '{NODE22_ARM}'")
    tags = await detect(str(tmp_path))
    assert tags == ("cp312-manylinux_aarch64", "node22-linux_arm64", "any")


async def test_detect_without_node_or_with_a_broken_python(tmp_path: Path) -> None:
    fake(tmp_path / "a", "python3", f"echo '{PY312_ARM}'")
    assert await detect(str(tmp_path / "a")) == ("cp312-manylinux_aarch64", "any")
    fake(tmp_path / "b", "python3", "echo not json")
    fake(tmp_path / "b", "node", f"echo '{NODE22_ARM}'; exit 3")
    assert await detect(str(tmp_path / "b")) == ("any",)
    assert await detect(str(tmp_path / "nothing-here")) == ("any",)


async def test_detect_is_bounded_by_its_timeout(tmp_path: Path) -> None:
    fake(tmp_path, "python3", "exec sleep 30")
    fake(tmp_path, "node", f"echo '{NODE22_ARM}'")
    started = time.monotonic()
    assert await detect(str(tmp_path), timeout_s=0.3) == ("node22-linux_arm64", "any")
    assert time.monotonic() - started < 5


def _path_python3_is_this_interpreter() -> bool:
    python3 = shutil.which("python3")
    return python3 is not None and os.path.realpath(python3) == os.path.realpath(sys.executable)


async def test_detect_on_this_host_names_the_python3_workloads_get() -> None:
    tags = await detect()
    assert tags[-1] == "any"
    if not _path_python3_is_this_interpreter():
        pytest.skip("the python3 on PATH is not this interpreter")
    abi = f"cp{sys.version_info.major}{sys.version_info.minor}"
    libc = "manylinux" if stdlib_platform.libc_ver()[0] == "glibc" else "musllinux"
    assert f"{abi}-{libc}_{stdlib_platform.machine().lower()}" in tags


def test_the_agents_tags_agree_with_the_builders() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PYTHON_PROBE], capture_output=True, text=True, check=True
    )
    assert python_tag(json.loads(out.stdout)) == python_platform()
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    out = subprocess.run([node, "-e", NODE_PROBE], capture_output=True, text=True, check=True)
    assert node_tag(json.loads(out.stdout)) == node_platform(node)


# --- vendored dependencies ---------------------------------------------------------------


def test_vendored_paths_put_the_payloads_dependencies_first(tmp_path: Path) -> None:
    assert vendored_paths(tmp_path, {}) == {}
    (tmp_path / "_vendor" / "python").mkdir(parents=True)
    (tmp_path / "node_modules").mkdir()
    assert vendored_paths(tmp_path, {}) == {
        "PYTHONPATH": str(tmp_path / "_vendor" / "python"),
        "NODE_PATH": str(tmp_path / "node_modules"),
    }
    env = vendored_paths(tmp_path, {"PYTHONPATH": "src", "NODE_PATH": "/opt/lib"})
    assert env["PYTHONPATH"] == f"{tmp_path / '_vendor' / 'python'}{os.pathsep}src"
    assert env["NODE_PATH"] == f"{tmp_path / 'node_modules'}{os.pathsep}/opt/lib"


def test_a_vendored_python_module_imports_with_that_environment(tmp_path: Path) -> None:
    vendor = tmp_path / "_vendor" / "python" / "vendored_hello"
    vendor.mkdir(parents=True)
    (vendor / "__init__.py").write_text("WORD = 'vendored'\n")
    env = {"PATH": os.environ.get("PATH", ""), **vendored_paths(tmp_path, {})}
    argv = [sys.executable, "-c", "import vendored_hello; print(vendored_hello.WORD)"]
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "vendored", out.stderr
    bare = subprocess.run(argv, cwd=tmp_path, env={"PATH": env["PATH"]}, capture_output=True)
    assert bare.returncode != 0  # it is the environment that finds it


# --- the agent ----------------------------------------------------------------------------


@dataclass
class Agents:
    rec: Fabric
    agent: Agent
    repo: SporeRepo
    url: str
    key: Path
    tmp: Path


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[Agents]:
    _, _, pub = make_spore(tmp_path)  # makes the keys too
    async with (
        serve_repo(tmp_path / "repo") as (repo, url),
        open_fabric("reconciler", state_dir=tmp_path / "rf") as rec,
        open_fabric("node-a", seeds=[rec.addr], state_dir=tmp_path / "af") as fab,
    ):
        cfg = AgentConfig(
            node="node-a",
            state_dir=tmp_path / "state",
            capacity=Nutrients(1000, 1024),
            resync_s=0.2,
            drain_delay_s=0.05,
            platforms=HOST,
        )
        agent = Agent(cfg, fab, TrustPolicy.load([pub]))
        task = asyncio.ensure_future(agent.run())
        try:
            await async_wait_for(agent.ready.is_set, what="agent ready")
            yield Agents(rec, agent, repo, url, tmp_path / "keys" / "dev.key", tmp_path)
        finally:
            publish_intent(rec, "node-a", 10**6)
            await async_wait_for(
                lambda: task.done() or not agent.records, within=30, what="all withered"
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            agent.enforcer.cleanup()


async def test_the_agent_publishes_its_platforms(agents: Agents) -> None:
    def node_record() -> NodeRecord | None:
        value = agents.rec.get("node-a", KEY_NODE)
        return NodeRecord.from_json(value) if value is not None else None

    node = await async_wait_for(node_record, what="the node record")
    assert node is not None
    assert node.platforms == HOST


async def _spore_built_for(agents: Agents, name: str, platform: str) -> str:
    """A spore whose signed manifest says its dependencies were built for ``platform``."""
    src = agents.tmp / f"src-{name}"
    src.mkdir()
    shutil.copy(WORKLOADS / "serve.py", src / "serve.py")
    (src / "requirements.txt").write_text("")
    dna = Dna(
        name,
        "1.0.0",
        src.resolve(),
        (sys.executable, "serve.py"),
        health=Health(interval_s=0.1, timeout_s=1.0, grace_s=10.0),
        restart=RestartPolicy(backoff_initial_s=0.05, backoff_max_s=0.2, stop_grace_s=1.0),
        build=Build(kind="python", requirements="requirements.txt", platform=platform),
    )  # packed as is: build_spore runs no build, so the manifest says what we say
    built = build_spore(dna, agents.key, agents.tmp / f"out-{name}")
    assert built.manifest.build is not None
    assert built.manifest.build.platform == platform
    return await asyncio.to_thread(agents.repo.put, built.path)


async def test_a_spore_built_for_another_platform_is_never_started(agents: Agents) -> None:
    digest = await _spore_built_for(agents, "foreign", "cp312-manylinux_aarch64")
    publish_intent(agents.rec, "node-a", 1, one("foreign-1", "foreign", digest, (agents.url,)))

    def failed_record() -> InstanceRecord | None:
        r = instance_seen(agents.rec, "node-a", "foreign-1")
        return r if r is not None and r.phase == "failed" else None

    failed = await async_wait_for(failed_record, within=30, what="foreign-1 failed")
    assert failed is not None
    assert failed.message == (
        "built for cp312-manylinux_aarch64; this host runs cp311-manylinux_x86_64, any"
    )
    assert failed.pid is None
    assert "foreign-1" not in agents.agent.state.instance_ids()  # nothing was started


async def test_a_spore_built_for_this_platform_runs(agents: Agents) -> None:
    digest = await _spore_built_for(agents, "native", "cp311-manylinux_x86_64")
    publish_intent(agents.rec, "node-a", 1, one("native-1", "native", digest, (agents.url,)))
    await async_wait_for(
        lambda: (r := instance_seen(agents.rec, "node-a", "native-1")) and r.phase == "ready",
        within=30,
        what="native-1 ready",
    )
