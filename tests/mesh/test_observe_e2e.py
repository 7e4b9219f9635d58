"""Observe a real mesh: `myco status`, `myco logs`, the reconciler's `/metrics` and
`/ui`, and webhook notifications, all from one `myco up`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.localmesh import start_mesh, wait_serving
from tests.helpers import wait_for
from tests.mesh.conftest import assert_nothing_left
from tests.observe.test_metrics import check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


class _Receiver(BaseHTTPRequestHandler):
    events: list[dict[str, object]] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).events.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver():
    _Receiver.events = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver.events
    server.shutdown()
    server.server_close()
    thread.join(10)


def _myco(state, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MYCO_HOME=str(state))
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_status_logs_metrics_dashboard_and_webhooks(tmp_path, receiver):
    url, events = receiver
    mesh = start_mesh(tmp_path, extra_args=("--notify-webhook", url))
    try:
        wait_serving(mesh, instances=2)
        # webhook: billing became Healthy, said once, as JSON
        wait_for(
            lambda: any(
                (e.get("app"), e.get("kind"), e.get("current")) == ("billing", "health", "Healthy")
                for e in events
            ),
            30, what="a Healthy event for billing",
        )  # fmt: skip
        # myco status (JSON for the test; tables for people)
        out = _myco(mesh.state, "status", "--output", "json")
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        (billing,) = [a for a in status["apps"] if a["name"] == "billing"]
        assert (billing["sync"], billing["health"]) == ("Synced", "Healthy")
        assert sum(1 for i in status["instances"] if i["app"] == "billing") == 2
        table = _myco(mesh.state, "status").stdout
        assert "billing" in table
        assert "Healthy" in table
        # myco logs: lines from both instances, each with its prefix
        urllib.request.urlopen(f"{mesh.url}/billing/hello", timeout=5).close()  # noqa: S310
        urllib.request.urlopen(f"{mesh.url}/billing/hello", timeout=5).close()  # noqa: S310
        logs = _myco(mesh.state, "logs", "billing")
        assert logs.returncode == 0, logs.stderr
        prefixes = {ln.split("]", 1)[0] for ln in logs.stdout.splitlines() if ln.startswith("[")}
        assert len(prefixes) == 2
        # the reconciler's /metrics and /ui
        control = json.loads((mesh.state / "reconciler" / "reconciler.json").read_text())
        base = control["control_url"]
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:  # noqa: S310
            samples = check(resp.read().decode())
        assert samples[("myco_app_health_status", (("app", "billing"), ("status", "Healthy")))] == 1
        assert samples[("myco_reconcile_duration_seconds_count", ())] > 0
        with urllib.request.urlopen(f"{base}/ui/", timeout=5) as resp:  # noqa: S310
            assert resp.status == 200
            assert b"<html" in resp.read().lower()
    finally:
        mesh.stop()
    assert_nothing_left(mesh)
