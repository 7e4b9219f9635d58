"""The pure decisions: convergence actions, intent choice by epoch, credits."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reconciler.agent.converge import Start, Stop, converge, free_credits, pick_intent
from reconciler.records import IntentInstance, IntentRecord, Nutrients


def ii(iid: str, digest: str = "d1") -> IntentInstance:
    return IntentInstance(iid, "app", digest, nutrients=Nutrients(100, 64))


@pytest.mark.parametrize(
    ("desired", "local", "withering", "expected"),
    [
        ([], {}, [], []),
        ([ii("a")], {}, [], [Start(ii("a"))]),
        ([ii("a")], {"a": "d1"}, [], []),
        ([], {"a": "d1"}, [], [Stop("a")]),
        ([ii("a", "d2")], {"a": "d1"}, [], [Stop("a", "digest changed to d2")]),
        ([ii("a")], {"a": "d1"}, ["a"], []),  # being withered: left alone...
        ([ii("a")], {}, ["a"], []),  # ...and not started again until it is gone
        ([], {"a": "d1"}, ["a"], []),
        (
            [ii("b"), ii("c")],
            {"a": "d1", "b": "d1"},
            [],
            [Stop("a"), Start(ii("c"))],
        ),
    ],
)
def test_converge_table(
    desired: list[IntentInstance],
    local: dict[str, str],
    withering: list[str],
    expected: list[object],
) -> None:
    assert converge(desired, local, withering) == expected


def test_converge_is_idempotent_once_applied() -> None:
    desired = [ii("a"), ii("b", "d2")]
    local = {"b": "d1", "x": "d1"}
    actions = converge(desired, local)
    # apply: stops remove, starts add
    after = dict(local)
    for a in actions:
        if isinstance(a, Stop):
            del after[a.instance_id]
        else:
            after[a.intent.instance_id] = a.intent.digest
    after.update({"b": "d2"})  # the digest change is started by the next pass
    assert converge(desired, after) == []


@pytest.mark.parametrize(
    ("epochs", "min_epoch", "expected"),
    [
        ([], 0, None),
        ([1], 0, 1),
        ([1, 3, 2], 0, 3),
        ([1, 2], 3, None),  # older than one already seen: ignored
        ([3], 3, 3),
    ],
)
def test_pick_intent_by_epoch(epochs: list[int], min_epoch: int, expected: int | None) -> None:
    recs = [IntentRecord("n", e, revision=str(e)) for e in epochs]
    got = pick_intent(recs, min_epoch)
    assert (got.epoch if got else None) == expected


def test_free_credits_account_for_what_is_placed() -> None:
    cap = Nutrients(2000, 1024)
    assert free_credits(cap, []) == cap
    assert free_credits(cap, [Nutrients(100, 64)] * 3) == Nutrients(1700, 832)
    assert free_credits(cap, [Nutrients(3000, 0)]).cpu_milli == -1000


def test_importing_the_pure_decision_pulls_in_no_process_or_http_machinery() -> None:
    code = (
        "import sys, reconciler.agent.converge\n"
        "heavy = {'aiohttp', 'psutil', 'reconciler.agent.agent', 'reconciler.agent.supervisor'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pick_intent_between_one_epoch_follows_the_lease_holder_order() -> None:
    a = IntentRecord(node="n1", epoch=1, revision="from-a")
    b = IntentRecord(node="n1", epoch=1, revision="from-b")
    for order in ([("rec-a#1", a), ("rec-b#2", b)], [("rec-b#2", b), ("rec-a#1", a)]):
        got = pick_intent(order, 0)
        assert got is not None
        assert got.revision == "from-b"
