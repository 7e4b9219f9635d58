"""``python -m bench.identity`` keeps working (``--quick``; no speed figure is asserted)."""

from __future__ import annotations

import json

import pytest

from bench.identity import TARGETS, evaluate, main


def test_bench_identity_quick_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--json", "--quick"])
    doc = json.loads(capsys.readouterr().out)
    for field in ("record_verify_us", "record_sign_us", "mtls_new_conn_p50_ms"):
        assert doc[field] > 0
    assert isinstance(doc["mtls_added_p50_ms"], float)
    assert doc["mtls"]["tls_requests_seen"] == ["TLSv1.3 cert"]  # mutual TLS, really
    gossip = doc["gossip"]
    assert gossip["simulated"] is True
    assert gossip["seeds"] == len(gossip["per_seed"]) >= 3
    assert gossip["spread"][0] <= doc["gossip_bytes_ratio"] <= gossip["spread"][1]
    for run in gossip["per_seed"]:
        assert run["refused_records"] == 0  # honest members refuse nothing of each other
        assert run["all_records_everywhere_after_s"]["signed"] is not None
    # Correctness, not speed: the hostile set places nothing, whatever the machine.
    assert doc["hostile_records_accepted"] == 0
    assert doc["hostile"]["records_attempted"] >= 30
    assert set(doc["targets"]) == set(TARGETS)
    for t in doc["targets"].values():
        assert set(t) == {"value", "target", "met"}
    assert doc["all_targets_met"] is all(t["met"] for t in doc["targets"].values())
    assert code == (0 if doc["all_targets_met"] else 1)


@pytest.mark.parametrize(
    ("figures", "met"),
    [
        ({"gossip_bytes_ratio": 1.2, "mtls_added_p50_ms": 0.3, "hostile_records_accepted": 0},
         {"gossip_bytes_ratio": True, "mtls_added_p50_ms": True, "hostile_records_accepted": True}),
        ({"gossip_bytes_ratio": 1.6, "mtls_added_p50_ms": 1.0, "hostile_records_accepted": 1},
         {"gossip_bytes_ratio": False, "mtls_added_p50_ms": True,
          "hostile_records_accepted": False}),
        ({"gossip_bytes_ratio": None, "mtls_added_p50_ms": True},
         {"gossip_bytes_ratio": False, "mtls_added_p50_ms": False,
          "hostile_records_accepted": False}),
    ],
)  # fmt: skip
def test_targets_are_evaluated(figures: dict[str, object], met: dict[str, bool]) -> None:
    assert {k: v["met"] for k, v in evaluate(figures).items()} == met
