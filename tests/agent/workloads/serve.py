"""A minimal HTTP workload: /health answers 200, anything else echoes who served it.

Options (argv): ``--unhealthy`` (health answers 500), ``--exit-after N`` (exit 0 after N s),
``--ignore-term`` (SIGTERM ignored), ``--grandchild FILE`` (fork a grandchild that leaves
the process group with setsid, ignores SIGTERM and writes its pid to FILE),
``--hog-mb N`` (allocate N MiB once healthy), ``--crash`` (print and exit 3 at once).
"""

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
print(f"starting {os.environ.get('MYCO_INSTANCE')} on port {os.environ.get('PORT')}", flush=True)
if "--crash" in args:
    print("fatal: configuration missing", flush=True)
    sys.exit(3)
if "--ignore-term" in args:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "--grandchild" in args:
    out = args[args.index("--grandchild") + 1]
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open(out + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(out + ".tmp", out)
            while True:
                time.sleep(1)
        os._exit(0)
    os.wait()
UNHEALTHY = "--unhealthy" in args
HOG = int(args[args.index("--hog-mb") + 1]) if "--hog-mb" in args else 0
hoard = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/health":
            code = 500 if UNHEALTHY else 200
        else:
            code = 200
        body = f"{os.environ.get('MYCO_INSTANCE')} {self.path}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if HOG and not hoard:
            threading.Thread(target=hog).start()

    def log_message(self, *a):
        pass


def hog():
    for _ in range(HOG):
        hoard.append(b"x" * (1024 * 1024))
        print(f"holding {len(hoard)} MiB", flush=True)
        time.sleep(0.001)


if "--chatty" in args:

    def chatter():
        n = 0
        while True:
            n += 1
            print(f"tick {n}", flush=True)
            time.sleep(0.05)

    threading.Thread(target=chatter, daemon=True).start()
if "--exit-after" in args:
    n = float(args[args.index("--exit-after") + 1])
    threading.Timer(n, lambda: os._exit(0)).start()
srv = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
srv.serve_forever()
