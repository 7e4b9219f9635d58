"""Spores from peers: which live agents announce a digest, and what this agent announces.

Every agent lists the digests of the verified spores it holds in its ``node`` record
(:attr:`~reconciler.records.NodeRecord.spores`, bounded by :data:`MAX_ANNOUNCED`) and
serves them at ``GET {api_url}/spores/{digest}``. A fetch that the repo URLs of the intent
cannot satisfy (the reconciler's host died) falls over to the live peers found here.
In a mesh with identities a peer's API is mutual TLS: only members (a certificate of the
mesh, valid and not revoked) may fetch spores from it, and the fetching agent presents its
own certificate (:class:`~reconciler.agent.fetch.SporeCache`'s session).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.errors import FabricError
from reconciler.fabric.api import FabricAPI
from reconciler.records import KEY_NODE, NodeRecord

log = logging.getLogger("myco.agent")

#: At most this many digests in a node record: every node's record travels the fabric, and
#: one that outgrows a UDP packet (``FabricConfig.packet_budget``) is no longer pushed
#: eagerly but waits for anti-entropy over TCP; 8 digests take about 540 bytes of JSON.
MAX_ANNOUNCED = 8


@dataclass(frozen=True)
class Peer:
    node: str
    url: str  # the peer's API base URL


def peers_holding(
    fabric: FabricAPI, digest: str, own_node: str, rng: random.Random | None = None
) -> list[Peer]:
    """Live peers whose node record announces ``digest``: alive ones first, then suspect.

    The fabric's view already leaves out members that are dead or have left. Within each
    group the order is random, so many agents fetching one digest spread over its holders.
    """
    rng = rng or random.Random()
    states = {m.name: m.state for m in fabric.members()}
    found: list[tuple[bool, float, Peer]] = []
    for (owner, key), value in fabric.view(KEY_NODE).items():
        if key != KEY_NODE or owner == own_node or value is None:
            continue
        try:
            rec = NodeRecord.from_json(value)
        except FabricError as exc:
            log.debug("ignoring the malformed node record of %s: %s", owner, exc)
            continue
        if rec.api_url and digest in rec.spores:
            found.append((states.get(owner) != "alive", rng.random(), Peer(owner, rec.api_url)))
    return [p for _, _, p in sorted(found, key=lambda t: (t[0], t[1]))]


def announced(in_use: Iterable[str], verified: Iterable[str]) -> tuple[str, ...]:
    """What a node record announces: the digests of its instances first (sorted), then
    other verified spores in the order given (most recent first), at most
    :data:`MAX_ANNOUNCED`; only verified ones."""
    ok = list(dict.fromkeys(verified))
    ok_set = set(ok)
    out = [d for d in sorted(set(in_use)) if d in ok_set]
    chosen = set(out)
    out += [d for d in ok if d not in chosen]
    return tuple(out[:MAX_ANNOUNCED])
