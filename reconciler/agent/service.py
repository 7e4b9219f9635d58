"""``myco agent`` as a service: the composition root of the node agent.

The CLI turns flags and ``--config`` into a frozen :class:`~reconciler.agent.agent.AgentConfig`
(with its fabric :class:`~reconciler.fabric.joining.JoinSettings`) and a trust policy, and
calls :func:`run`, which runs :func:`main` through
:func:`reconciler.aio.run_until_signalled`:

* the fabric member is opened with ``leave_on_exit=False`` (a restarting agent is not
  leaving: its instances stay and the next agent on the same state adopts them);
* :meth:`Agent.run <reconciler.agent.agent.Agent.run>` is a task of the service
  (:meth:`Service.spawn`): if it ends or fails (its fabric watch included), the process
  stops with :class:`~reconciler.errors.ServiceFailed` instead of running on half alive;
* once the API serves, one start-up line says where: node, API, dashboard, gossip address,
  enforcement mechanism and trusted keys.

SIGINT/SIGTERM stop the agent, not its instances, unless ``wither_on_exit`` (``myco up``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.aio import Service, run_until_signalled
from reconciler.fabric.api import FabricAPI
from reconciler.logs import announce
from reconciler.spore.trust import TrustPolicy

#: Opens the fabric member named by its argument (tests pass an in-memory fabric).
FabricOpener = Callable[[str], AbstractAsyncContextManager[FabricAPI]]


def run(config: AgentConfig, trust: TrustPolicy) -> int:
    """Run the agent until SIGINT/SIGTERM (exit 0) or a failure (raised)."""
    return run_until_signalled(partial(main, config=config, trust=trust), name="agent")


async def main(
    service: Service,
    *,
    config: AgentConfig,
    trust: TrustPolicy,
    open_fabric: FabricOpener | None = None,
) -> None:
    """The agent service: runs until the service stops or its agent task fails."""
    opener: FabricOpener = open_fabric or partial(
        config.fabric.open, state_dir=config.state_dir / "fabric", leave_on_exit=False
    )
    async with opener(config.node) as fabric:
        agent = Agent(config, fabric, trust)
        task = service.spawn("the agent", agent.run())
        try:
            await agent.ready.wait()  # (if the agent fails first, the group cancels this)
            announce("%s", startup_line(agent, fabric))
            await service.stopping.wait()
        finally:
            # The agent stops (and withers, if asked) before its fabric goes away.
            if not task.done():
                task.cancel()
                await asyncio.wait([task])


def startup_line(agent: Agent, fabric: FabricAPI) -> str:
    keys = len(agent.trust.entries)
    gossip = agent.config.fabric.describe(getattr(fabric, "addr", "") or "?")
    return (
        f"agent {agent.config.node}: API {agent.api_url}, dashboard {agent.api_url}/ui/, "
        f"gossip {gossip}, instances on {agent.config.advertise_host}, "
        f"enforcement {agent.enforcer.mechanism}, "
        f"{keys} trusted key{'' if keys == 1 else 's'}"
    )
