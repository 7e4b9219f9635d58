"""The edge's ``/metrics`` from a real `myco edge` process: requests by app and code and the
latency histogram, as promtool (or prometheus_client's parser) accepts them."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import free_port, wait_for

from .test_metrics import check


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = b"boom" if self.path.startswith("/fail") else b"hi"
        self.send_response(500 if self.path.startswith("/fail") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(10)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_edge_process_serves_prometheus_metrics(backend):
    port, admin = free_port(), free_port()
    edge = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "edge", "--listen", f"127.0.0.1:{port}",
         "--route", f"billing=127.0.0.1:{backend}", "--metrics-listen", f"127.0.0.1:{admin}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/billing/hello") == 200, 30)
        for _ in range(4):
            assert _get(f"http://127.0.0.1:{port}/billing/hello") == 200
        assert _get(f"http://127.0.0.1:{port}/billing/fail") == 500
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:  # noqa: S310
            text = resp.read().decode()
        samples = check(text)
        assert samples[("myco_edge_requests_total", (("app", "billing"), ("code", "200")))] == 5
        assert samples[("myco_edge_requests_total", (("app", "billing"), ("code", "500")))] == 1
        count = samples[("myco_edge_request_duration_seconds_count", (("app", "billing"),))]
        assert count == 6
        inf = ("myco_edge_request_duration_seconds_bucket", (("app", "billing"), ("le", "+Inf")))
        assert samples[inf] == 6
    finally:
        edge.terminate()
        edge.wait(30)
