"""Example workload "billing": a tiny HTTP service run by Mycelium Mesh (Python stdlib only).

Listens on $HOST:$PORT (default 127.0.0.1:8081). Answers:

* ``GET /health`` → ``200 ok``
* ``GET /hello``  → JSON naming the app, its version and the instance serving it.

The version is $MYCO_VERSION or the constant below; the instance is $MYCO_INSTANCE (set by
the agent). SIGTERM and SIGINT stop it cleanly (exit 0) after in-flight requests.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP = "billing"
VERSION = "1.0.0"
DEFAULT_PORT = 8081


class Handler(BaseHTTPRequestHandler):
    server_version = f"{APP}/{VERSION}"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, "text/plain", b"ok\n")
        elif path in ("/hello", "/"):
            body = {
                "app": APP,
                "version": os.environ.get("MYCO_VERSION", VERSION),
                "instance": os.environ.get("MYCO_INSTANCE", "local"),
                "node": os.environ.get("MYCO_NODE", ""),
                "message": os.environ.get("GREETING", "Hello from billing service"),
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
        if self.path.startswith("/health"):
            return  # health checks every second would drown the log
        sys.stderr.write(f"{APP}: {self.address_string()} {format % args}\n")


def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", DEFAULT_PORT))
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True

    def stop(signum: int, frame: object) -> None:
        # serve_forever runs in this thread: shut it down from another one.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{APP} {VERSION} listening on {host}:{server.server_port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print(f"{APP} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
