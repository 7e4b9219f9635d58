"""``spec.autoscale`` maps to :class:`~reconciler.model.Autoscale` in the deployment (never
the DNA): every field the schema accepts is carried, with its defaults and the SLO's
budget as the default target."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.garden import read_garden
from reconciler.garden.build import autoscale_of
from reconciler.model import Autoscale, ScaleStep

CORPUS = Path(__file__).parent / "corpus"


def test_the_corpus_autoscale_apps_map_to_the_model() -> None:
    case = CORPUS / "valid" / "autoscale"
    result = read_garden(case, repo_root=case)
    apps = {a.name: a for a in result.garden.apps}
    assert apps["web"].deployment.autoscale == Autoscale(
        max=10,
        min=1,
        target_kind="p99_ms",
        target=120.0,  # slo.p99_budget_ms
        up=ScaleStep(0.0, 4),
        down=ScaleStep(120.0, 1),
        to_zero_after_s=300.0,
    )
    assert apps["web"].deployment.instances == 2  # the starting count
    assert apps["web"].deployment.autoscale.where == f"{case / 'app.yaml'}:13:10"
    assert apps["api"].deployment.autoscale == Autoscale(
        max=4, target_kind="rps_per_instance", target=100.0
    )
    assert apps["api"].deployment.autoscale.down == ScaleStep(60.0, 0)


@pytest.mark.parametrize(
    ("block", "slo", "expected"),
    [
        ({"max": 3}, {"p99_budget_ms": 50}, Autoscale(max=3, target=50.0)),
        (
            {"max": 3, "target": {"inflight_per_instance": 8}},
            {},
            Autoscale(max=3, target_kind="inflight_per_instance", target=8.0),
        ),
        (
            {"max": 3, "target": {"p99_ms": 20}},
            {"p99_budget_ms": 50},
            Autoscale(max=3, target=20.0),  # an explicit target wins over the SLO
        ),
        (
            {"max": 9, "min": 2, "up": {"max_step": 2}, "down": {"stabilize_s": 5}},
            {"p99_budget_ms": 50},
            Autoscale(max=9, min=2, target=50.0, up=ScaleStep(0.0, 2), down=ScaleStep(5.0, 0)),
        ),
    ],
)
def test_autoscale_of(
    block: dict[str, object], slo: dict[str, object], expected: Autoscale
) -> None:
    assert autoscale_of({"autoscale": block, "slo": slo}) == expected


def test_no_block_is_none_and_a_count_change_is_not_a_dna_change() -> None:
    assert autoscale_of({}) is None
    case = CORPUS / "valid" / "autoscale"
    app = read_garden(case, repo_root=case).garden.apps[0]
    scaled = replace(app, deployment=replace(app.deployment, instances=7))
    assert scaled.dna is app.dna
