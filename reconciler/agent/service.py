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
  enforcement mechanism and trusted keys;
* with an identity (:class:`~reconciler.identity.enrol.IdentitySpec`: ``--identity``, or
  enrolment with ``--join-token``), the agent's certificate must name its node; every fabric
  record it writes is signed and every record it reads checked
  (:class:`~reconciler.identity.guard.RecordGuard`), and a task renews the certificate at a
  reconciler named in the fabric (:func:`~reconciler.identity.enrol.renewal_loop`), without
  a restart.

SIGINT/SIGTERM stop the agent, not its instances, unless ``wither_on_exit`` (``myco up``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.aio import Service, run_until_signalled
from reconciler.clock import RealClock
from reconciler.fabric.api import FabricAPI
from reconciler.identity.enrol import IdentitySpec, obtain, renew_through_fabric
from reconciler.identity.live import LiveIdentity
from reconciler.logs import announce
from reconciler.spore.trust import TrustPolicy

#: Opens the fabric member named by its argument (tests pass an in-memory fabric).
FabricOpener = Callable[[str], AbstractAsyncContextManager[FabricAPI]]


def run(config: AgentConfig, trust: TrustPolicy, identity: IdentitySpec | None = None) -> int:
    """Run the agent until SIGINT/SIGTERM (exit 0) or a failure (raised)."""
    return run_until_signalled(
        partial(main, config=config, trust=trust, identity=identity), name="agent"
    )


async def main(
    service: Service,
    *,
    config: AgentConfig,
    trust: TrustPolicy,
    identity: IdentitySpec | None = None,
    open_fabric: FabricOpener | None = None,
) -> None:
    """The agent service: runs until the service stops or its agent task fails."""
    live = None
    if identity is not None:
        live = await obtain(identity, "agent", config.fabric.cluster, name=config.node)
    opener: FabricOpener = open_fabric or partial(
        config.fabric.open,
        state_dir=config.state_dir / "fabric",
        leave_on_exit=False,
        guard=live.guard if live is not None else None,
    )
    async with opener(config.node) as fabric:
        # its API serves mutual TLS with the identity, unless --loopback-http (myco up)
        http_live = None if identity is None or identity.loopback_http else live
        agent = Agent(config, fabric, trust, live=http_live)
        if live is not None:
            renewal = renew_through_fabric(live, fabric, clock=RealClock())
            service.spawn("certificate renewal", renewal)
        task = service.spawn("the agent", agent.run())
        try:
            await agent.ready.wait()  # (if the agent fails first, the group cancels this)
            announce("%s", startup_line(agent, fabric) + identity_note(live, identity))
            await service.stopping.wait()
        finally:
            # The agent stops (and withers, if asked) before its fabric goes away.
            if not task.done():
                task.cancel()
                await asyncio.wait([task])


def identity_note(live: LiveIdentity | None, spec: IdentitySpec | None) -> str:
    """The start-up line's last part: the certificate this member runs with."""
    if live is None:
        return ", no identity (unsigned records, open HTTP)"
    http = "plain HTTP on loopback" if spec is not None and spec.loopback_http else "mutual TLS"
    return f", identity {live.principal.role} {live.name} ({http})"


def startup_line(agent: Agent, fabric: FabricAPI) -> str:
    keys = len(agent.trust.entries)
    gossip = agent.config.fabric.describe(getattr(fabric, "addr", "") or "?")
    return (
        f"agent {agent.config.node}: API {agent.api_url}, dashboard {agent.api_url}/ui/, "
        f"gossip {gossip}, instances on {agent.config.advertise_host}, "
        f"enforcement {agent.enforcer.mechanism}, "
        f"{keys} trusted key{'' if keys == 1 else 's'}"
    )
