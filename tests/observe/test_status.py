"""The pure status model: snapshot -> MeshStatus -> tables and JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reconciler.errors import FabricError
from reconciler.fabric.api import Member
from reconciler.observe.render import render_json, render_text, table
from reconciler.observe.snapshot import Entry, FabricSnapshot, snapshot_from_json
from reconciler.observe.status import NOT_IN_GARDEN, build_status
from reconciler.records import AppStatus, NodeRecord

from .conftest import COMMIT, garden, inst, sample_snapshot


def test_nodes_join_membership_with_node_records() -> None:
    st = build_status(sample_snapshot())
    by = {n.name: n for n in st.nodes}
    assert set(by) == {"edge", "n1", "n2", "rec"}
    assert (by["n2"].state, by["n2"].free_cpu_milli, by["n2"].cpu_milli) == ("suspect", 500, 2000)
    assert by["n1"].api_url == "http://127.0.0.1:1"
    assert by["n1"].instances == 2
    assert by["edge"].roles == ()
    assert by["edge"].cpu_milli == 0


def test_apps_carry_the_reconcilers_status_and_route_and_edge_figures() -> None:
    st = build_status(sample_snapshot())
    assert (st.revision, st.reconciler) == (COMMIT, "rec")
    billing, shop = st.apps
    assert (billing.name, billing.sync, billing.health) == ("billing", "Synced", "Healthy")
    assert (billing.prefix, billing.backends, billing.rps, billing.p99_ms) == (
        "/billing",
        2,
        2.5,
        9.5,
    )
    assert billing.error_rate == 0.1
    assert billing.phases == {"ready": 2}
    assert billing.instances == 2
    assert (shop.sync, shop.health, shop.rollout, shop.ready, shop.desired) == (
        "OutOfSync", "Progressing", "starting", 1, 2,
    )  # fmt: skip
    assert shop.phases == {"starting": 1, "ready": 1}
    assert shop.reason == "starting the new set"
    assert billing.revision == COMMIT


def test_instances_sorted_with_node_phase_restarts_endpoint() -> None:
    st = build_status(sample_snapshot())
    rows = [(i.instance_id, i.node, i.phase, i.restarts, i.endpoint) for i in st.instances]
    assert rows == [
        ("billing-a", "n1", "ready", 0, "127.0.0.1:9000"),
        ("billing-b", "n2", "ready", 0, "127.0.0.1:9000"),
        ("shop-a", "n1", "starting", 2, ""),
        ("shop-b", "n2", "ready", 0, "127.0.0.1:9000"),
    ]


def test_the_garden_record_of_the_highest_lease_epoch_wins() -> None:
    old = garden({"a": AppStatus(sync="OutOfSync")}, epoch=1)
    new = garden({"a": AppStatus(sync="Synced")}, epoch=2)
    snap = FabricSnapshot((), (Entry("r1", "garden", new), Entry("r2", "garden", old)))
    st = build_status(snap)
    assert (st.reconciler, st.apps[0].sync) == ("r1", "Synced")


def test_apps_gone_from_the_garden_still_show_while_instances_remain() -> None:
    snap = FabricSnapshot((), (Entry("n1", "inst/x", inst("x", "old", "n1")),))
    (app,) = build_status(snap).apps
    assert (app.name, app.sync, app.reason, app.ready) == ("old", "Unknown", NOT_IN_GARDEN, 1)


@pytest.mark.parametrize(
    "entry",
    [
        Entry("n1", "node", {"capacity": 3}),  # no node_id
        Entry("n1", "inst/x", {"app": "a"}),  # missing fields
        Entry("n1", "inst/y", "not an object"),
        Entry("r", "routes/a", {"app": "a"}),
        Entry("r", "garden", {"revision": "r", "apps": {"a": "bad"}}),
        Entry("e", "edge/stats", {"apps": {"a": "bad"}}),
    ],
)
def test_unreadable_records_are_skipped_not_fatal(entry: Entry) -> None:
    good = Entry("n2", "inst/ok", inst("ok", "web", "n2"))
    st = build_status(FabricSnapshot((), (entry, good)))
    assert "ok" in [i.instance_id for i in st.instances]


def test_empty_view() -> None:
    st = build_status(FabricSnapshot())
    assert st.apps == ()
    assert st.nodes == ()
    assert st.revision == ""
    assert "INSTANCES" in render_text(st)


def test_render_text_tables() -> None:
    text = render_text(build_status(sample_snapshot()))
    lines = text.splitlines()
    assert lines[0].startswith(f"GARDEN  revision {COMMIT[:12]}")
    header = next(line for line in lines if line.startswith("NAME") and "SYNC" in line)
    billing = lines[lines.index(header) + 1]
    assert billing.split()[:6] == ["billing", "Synced", "Healthy", "2/2", "-", COMMIT[:12]]
    shop = lines[lines.index(header) + 2]
    assert "starting 1/2" in shop
    assert "starting the new set" in shop
    assert any(line.split()[:3] == ["n2", "suspect", "agent"] for line in lines)
    assert "500m/2000m" in text
    assert "3.0Gi/4.0Gi" in text
    assert all(line == line.rstrip() for line in lines)


def test_render_json_is_the_documented_shape() -> None:
    doc = json.loads(render_json(build_status(sample_snapshot())))
    assert doc["summary"] == {
        "apps": 2, "healthy": 1, "synced": 1, "instances": 4,
        "nodes": {"alive": 3, "suspect": 1, "dead": 0, "left": 0}, "insecure_nodes": [],
    }  # fmt: skip
    assert doc["apps"][0]["instances"] == 2
    assert {"name", "sync", "health", "reason", "revision", "rollout", "ready", "desired"} <= set(
        doc["apps"][0]
    )
    assert {"instance_id", "node", "phase", "restarts", "endpoint"} <= set(doc["instances"][0])


def test_an_insecure_node_is_marked_and_warned_about() -> None:
    snap = sample_snapshot()
    insecure = NodeRecord(node_id="n1", api_url="http://10.0.0.1:1", insecure=True).to_json()
    entries = tuple(
        Entry("n1", "node", insecure, e.version) if (e.owner, e.key) == ("n1", "node") else e
        for e in snap.entries
    )
    st = build_status(dataclasses.replace(snap, entries=entries))
    assert st.insecure_nodes() == ("n1",)
    lines = render_text(st).splitlines()
    warning = [line for line in lines if line.startswith("WARNING:")]
    assert warning == [
        "WARNING: 1 node(s) run with --insecure (plaintext off loopback, no --gossip-key): n1"
    ]
    assert any(line.split()[:2] == ["n1", "alive,INSECURE"] for line in lines)
    assert not any(line.split()[:2] == ["n2", "suspect,INSECURE"] for line in lines)
    assert json.loads(render_json(st))["summary"]["insecure_nodes"] == ["n1"]
    assert "WARNING" not in render_text(build_status(sample_snapshot()))


def test_table_aligns_columns() -> None:
    assert table(("A", "BB"), [("xxx", "y"), ("", "")]) == "A    BB\nxxx  y\n"


def test_snapshot_wire_format_round_trips_and_accepts_a_bare_list() -> None:
    wire = json.loads(json.dumps(sample_snapshot().to_json()))
    assert snapshot_from_json(wire).to_json() == wire
    assert snapshot_from_json(wire).members == sample_snapshot().members
    bare = snapshot_from_json([{"owner": "a", "key": "k", "value": 1}])
    assert bare == FabricSnapshot((), (Entry("a", "k", 1, 0),))


@pytest.mark.parametrize(
    "doc",
    [
        "text",
        {"members": {}},
        {"entries": [{"key": "k"}]},
        {"entries": [{"owner": "a", "key": 3}]},
        {"members": [{"name": "a", "state": "zombie"}]},
        {"members": [7]},
    ],
)
def test_snapshot_wire_format_errors(doc: object) -> None:
    with pytest.raises(FabricError):
        snapshot_from_json(doc)


def test_member_defaults() -> None:
    snap = snapshot_from_json({"members": [{"name": "a"}]})
    assert snap.members == (Member("a", "", "alive", 0),)
