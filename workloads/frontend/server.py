"""Example workload "frontend": a web tier that calls "billing" (Python stdlib only).

Listens on $HOST:$PORT (default 127.0.0.1:8082). Answers:

* ``GET /health`` → ``200 ok`` (whether billing answers or not: frontend itself is fine)
* ``GET /hello``  → JSON naming the app, its version and the instance serving it, with
  billing's own answer to ``GET $BILLING_URL/hello`` under ``"billing"``. If billing cannot
  be reached or answers badly (within $BILLING_TIMEOUT_S, default 2 s), the answer is
  ``502`` with ``"billing": null`` and the reason under ``"error"``.

$BILLING_URL is where billing is served, normally through the mesh's edge (set in
``garden/frontend.yaml``: ``http://127.0.0.1:8080/billing``), so frontend gets the edge's
load balancing and version switches like any other client. The version is $MYCO_VERSION or
the constant below; the instance is $MYCO_INSTANCE (set by the agent). SIGTERM and SIGINT
stop it cleanly (exit 0) after in-flight requests.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP = "frontend"
VERSION = "1.0.0"
DEFAULT_PORT = 8082
DEFAULT_BILLING_URL = "http://127.0.0.1:8080/billing"


def call_billing() -> tuple[dict[str, object] | None, str]:
    """Billing's answer to ``/hello`` as a dict, or ``None`` and why not."""
    url = os.environ.get("BILLING_URL", DEFAULT_BILLING_URL).rstrip("/") + "/hello"
    try:
        timeout = float(os.environ.get("BILLING_TIMEOUT_S", "2"))
    except ValueError:
        timeout = 2.0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our config
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return None, f"billing answered HTTP {exc.code} at {url}"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc or type(exc).__name__
        return None, f"billing unreachable at {url}: {reason}"
    except ValueError:
        return None, f"billing answered something that is not JSON at {url}"
    if not isinstance(body, dict):
        return None, f"billing answered JSON that is not an object at {url}"
    return body, ""


class Handler(BaseHTTPRequestHandler):
    server_version = f"{APP}/{VERSION}"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, "text/plain", b"ok\n")
        elif path in ("/hello", "/"):
            billing, error = call_billing()
            body: dict[str, object] = {
                "app": APP,
                "version": os.environ.get("MYCO_VERSION", VERSION),
                "instance": os.environ.get("MYCO_INSTANCE", "local"),
                "node": os.environ.get("MYCO_NODE", ""),
                "message": os.environ.get("GREETING", "Hello from frontend service"),
                "billing": billing,
            }
            if error:
                body["error"] = error
            status = 200 if billing is not None else 502
            self._send(status, "application/json", (json.dumps(body) + "\n").encode())
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
