"""``myco status`` shows an autoscaled app: current/desired/min/max, target, last decision."""

from __future__ import annotations

from reconciler.observe.render import render_json, render_text
from reconciler.observe.snapshot import Entry, FabricSnapshot
from reconciler.observe.status import build_status
from reconciler.records import AppStatus, GardenRevisionRecord


def snapshot(apps: dict[str, AppStatus]) -> FabricSnapshot:
    rec = GardenRevisionRecord(revision="r1", apps={k: v.to_json() for k, v in apps.items()})
    return FabricSnapshot(entries=(Entry("r0", "garden", rec.to_json()),))


BLOCK = {
    "current": 3,
    "desired": 5,
    "min": 1,
    "max": 8,
    "target": {"p99_ms": 100.0},
    "panic": True,
    "pending": "",
    "blocked": "",
    "warning": "garden/web.yaml:12:10: autoscale.max 8 is beyond the mesh's credits: 6 fit",
    "last": {
        "at": 10.0,
        "previous": 1,
        "desired": 5,
        "direction": "up",
        "reason": "p99 480 ms over the 100 ms budget at 400 rps",
    },
}


def test_status_text_has_an_autoscale_table() -> None:
    st = build_status(
        snapshot(
            {
                "web": AppStatus(health="Progressing", desired=5, ready=3, autoscale=BLOCK),
                "plain": AppStatus(health="Healthy", desired=2, ready=2),
            }
        )
    )
    text = render_text(st)
    section = text.split("AUTOSCALE\n", 1)[1].split("\n\n", 1)[0]
    header, row, *rest = section.splitlines()
    assert header.split()[:6] == ["NAME", "CURRENT", "DESIRED", "MIN", "MAX", "TARGET"]
    assert row.split()[:7] == ["web", "3", "5", "1", "8", "p99", "100ms"]
    assert "up 1->5: p99 480 ms over the 100 ms budget at 400 rps" in row
    assert "garden/web.yaml:12:10: autoscale.max 8" in row
    assert "panic" in row
    assert rest == []  # the app without autoscale is not listed
    assert '"autoscale"' in render_json(st)


def test_no_autoscale_section_without_autoscaled_apps() -> None:
    st = build_status(snapshot({"plain": AppStatus(health="Healthy", desired=2, ready=2)}))
    assert "AUTOSCALE" not in render_text(st)
