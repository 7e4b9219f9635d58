"""The edge router (DESIGN §8): ``/{app}/rest`` to the live backends of the app's route.

A pure routing core (:mod:`.routing`, :mod:`.headers`, :mod:`.stats`) and thin drivers
(:mod:`.proxy`, :mod:`.upstream`, :mod:`.server`, :mod:`.process`); see ``docs/edge.md``.
"""

from .config import EdgeConfig, EjectionPolicy, PoolLimits, RetryPolicy, Timeouts
from .routing import RouteTable, should_retry
from .server import RunningEdge, running_edge
from .source import FabricRouteSource, RouteSource, StaticRouteSource

__all__ = [
    "EdgeConfig",
    "EjectionPolicy",
    "FabricRouteSource",
    "PoolLimits",
    "RetryPolicy",
    "RouteSource",
    "RouteTable",
    "RunningEdge",
    "StaticRouteSource",
    "Timeouts",
    "running_edge",
    "should_retry",
]
