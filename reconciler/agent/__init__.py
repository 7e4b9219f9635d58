"""The node agent: converges the intents addressed to its node into processes.

Public API (see docs/agent.md)::

    Agent(config, ...)                           # the daemon; reports instances/* records
    converge(desired, local, withering) -> [Start | Stop]   # the pure decision (no I/O)
    Supervisor(...).lifecycle()                  # one instance: start, health, restart
    FakeRunner(VirtualClock(), [Script(...)])    # scripted processes on virtual time

Only what is used is imported: ``reconciler.agent.converge`` (pure) does not pull in
aiohttp, psutil or the process machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.lazy import lazy_exports

if TYPE_CHECKING:
    from reconciler.agent.agent import Agent, AgentConfig
    from reconciler.agent.converge import Start, Stop, converge, free_credits, pick_intent
    from reconciler.agent.fake import FakeRunner, Script
    from reconciler.agent.fetch import FetchSettings, SporeCache
    from reconciler.agent.nutrients import Enforcer, Limits
    from reconciler.agent.policy import RestartTracker, backoff_delay
    from reconciler.agent.runner import LaunchSpec, LocalRunner, ProcessRunner, ProcInfo
    from reconciler.agent.state import InstanceConfig, PersistedInstance, StateDir
    from reconciler.agent.supervisor import Supervisor, SupervisorSettings

_LAZY = {
    "Agent": "reconciler.agent.agent",
    "AgentConfig": "reconciler.agent.agent",
    "Start": "reconciler.agent.converge",
    "Stop": "reconciler.agent.converge",
    "converge": "reconciler.agent.converge",
    "free_credits": "reconciler.agent.converge",
    "pick_intent": "reconciler.agent.converge",
    "FakeRunner": "reconciler.agent.fake",
    "Script": "reconciler.agent.fake",
    "FetchSettings": "reconciler.agent.fetch",
    "SporeCache": "reconciler.agent.fetch",
    "Enforcer": "reconciler.agent.nutrients",
    "Limits": "reconciler.agent.nutrients",
    "RestartTracker": "reconciler.agent.policy",
    "backoff_delay": "reconciler.agent.policy",
    "LaunchSpec": "reconciler.agent.runner",
    "LocalRunner": "reconciler.agent.runner",
    "ProcInfo": "reconciler.agent.runner",
    "ProcessRunner": "reconciler.agent.runner",
    "InstanceConfig": "reconciler.agent.state",
    "PersistedInstance": "reconciler.agent.state",
    "StateDir": "reconciler.agent.state",
    "Supervisor": "reconciler.agent.supervisor",
    "SupervisorSettings": "reconciler.agent.supervisor",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "Agent",
    "AgentConfig",
    "Enforcer",
    "FakeRunner",
    "FetchSettings",
    "InstanceConfig",
    "LaunchSpec",
    "Limits",
    "LocalRunner",
    "PersistedInstance",
    "ProcInfo",
    "ProcessRunner",
    "RestartTracker",
    "Script",
    "SporeCache",
    "Start",
    "StateDir",
    "Stop",
    "Supervisor",
    "SupervisorSettings",
    "backoff_delay",
    "converge",
    "free_credits",
    "pick_intent",
]
