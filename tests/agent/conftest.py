"""Fixtures for the agent tests: a supervisor harness over real processes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from reconciler.agent.nutrients import Enforcer
from reconciler.agent.runner import LocalRunner
from reconciler.agent.state import InstanceConfig, PersistedInstance, StateDir
from reconciler.agent.supervisor import Supervisor, SupervisorSettings
from reconciler.httpclient import one_attempt_session
from reconciler.model import Health, RestartPolicy
from reconciler.records import InstanceRecord, Nutrients
from tests.helpers import free_port

WORKLOADS = Path(__file__).parent / "workloads"
_ids = itertools.count()


class Harness:
    """Builds supervisors over real processes and keeps every report they make."""

    def __init__(self, root: Path, session: aiohttp.ClientSession, mechanism: str) -> None:
        self.state = StateDir(root / "state")
        self.node = f"t{root.name[-12:]}".replace("_", "-")
        self.enforcer = Enforcer(self.node, prefer=mechanism)
        self.runner = LocalRunner()
        self.session = session
        self.reports: list[InstanceRecord] = []
        self.routed: set[str] = set()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.sups: dict[str, Supervisor] = {}
        self.settings = SupervisorSettings(node=self.node, drain_delay_s=0.05, drain_timeout_s=5.0)

    def persisted(
        self,
        *args: str,
        health: Health | None = None,
        restart: RestartPolicy | None = None,
        nutrients: Nutrients | None = None,
    ) -> PersistedInstance:
        iid = f"inst-{next(_ids)}"
        cfg = InstanceConfig(
            instance_id=iid,
            app="demo",
            digest="sha256:test",
            node=self.node,
            argv=(sys.executable, "serve.py", *args),
            cwd=str(WORKLOADS),
            nutrients=nutrients or Nutrients(100, 64),
            health=health or Health(interval_s=0.1, timeout_s=1.0, grace_s=10.0),
            restart=restart
            or RestartPolicy(backoff_initial_s=0.05, backoff_max_s=0.2, stop_grace_s=0.5),
        )
        limits = self.enforcer.prepare(iid, cfg.nutrients)
        return PersistedInstance(cfg, free_port(), limits)

    def supervisor(self, p: PersistedInstance) -> Supervisor:
        sup = Supervisor(
            p,
            runner=self.runner,
            enforcer=self.enforcer,
            state=self.state,
            session=self.session,
            settings=self.settings,
            report=self.reports.append,
            routed=lambda ep: ep in self.routed,
        )
        self.sups[p.config.instance_id] = sup
        self.tasks[p.config.instance_id] = asyncio.ensure_future(sup.lifecycle())
        return sup

    def phases(self, iid: str) -> list[str]:
        return [r.phase for r in self.reports if r.instance_id == iid]

    def last(self, iid: str) -> InstanceRecord | None:
        for r in reversed(self.reports):
            if r.instance_id == iid:
                return r
        return None

    def phase_is(self, iid: str, phase: str) -> Callable[[], bool]:
        def check() -> bool:
            r = self.last(iid)
            return r is not None and r.phase == phase

        return check

    async def detach(self, iid: str) -> None:
        t = self.tasks.pop(iid)
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t

    async def wither(self, iid: str) -> None:
        self.sups[iid].request_wither()
        await asyncio.wait_for(self.tasks.pop(iid), 30)

    async def close(self) -> None:
        for iid in list(self.tasks):
            await self.wither(iid)
        self.enforcer.cleanup()


@pytest.fixture(params=["auto"])
async def harness(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async with one_attempt_session() as session:
        h = Harness(tmp_path, session, request.param)
        try:
            yield h
        finally:
            await h.close()
