"""``bench.autoscale``'s parts that decide its figures, and the ``paced`` workload it drives.

No speed figure is asserted: the bench itself measures (``python -m bench.autoscale``).
What is checked here is what its figures rest on: the load generator keeps its schedule
whatever the server does, makes one connection per request, retries nothing and counts
every request that got no 200 (unfinished ones included) by kind; the targets are
evaluated; the windows, flaps and recovery are counted as documented.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.autoscale import (
    FAILURE_KINDS,
    TARGETS,
    OpenLoop,
    Point,
    Shot,
    count_changes,
    evaluate,
    failure_details,
    failures_by_kind,
    flaps,
    p99_ms,
    recovered_after,
)
from tests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]

# -- figures and targets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("figures", "met"),
    [
        ({"slo_recovered_s": 4.0, "flaps": 0, "overprovision_ratio": 1.25,
          "cold_start_p50_s": 0.6, "cold_failed_requests": 0},
         {"slo_recovered_s": True, "flaps": True, "overprovision_ratio": True,
          "cold_start_p50_s": True, "cold_failed_requests": True}),
        ({"slo_recovered_s": 10.5, "flaps": 1, "overprovision_ratio": 1.6,
          "cold_start_p50_s": 1.2, "cold_failed_requests": 3},
         {"slo_recovered_s": False, "flaps": False, "overprovision_ratio": False,
          "cold_start_p50_s": False, "cold_failed_requests": False}),
        # a figure that could not be measured (never recovered) is a miss, not a pass
        ({"slo_recovered_s": None, "flaps": 0, "overprovision_ratio": None},
         {"slo_recovered_s": False, "flaps": True, "overprovision_ratio": False,
          "cold_start_p50_s": False, "cold_failed_requests": False}),
    ],
)  # fmt: skip
def test_targets_are_evaluated(figures: dict[str, object], met: dict[str, bool]) -> None:
    out = evaluate(figures)
    assert set(out) == set(TARGETS)
    assert {k: v["met"] for k, v in out.items()} == met


def test_recovery_needs_a_run_of_windows_within_the_budget() -> None:
    inf = float("inf")
    assert recovered_after([900, 400, 90, 80] + [50] * 10) == 2
    # a window over the budget restarts the run; a window without requests is not within
    assert recovered_after([900, 50, 50, inf] + [50] * 10) == 4
    assert recovered_after([900, 50, None] + [50] * 9) is None
    assert recovered_after([120] * 20) is None


def test_flaps_count_direction_changes_in_the_window() -> None:
    pts = [Point(t, d, d, d, 0.0, 0.0) for t, d in [(0, 1), (1, 5), (2, 6), (10, 5), (12, 6)]]
    changes = count_changes(pts, start=0.5, end=20)
    assert changes == [(1, 1, 5), (2, 5, 6), (10, 6, 5), (12, 5, 6)]
    assert flaps(changes, window_start=0) == 2  # up, up, down (1), up (2)
    assert flaps(changes, window_start=5) == 2  # the move down after the ups before counts
    assert flaps(changes[:2], window_start=0) == 0  # only up: settling, not flapping
    assert flaps(changes, window_start=11) == 1


def test_a_failure_is_over_any_budget_in_the_p99() -> None:
    ok = [Shot(due=0.0, sent=0.0, done=0.01, status=200) for _ in range(99)]
    assert p99_ms(ok) == 10.0
    assert p99_ms([*ok, Shot(due=0.0, kind="timeout"), Shot(due=0.0, kind="timeout")]) == float(
        "inf"
    )
    assert p99_ms([]) is None


# -- the load generator, against real sockets ----------------------------------------------


class Server:
    """A TCP server on loopback that counts connections and answers each as told."""

    def __init__(self, mode: str) -> None:
        self.mode = mode  # "ok", "silent" (never answers), "close" (closes at once)
        self.accepted = 0
        self._silent: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "close":
            writer.close()
            return
        await reader.readuntil(b"\r\n\r\n")
        if self.mode == "silent":
            self._silent.append(writer)  # keep it open, answer nothing
            return
        body = b'{"instance": "i-1"}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Server, str]]:
    srv = Server(request.param)
    tcp = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        yield srv, f"http://127.0.0.1:{port}/x"
    finally:
        tcp.close()
        for w in srv._silent:
            w.close()


@pytest.mark.parametrize("server", ["silent"], indirect=True)
async def test_the_schedule_is_kept_when_nothing_answers(server: tuple[Server, str]) -> None:
    srv, url = server
    load = OpenLoop(url, timeout_s=30.0)
    async with load:
        load.set_rate(100)
        await asyncio.sleep(1.0)  # the load's length: no answer comes meanwhile
        load.set_rate(0)
        due = [s.due for s in load.shots]
        await load.stop(grace_s=0.2)
    # open loop: one request per 10 ms of schedule, none waiting for an answer first
    assert len(due) >= 90
    assert all(b - a == pytest.approx(0.01, abs=1e-6) for a, b in zip(due, due[1:], strict=False))
    assert srv.accepted == len(load.shots)  # every one was sent, on its own connection
    # still unanswered when the load stopped: each counted as failed, none dropped
    kinds = failures_by_kind(load.shots)
    assert set(kinds) == set(FAILURE_KINDS)  # every kind, zeros included
    assert {k: n for k, n in kinds.items() if n} == {"unfinished": len(load.shots)}


@pytest.mark.parametrize("server", ["close"], indirect=True)
async def test_a_dropped_connection_is_a_failure_not_a_retry(server: tuple[Server, str]) -> None:
    srv, url = server
    async with OpenLoop(url, timeout_s=5.0) as load:
        load.set_rate(50)
        await asyncio.sleep(0.3)
        load.set_rate(0)
    assert load.shots
    assert srv.accepted == len(load.shots)  # one connection attempt per request, no retry
    kinds = failures_by_kind(load.shots)  # closed before an answer (or reset: unread data)
    assert kinds["read"] == len(load.shots)
    assert set(failure_details(load.shots)) <= {
        "read: IncompleteReadError",
        "read: ConnectionResetError",
    }


@pytest.mark.parametrize("server", ["ok"], indirect=True)
async def test_answers_and_deadlines(server: tuple[Server, str]) -> None:
    _, url = server
    async with OpenLoop(url, timeout_s=5.0) as load:
        load.set_rate(50)
        await asyncio.sleep(0.3)
        load.set_rate(0)
    assert load.shots
    assert all(s.ok and s.instance == "i-1" for s in load.shots)
    refused = f"http://127.0.0.1:{free_port()}/x"  # nothing listens there
    async with OpenLoop(refused, timeout_s=5.0) as load:
        load.set_rate(50)
        await asyncio.sleep(0.1)
        load.set_rate(0)
    assert load.shots
    assert failures_by_kind(load.shots)["connect"] == len(load.shots)
    assert set(failure_details(load.shots)) == {"connect: ConnectionRefusedError"}


# -- the workload -------------------------------------------------------------------------


@pytest.fixture
def paced() -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "SERVICE_MS": "300", "MYCO_INSTANCE": "paced-i1"}
    proc = subprocess.Popen(
        [sys.executable, "server.py"],
        cwd=ROOT / "workloads" / "paced",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _get(port, "/health")[0] == 200, timeout=20, what="paced up")
        yield port
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
    except OSError:
        return 0, {}
    return resp.status, json.loads(body) if body.startswith(b"{") else {}


def test_paced_serves_one_at_a_time_first_come_first_served(paced: int) -> None:
    answers: list[dict[str, object]] = []
    started = threading.Barrier(3)

    def call() -> None:
        started.wait()
        answers.append(_get(paced, "/hello")[1])

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()
    # busy with the two: a health check is answered at once, not queued behind them
    assert _get(paced, "/health")[0] == 200
    assert len(answers) < 2
    for t in threads:
        t.join(20)
    assert [a["instance"] for a in answers] == ["paced-i1", "paced-i1"]
    # one worker: the second request waited for the first one's work
    assert max(float(str(a["queued_ms"])) for a in answers) >= 150
    assert {a["service_ms"] for a in answers} == {300.0}
