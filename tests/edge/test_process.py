"""The edge process's one start/stop path, its start-up line and its light front door."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from reconciler.aio import Service, run_until_signalled
from reconciler.edge.config import EdgeConfig
from reconciler.edge.process import EdgeRunSpec, serve, worker_join
from reconciler.edge.source import ApplyRoutes
from reconciler.errors import ServiceFailed
from reconciler.fabric import open_fabric
from reconciler.fabric.joining import JoinSettings
from reconciler.records import routes_key
from tests.edge.conftest import EdgeProcess, StartBackends, route
from tests.helpers import async_wait_for


class DyingSource:
    """A route source that applies one table, then fails (as a fabric feed may)."""

    async def run(self, apply: ApplyRoutes, ready: asyncio.Event) -> None:
        apply([])
        ready.set()
        await asyncio.sleep(0)
        raise RuntimeError("gossip socket closed")


def test_a_dying_route_source_stops_the_edge_with_an_error_naming_it() -> None:
    spec = EdgeRunSpec(config=EdgeConfig(port=0, shutdown_grace_s=0.5), loop="asyncio")

    async def main(service: Service) -> None:
        await serve(spec, service, source=DyingSource())

    with pytest.raises(ServiceFailed, match="route source failed: gossip socket closed"):
        run_until_signalled(main, name="edge")


def test_the_run_spec_carries_join_settings_and_pickles() -> None:
    join = JoinSettings(
        bind="127.0.0.1:7000", seeds=("10.0.0.1:7946",), advertise="10.0.0.9:7000", cluster="c"
    )
    spec = EdgeRunSpec(config=EdgeConfig(), join=join, workers=2)
    assert pickle.loads(pickle.dumps(spec)) == spec
    w1 = worker_join(join, 1)
    assert (w1.bind, w1.advertise, w1.seeds, w1.cluster) == (
        "127.0.0.1:7001",
        "10.0.0.9:7001",
        ("10.0.0.1:7946",),
        "c",
    )
    assert worker_join(JoinSettings(advertise="edge.example"), 3).bind == "127.0.0.1:0"


def test_the_routing_core_does_not_import_aiohttp() -> None:
    code = (
        "import sys, reconciler.edge, reconciler.edge.routing, reconciler.edge.headers, "
        "reconciler.edge.stats, reconciler.edge.seam; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'httptools')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


async def test_startup_line_is_shown_without_verbose(
    backends: StartBackends,
    client: aiohttp.ClientSession,
    edge_process: Callable[..., EdgeProcess],
    tmp_path: Path,
) -> None:
    (a,) = await backends("a")
    async with open_fabric("reconciler-1", cluster="edge-test") as publisher:
        publisher.publish(routes_key("app"), route("app", (a, 1)).to_json())
        edge = edge_process(
            "--join", publisher.addr, "--cluster", "edge-test", "--profile", "local",
            "--advertise", "127.0.0.1", "--name", "edge-line", "--loop", "asyncio",
            "--metrics-listen", "127.0.0.1:0",
        )  # fmt: skip
        await edge.ready(client)

        async def served() -> bool:
            async with client.get(f"{edge.url}/app/x") as resp:
                return resp.status == 200

        await async_wait_for(served, within=15, what="routes via gossip")
        code, err = edge.stop()
    assert code == 0, err
    (line,) = [ln for ln in err.splitlines() if "edge serving on" in ln]
    assert f"edge serving on {edge.url} " in line
    assert "fast server" in line
    assert "loop asyncio" in line
    assert "/metrics, dashboard http://127.0.0.1:" in line
    assert "/ui/" in line
    assert "fabric member edge-line gossip 127.0.0.1:" in line
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--route", "a=127.0.0.1:1", "--metrics-listen", "0.0.0.0:0"],
            "edge: refusing to serve --metrics-listen in plaintext on 0.0.0.0:0 without an "
            "identity: give --identity DIR (mutual TLS), or --insecure",
        ),
        (
            ["--join", "127.0.0.1:7946", "--gossip-bind", "0.0.0.0:7947"],
            "edge: refusing to gossip in plaintext on 0.0.0.0:7947: "
            "give --gossip-key FILE, or --insecure",
        ),
        (
            ["--join", "10.0.0.1:7946"],
            "edge: cannot advertise 127.0.0.1 to seed 10.0.0.1:7946: a loopback address is "
            "unreachable from other hosts",
        ),
        (
            ["--join", "127.0.0.1:7946", "--advertise", "0.0.0.0"],
            "edge: cannot advertise 0.0.0.0: no peer can reach a wildcard address",
        ),
    ],
)
def test_the_edge_refuses_unsafe_or_unreachable_addresses_in_one_line(
    args: list[str], message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "edge", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"myco: error: {message}")
