"""``/metrics`` shows what identity refused: fabric records by reason (a real guarded member
refusing a real unsigned member's records) and HTTP authentication by reason."""

from __future__ import annotations

from pathlib import Path

from reconciler.clock import RealClock
from reconciler.fabric.fabric import open_memory_fabric
from reconciler.fabric.memory import MemoryNetwork
from reconciler.observe.metrics import Metrics
from tests.helpers import async_wait_for
from tests.identity.pki import Pki


def sample(text: str, name: str) -> dict[str, float]:
    """{reason: value} of a counter with a ``reason`` label in Prometheus text."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            out[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
    return out


async def test_refused_fabric_records_are_counted_by_reason(tmp_path: Path) -> None:
    live = Pki(tmp_path / "pki").live("agent", "node-a")
    network = MemoryNetwork(RealClock())
    async with (
        open_memory_fabric("node-a", network, guard=live.guard) as guarded,
        open_memory_fabric("intruder", network, seeds=[guarded.addr]) as intruder,
    ):
        intruder.publish("intents/node-a", {"instances": []})  # unsigned: never admitted
        metrics = Metrics("agent", guarded, scope="own")
        name = "myco_fabric_records_refused_total"
        counts = await async_wait_for(
            lambda: sample(metrics.render().decode(), name), within=10, what="a refusal"
        )
        assert sum(counts.values()) >= 1
        assert counts == {k: float(v) for k, v in guarded.refused_records().items()}
        assert guarded.get("intruder", "intents/node-a") is None


def test_http_refusals_are_counted_by_reason() -> None:
    refused = {"no-credentials": 3, "revoked": 1}
    metrics = Metrics("reconciler")
    metrics.add_http_auth(refused)
    refused["forbidden"] = 2  # read at scrape time
    text = metrics.render().decode()
    assert sample(text, "myco_http_auth_refused_total") == {
        "no-credentials": 3.0,
        "revoked": 1.0,
        "forbidden": 2.0,
    }
