"""The benchmark script keeps working (tiny size; its figures are not asserted)."""

from __future__ import annotations

import json

from bench.spore import main


def test_bench_spore_json_has_the_promised_fields(capsys):
    assert main(["--json", "--size-mb", "4", "--files", "2", "--runs", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for field in ("build_mb_s", "verify_mb_s", "sha256_mb_s", "verify_ratio", "peak_rss_mb"):
        assert doc[field] > 0
    assert doc["payload_mb"] == 4
