"""A loopback mesh for the reconciler's integration tests: real agents, fabric, repo, Git."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.core.model import PlanConfig
from reconciler.fabric import Fabric, FabricConfig, open_fabric
from reconciler.reconcile.builder import SporeBuilder
from reconciler.reconcile.http import make_app
from reconciler.reconcile.lease import LeaseConfig
from reconciler.reconcile.loop import ReconcileLoop, ReconcileSettings
from reconciler.reconcile.source import DirSource
from reconciler.records import KEY_NODE, IntentRecord, Nutrients, intents_key
from reconciler.repo import SporeRepo
from reconciler.repo.http import repo_app
from reconciler.spore.keys import generate_keypair
from reconciler.spore.trust import TrustPolicy
from tests.helpers import async_wait_for

WORKLOAD = Path(__file__).parent / "workloads" / "app.py"
FAST_LEASE = LeaseConfig(ttl_s=1.5, renew_s=0.3, settle_s=0.3)


def manifest(
    name: str,
    version: str = "1",
    instances: int = 1,
    extra: str = "",
    rollout: str = "blue-green",
    warmup_s: float = 0.2,
) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: myco/v1
        kind: Spore
        metadata:
          name: {name}
        spec:
          version: "{version}"
          source: ./src
          command: ["{sys.executable}", "app.py"]
          env:
            VERSION: "{version}"
          nutrients: {{cpu_milli: 100, memory_mb: 64}}
          health: {{path: /health, interval_s: 0.1, timeout_s: 1.0, grace_s: 10.0}}
          restart: {{backoff_initial_s: 0.05, backoff_max_s: 0.2, stop_grace_s: 1.0}}
          instances: {instances}
          rollout: {{strategy: {rollout}, warmup_s: {warmup_s}}}
        """
    ) + textwrap.indent(textwrap.dedent(extra), "  ")


@dataclass
class LoopbackMesh:
    root: Path
    garden: Path
    repo: SporeRepo
    repo_url: str
    key: Path
    trust: TrustPolicy
    seed: Fabric  # a plain member every other one joins through
    agents: dict[str, tuple[Agent, asyncio.Task[None], Fabric]] = field(default_factory=dict)
    reconcilers: dict[str, tuple[ReconcileLoop, asyncio.Task[None], Fabric]] = field(
        default_factory=dict
    )
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def write(self, name: str, text: str) -> None:
        path = self.garden / f"{name}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(path)

    async def fabric(self, name: str) -> Fabric:
        return await self.stack.enter_async_context(
            open_fabric(
                name,
                seeds=[self.seed.addr],
                config=FabricConfig.local(),
                state_dir=self.root / "fabric" / name,
            )
        )

    async def add_agent(self, node: str, cpu: int = 2000) -> Agent:
        fab = await self.fabric(node)
        cfg = AgentConfig(
            node=node,
            state_dir=self.root / "agents" / node,
            capacity=Nutrients(cpu, 4096),
            resync_s=0.2,
            drain_delay_s=0.05,
            drain_timeout_s=2.0,
        )
        agent = Agent(cfg, fab, self.trust)
        task = asyncio.create_task(agent.run(), name=f"agent-{node}")
        self.agents[node] = (agent, task, fab)
        await async_wait_for(agent.ready.is_set, within=20, what=f"{node} ready")
        return agent

    async def add_reconciler(self, name: str) -> ReconcileLoop:
        fab = await self.fabric(name)
        # Placements never move, so a first plan made before every node record reached
        # this member would pile the instances on the nodes it happens to see.
        await async_wait_for(
            lambda: set(self.agents) <= {owner for owner, _ in fab.view(KEY_NODE)},
            within=20,
            what=f"{name} sees every node",
        )
        rec = ReconcileLoop(
            fab,
            DirSource(self.garden, resync_s=5.0),
            SporeBuilder(self.repo, self.key),
            ReconcileSettings(
                fetch_urls=(self.repo_url,),
                resync_s=0.5,
                lease=FAST_LEASE,
                plan=PlanConfig(drain_s=0.3),
            ),
        )
        runner = web.AppRunner(make_app(rec, self.repo), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.stack.push_async_callback(runner.cleanup)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        rec.control_url = f"http://127.0.0.1:{port}"
        task = asyncio.create_task(rec.run(), name=f"reconciler-{name}")
        self.reconcilers[name] = (rec, task, fab)
        return rec

    async def stop_reconciler(self, name: str, kill: bool = False) -> None:
        rec, task, fab = self.reconcilers.pop(name)
        if kill:  # no lease release, no leave: as if the process died
            rec.lease.release = lambda: None  # type: ignore[method-assign]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def active(self) -> ReconcileLoop | None:
        act = [r for r, _, _ in self.reconcilers.values() if r.lease.active]
        return act[0] if act else None

    def ready(self, app: str, version: str | None = None) -> list[str]:
        out = []
        for agent, _, _ in self.agents.values():
            for rec in agent.records.values():
                if rec.app == app and rec.phase == "ready":
                    if version is None or rec.version == version:
                        out.append(rec.instance_id)
        return sorted(out)

    def running(self, app: str | None = None) -> list[str]:
        return sorted(
            rec.instance_id
            for agent, _, _ in self.agents.values()
            for rec in agent.records.values()
            if app is None or rec.app == app
        )

    async def close(self) -> None:
        try:
            for name in list(self.reconcilers):
                await self.stop_reconciler(name)
            # Wither everything (an intent from a far newer epoch): no process outlives us.
            for node in self.agents:
                record = IntentRecord(node, 10**6).to_json()
                self.seed.publish(intents_key(node), record)  # type: ignore[arg-type]
            for node, (agent, task, _) in self.agents.items():
                await async_wait_for(
                    lambda a=agent, t=task: t.done() or not a.records,  # type: ignore[misc]
                    within=30,
                    what=f"{node} withered",
                )
        finally:
            for agent, task, _ in self.agents.values():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                # Last resort if withering failed: no instance may outlive the test.
                for rec in agent.records.values():
                    if rec.pid:
                        with contextlib.suppress(OSError):
                            os.killpg(rec.pid, signal.SIGKILL)
                agent.enforcer.cleanup()
            await self.stack.aclose()


@pytest.fixture
async def loopback(tmp_path: Path) -> AsyncIterator[LoopbackMesh]:
    garden = tmp_path / "garden"
    (garden / "src").mkdir(parents=True)
    shutil.copy(WORKLOAD, garden / "src" / "app.py")
    key, pub = generate_keypair(tmp_path / "keys", "dev")
    repo = SporeRepo(tmp_path / "repo")
    runner = web.AppRunner(repo_app(repo), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with open_fabric(
            "seed", config=FabricConfig.local(), state_dir=tmp_path / "fabric" / "seed"
        ) as seed:
            mesh = LoopbackMesh(
                root=tmp_path,
                garden=garden,
                repo=repo,
                repo_url=f"http://127.0.0.1:{port}",
                key=key,
                trust=TrustPolicy.load([pub]),
                seed=seed,
            )
            try:
                yield mesh
            finally:
                await mesh.close()
    finally:
        await runner.cleanup()


@pytest.fixture(autouse=True)
def _keep_myco_logging() -> Iterator[None]:
    """The CLI configures the ``myco`` logger for its process; tests calling main() must
    not leave it writing to a captured stream that pytest closes afterwards."""
    root = logging.getLogger("myco")
    saved = (root.handlers[:], root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved
