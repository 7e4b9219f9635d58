"""Five real member processes on loopback: join, spread, kill -9, restart (docs/fabric.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.fabric.config import FabricConfig
from reconciler.fabric.keyring import Keyring
from tests.helpers import wait_for

from .procs import MemberProc

pytestmark = pytest.mark.slow

NAMES = [f"p{i}" for i in range(5)]


@pytest.fixture
def procs() -> Iterator[dict[str, MemberProc]]:
    running: dict[str, MemberProc] = {}
    yield running
    for p in running.values():
        p.stop()


def everyone_sees(procs: dict[str, MemberProc], names: list[str], state: str = "alive") -> bool:
    return all(all(procs[o].states().get(n) == state for n in names) for o in names if o in procs)


def test_five_members_join_spread_detect_a_kill_and_rejoin_without_regress(
    tmp_path: Path, procs: dict[str, MemberProc]
) -> None:
    key = tmp_path / "gossip.key"
    Keyring.generate().save(key)
    state = {n: tmp_path / f"{n}.state" for n in NAMES}
    seed = MemberProc(
        "p0", tmp_path, key_file=key, state_dir=state["p0"], publish=['node={"gen":1}']
    )
    procs["p0"] = seed
    for n in NAMES[1:]:
        procs[n] = MemberProc(
            n, tmp_path, join=[seed.addr], key_file=key, state_dir=state[n],
            publish=['node={"gen":1}'],
        )  # fmt: skip

    wait_for(lambda: everyone_sees(procs, NAMES), timeout=30, what="full membership")
    wait_for(
        lambda: all(len([k for k in p.view() if k.endswith(" node")]) == 5 for p in procs.values()),
        timeout=30,
        what="every node key everywhere",
    )
    old_version = procs["p0"].view()["p3 node"][1]

    # kill -9 one member: all others mark it dead within the suspicion window (plus
    # scheduling slack on a shared, loaded machine: the wait is a deadline, not a timing).
    procs["p3"].kill()
    del procs["p3"]
    survivors = [n for n in NAMES if n != "p3"]
    _, hi = FabricConfig.local().suspicion_timeouts(5)
    wait_for(
        lambda: all(procs[o].states().get("p3") == "dead" for o in survivors),
        timeout=hi * 4 + 10,
        what="p3 marked dead by all",
    )

    # Restart it (new port, same state dir): it rejoins and its state does not regress.
    procs["p3"] = MemberProc(
        "p3", tmp_path, join=[seed.addr], key_file=key, state_dir=state["p3"],
        publish=['node={"gen":2}'],
    )  # fmt: skip
    wait_for(lambda: everyone_sees(procs, NAMES), timeout=30, what="p3 alive again everywhere")

    def restarted_state_everywhere() -> bool:
        for p in procs.values():
            value, version = p.view().get("p3 node", [None, 0])
            if value != {"gen": 2} or version <= old_version:
                return False
        return True

    wait_for(restarted_state_everywhere, timeout=30, what="p3's new state, newer version")
    assert all(p.status()["stats"]["dropped_auth"] == 0 for p in procs.values())
