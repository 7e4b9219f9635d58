"""Example workload "paced": a service with a fixed capacity per instance (Python stdlib only).

Each instance works on at most $CONCURRENCY requests at a time (default 1) and each takes
$SERVICE_MS of work (default 10 ms), so one instance serves about
CONCURRENCY × 1000 / SERVICE_MS = 100 requests/s. Requests beyond that wait in a first-come
first-served queue and their latency grows with it, as a real service's does when it runs
out of workers: what an autoscaler reacts to. The work is a sleep, so the capacity does not
depend on how busy the machine's CPUs are (a benchmark on a small machine measures the
mesh, not the workload's share of the CPU).

Listens on $HOST:$PORT (default 127.0.0.1:8083). Answers:

* ``GET /health`` → ``200 ok``, at once (never queued: a busy instance is alive);
* ``GET /hello`` (or ``/``) → JSON naming the app, its version and the instance, after the
  work, with ``queued_ms`` (time spent waiting for a worker) and ``service_ms``.

The version is $MYCO_VERSION or the constant below; the instance is $MYCO_INSTANCE (set by
the agent). SIGTERM and SIGINT stop it cleanly (exit 0) after in-flight requests.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP = "paced"
VERSION = "1.0.0"
DEFAULT_PORT = 8083


class Workers:
    """``n`` worker threads taking jobs from one FIFO queue: the instance's capacity."""

    def __init__(self, n: int, service_s: float) -> None:
        self.service_s = service_s
        self.jobs: queue.SimpleQueue[threading.Event] = queue.SimpleQueue()
        for i in range(n):
            threading.Thread(target=self._work, name=f"worker-{i}", daemon=True).start()

    def _work(self) -> None:
        free_at = time.monotonic()
        while True:
            done = self.jobs.get()
            # A job starts when the worker is free, or now if it was idle: with a queue, one
            # job ends every SERVICE_MS however late this thread is woken on a busy machine.
            free_at = max(time.monotonic(), free_at) + self.service_s
            time.sleep(max(0.0, free_at - time.monotonic()))
            done.set()

    def run(self) -> float:
        """Queue one job and wait for it; the seconds it waited for a worker."""
        done = threading.Event()
        queued = time.monotonic()
        self.jobs.put(done)
        done.wait()
        return time.monotonic() - queued - self.service_s


class Handler(BaseHTTPRequestHandler):
    server_version = f"{APP}/{VERSION}"
    protocol_version = "HTTP/1.1"  # keep-alive: the edge reuses its connections
    workers: Workers  # set in main()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, "text/plain", b"ok\n")
        elif path in ("/hello", "/"):
            waited = self.workers.run()
            body = {
                "app": APP,
                "version": os.environ.get("MYCO_VERSION", VERSION),
                "instance": os.environ.get("MYCO_INSTANCE", "local"),
                "node": os.environ.get("MYCO_NODE", ""),
                "queued_ms": round(max(0.0, waited) * 1000, 3),
                "service_ms": round(self.workers.service_s * 1000, 3),
            }
            self._send(200, "application/json", (json.dumps(body) + "\n").encode())
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return  # a hundred lines a second would drown the log; the edge counts requests


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: a burst of connections waits, not refused


def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", DEFAULT_PORT))
    concurrency = int(os.environ.get("CONCURRENCY", "1"))
    service_ms = float(os.environ.get("SERVICE_MS", "10"))
    if concurrency < 1 or service_ms < 0:
        print(f"{APP}: CONCURRENCY must be >= 1 and SERVICE_MS >= 0", file=sys.stderr)
        return 2
    Handler.workers = Workers(concurrency, service_ms / 1000)
    server = Server((host, port), Handler)

    def stop(signum: int, frame: object) -> None:
        # serve_forever runs in this thread: shut it down from another one.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rate = concurrency * 1000 / service_ms if service_ms else float("inf")
    print(
        f"{APP} {VERSION} listening on {host}:{server.server_port} "
        f"({concurrency} worker(s) × {service_ms:g} ms: about {rate:.0f} requests/s)",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print(f"{APP} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
