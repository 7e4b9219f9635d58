"""Unit tests of the drivers' small pure parts and of the builder and Git source."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import git
import pytest

from reconciler.clock import RealClock
from reconciler.core.model import Actual, RolloutState
from reconciler.core.plan import plan
from reconciler.core.sim import agents_step, make_app, make_desired, make_nodes
from reconciler.errors import PlanError
from reconciler.fabric import MemoryNetwork, open_memory_fabric
from reconciler.garden import read_garden
from reconciler.reconcile.builder import Overrides, SporeBuilder, desired_from
from reconciler.reconcile.diff import diff_lines
from reconciler.reconcile.history import pick_rollback, record
from reconciler.reconcile.lease import decide
from reconciler.reconcile.loop import ReconcileLoop, ReconcileSettings, plain, stabilize
from reconciler.reconcile.source import GitSource, StaticSource, empty_result
from reconciler.records import LeaseRecord
from reconciler.repo import SporeRepo
from reconciler.spore.keys import generate_keypair
from tests.helpers import async_wait_for

from .conftest import WORKLOAD, manifest


@pytest.mark.parametrize(
    ("records", "now", "holder", "max_epoch"),
    [
        ({}, 10.0, None, 0),
        ({"a": LeaseRecord("a", 3, 20.0)}, 10.0, "a", 3),
        ({"a": LeaseRecord("a", 3, 5.0)}, 10.0, None, 3),  # expired
        ({"a": LeaseRecord("b", 3, 20.0)}, 10.0, None, 3),  # not its own record
        ({"a": LeaseRecord("a", 3, 20.0), "b": LeaseRecord("b", 4, 20.0)}, 10.0, "b", 4),
        ({"a": LeaseRecord("a", 4, 20.0), "b": LeaseRecord("b", 4, 20.0)}, 10.0, "b", 4),
    ],
)
def test_lease_decision(
    records: dict[str, LeaseRecord], now: float, holder: str | None, max_epoch: int
) -> None:
    view = decide(records, 0, now)
    assert (view.holder.holder if view.holder else None) == holder
    assert view.max_epoch == max_epoch


def test_history_and_rollback_pick() -> None:
    history: dict[str, list[dict[str, object]]] = {}
    d1 = make_desired(make_app("a", version="1"))
    d2 = make_desired(make_app("a", version="2"))
    s1 = RolloutState(stable=d1.apps["a"].digest, revision="rev1abcdef")
    s2 = RolloutState(stable=d2.apps["a"].digest, revision="rev2abcdef")
    assert record(history, {"a": s1}, d1, 1.0)
    assert not record(history, {"a": s1}, d1, 2.0)
    assert record(history, {"a": s2}, d2, 3.0)
    assert [e["version"] for e in history["a"]] == ["1", "2"]
    assert pick_rollback(history["a"])["version"] == "1"
    assert pick_rollback(history["a"], "2")["version"] == "2"
    assert pick_rollback(history["a"], "rev1ab")["version"] == "1"
    with pytest.raises(PlanError):
        pick_rollback(history["a"], "9")
    with pytest.raises(PlanError):
        pick_rollback(history["a"][:1])


def test_overrides_and_plain_json() -> None:
    ov = Overrides(suspended=frozenset({"a"}), drain=frozenset({"n1"}), pins={"a": "d"})
    assert Overrides.from_json(ov.to_json()) == ov
    assert Overrides.from_json("junk") == Overrides()
    assert plain({"a": (1, {"b": (2,)})}) == {"a": [1, {"b": [2]}]}


def test_stabilize_keeps_unchanged_apps_identical() -> None:
    old = make_desired(make_app("a"), make_app("b"))
    new = make_desired(make_app("a"), make_app("b", 2))
    out = stabilize(new, old)
    assert out.apps["a"] is old.apps["a"]
    assert out.apps["b"] is new.apps["b"]
    same = stabilize(make_desired(make_app("a"), make_app("b")), old)
    assert same.apps is old.apps


def test_builder_builds_once_and_isolates_failures(tmp_path: Path) -> None:
    garden = tmp_path / "garden"
    (garden / "src").mkdir(parents=True)
    shutil.copy(WORKLOAD, garden / "src" / "app.py")
    (garden / "web.yaml").write_text(manifest("web"))
    (garden / "api.yaml").write_text(manifest("api").replace("./src", "./missing"))
    key, _ = generate_keypair(tmp_path / "keys", "dev")
    repo = SporeRepo(tmp_path / "repo")
    builder = SporeBuilder(repo, key)
    result = read_garden(garden)
    first = desired_from(result.garden, builder)
    assert first.apps["web"].digest
    assert "api" in first.invalid
    assert len(repo.list()) == 1
    # Same DNA: found by its key, nothing rebuilt; a count change never rebuilds either.
    (garden / "web.yaml").write_text(manifest("web", instances=3))
    again = desired_from(read_garden(garden).garden, builder)
    assert again.apps["web"].digest == first.apps["web"].digest
    assert len(repo.list()) == 1
    # Without building, an unknown DNA has no digest yet.
    (garden / "web.yaml").write_text(manifest("web", version="2"))
    lookup = desired_from(read_garden(garden).garden, builder, build=False)
    assert lookup.apps["web"].digest == ""


def test_diff_lines_describe_changes() -> None:
    nodes = make_nodes(2)
    d1 = make_desired(make_app("web", 2), make_app("old", 1))
    actual = Actual(nodes=nodes, epoch=1)
    for t in range(4):
        actions, _ = plan(d1, actual, float(t))
        actual = agents_step(actual.apply(actions), float(t))
    assert diff_lines(d1, actual, 5.0) == []
    d2 = make_desired(make_app("web", 3, version="2"), make_app("new", 1))
    lines = diff_lines(d2, actual, 5.0)
    assert "+ new: new, 1 instance(s) of 1" in lines
    assert "- old: pruned (1 instance(s))" in lines
    # A file that does not parse blocks prune, and is shown.
    broken = replace(d2, invalid={"bad.yaml": "bad.yaml:1:1: boom"})
    lines = diff_lines(broken, actual, 5.0)
    assert lines[0] == "! bad.yaml: invalid: bad.yaml:1:1: boom"
    assert not any(line.startswith("- old") for line in lines)
    assert any(line.startswith("~ web: 1 -> 2") and "instances 2 -> 3" in line for line in lines)


async def test_git_source_reads_commits(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    shutil.copy(WORKLOAD, work / "src" / "app.py")
    (work / "web.yaml").write_text(manifest("web"))
    repo = git.Repo.init(work, initial_branch="main")
    repo.index.add(["web.yaml", "src/app.py"])
    first = repo.index.commit("first").hexsha
    bare = tmp_path / "bare.git"
    repo.clone(bare, bare=True)
    source = GitSource(str(bare), "main", interval_s=0.1)
    try:
        signals: asyncio.Queue[None] = asyncio.Queue()
        watch = asyncio.create_task(source.watch(lambda: signals.put_nowait(None)))
        try:
            await asyncio.wait_for(signals.get(), 10)
            result = await asyncio.to_thread(source.read)
            assert result.garden.revision == first
            assert [a.name for a in result.garden.apps] == ["web"]
            (work / "web.yaml").write_text(manifest("web", version="2"))
            repo.index.add(["web.yaml"])
            second = repo.index.commit("second").hexsha
            repo.git.push(str(bare), "main")
            await asyncio.wait_for(signals.get(), 10)
            result = await asyncio.to_thread(source.read)
            assert result.garden.revision == second
            assert result.garden.apps[0].dna.version == "2"
        finally:
            watch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watch
    finally:
        source.close()
        repo.close()


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_a_cancel_right_after_a_wakeup_still_stops_the_reconciler(turns: int) -> None:
    """A cancel that lands in the loop turns between a wake-up and the plan loop resuming
    must end ``run()``. (With ``asyncio.wait_for`` Python 3.11 swallowed it: the plan loop
    ran on, the TaskGroup waited for it forever and so did every test teardown.)"""
    net = MemoryNetwork(RealClock())
    async with open_memory_fabric("r0", net) as fabric:
        settings = ReconcileSettings(resync_s=3600.0)
        rec = ReconcileLoop(fabric, StaticSource(empty_result()), None, settings)
        started = asyncio.Event()
        task = asyncio.create_task(rec.run(started))
        await started.wait()
        await async_wait_for(rec.garden_read.is_set, what="garden read")
        for _ in range(5):  # let every loop park in its wait
            await asyncio.sleep(0)
        rec.wake.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=10)
        assert done, "run() ignored the cancellation"
        assert task.cancelled()
