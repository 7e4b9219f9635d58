"""The nutrient ledger: free credits per node during one plan, and where a new instance goes.

A node's credits are its capacity (from the host, or overridden per node) minus the
nutrients of every instance the intents give it. Placement spreads a set of instances
within itself first (fewest of the same revision), then an app's instances as a whole
(fewest of this app), then prefers the node with the most free credits; ties go to the node
id, so a plan is deterministic. Spreading the new set of a rollout within itself matters:
counting the old set alongside it could put the whole new set on the one node the old set
left free, and then one host's death takes every backend.

Only nodes that run a spore's platform are candidates for it: a spore built for
``cp311-manylinux_x86_64`` goes to a node whose record lists that tag, one built for
``"any"`` (or with no build) to every eligible node.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

from reconciler.records import Nutrients

ANY = "any"  # the platform of pure code: runs on every node


def runs_on(platform: str, tags: Iterable[str]) -> bool:
    """Whether a node running ``tags`` may run a spore built for ``platform``."""
    return platform in ("", ANY) or platform in tags


class Ledger:
    def __init__(
        self,
        free: Mapping[str, Nutrients],
        eligible: Iterable[str],
        platforms: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """``platforms``: the tags each node runs (its record's ``platforms``)."""
        self.free: dict[str, Nutrients] = dict(free)
        self.eligible: frozenset[str] = frozenset(eligible)
        self.platforms: dict[str, frozenset[str]] = {
            n: frozenset(tags) for n, tags in (platforms or {}).items()
        }
        self._for: dict[str, frozenset[str]] = {}

    def eligible_for(self, platform: str) -> frozenset[str]:
        """The eligible nodes that run ``platform``."""
        if platform in ("", ANY):
            return self.eligible
        nodes = self._for.get(platform)
        if nodes is None:
            nodes = frozenset(
                n for n in self.eligible if runs_on(platform, self.platforms.get(n, ()))
            )
            self._for[platform] = nodes
        return nodes

    def take(self, node: str, need: Nutrients) -> None:
        self.free[node] = self.free.get(node, Nutrients()) - need

    def give(self, node: str, need: Nutrients) -> None:
        self.free[node] = self.free.get(node, Nutrients()) + need

    def place(
        self,
        need: Nutrients,
        count: int,
        spread: Mapping[str, int],
        same: Mapping[str, int] | None = None,
        platform: str = "",
    ) -> list[str]:
        """Nodes for up to ``count`` new instances (fewer if nothing fits); takes credits.

        ``same`` counts the instances of the set being placed (the same revision) per node,
        ``spread`` all of the app's instances per node; both already placed. Only nodes
        that run ``platform`` are considered.
        """
        if count <= 0:
            return []
        same = same or {}
        heap: list[tuple[int, int, int, int, str]] = []
        for node in self.eligible_for(platform):
            free = self.free.get(node, Nutrients())
            if need.fits_in(free):
                heap.append(
                    (same.get(node, 0), spread.get(node, 0), -free.cpu_milli, -free.memory_mb, node)
                )
        heapq.heapify(heap)
        chosen: list[str] = []
        while heap and len(chosen) < count:
            k, n, _, _, node = heapq.heappop(heap)
            self.take(node, need)
            chosen.append(node)
            free = self.free[node]
            if need.fits_in(free):
                heapq.heappush(heap, (k + 1, n + 1, -free.cpu_milli, -free.memory_mb, node))
        return chosen

    def over(self, capacity: Mapping[str, Nutrients]) -> dict[str, Nutrients]:
        """Nodes whose credits went negative (never, for what the plan itself placed)."""
        return {
            node: free
            for node, free in self.free.items()
            if node in capacity and (free.cpu_milli < 0 or free.memory_mb < 0)
        }
