"""Example workload "fastapi-hello": FastAPI on uvicorn, with its dependencies vendored.

Its spore carries FastAPI, uvicorn and their dependencies (``build: python:`` in
garden/fastapi-hello.yaml installs ``requirements.txt`` into ``_vendor/python``, which the
agent puts first on ``PYTHONPATH``). Listens on $HOST:$PORT (default 127.0.0.1:8083):

* ``GET /health`` → ``200 ok``
* ``GET /hello``  → JSON naming the app, its version and the instance serving it.

By hand: ``pip install -r requirements.txt && python3 app.py``.
"""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

APP = "fastapi-hello"
VERSION = "1.0.0"
DEFAULT_PORT = 8083

app = FastAPI(title=APP, version=VERSION)


@app.get("/health", response_class=PlainTextResponse)
def health() -> str:
    return "ok\n"


@app.get("/hello")
@app.get("/")
def hello() -> dict[str, str]:
    return {
        "app": APP,
        "version": os.environ.get("MYCO_VERSION", VERSION),
        "instance": os.environ.get("MYCO_INSTANCE", "local"),
        "node": os.environ.get("MYCO_NODE", ""),
        "message": os.environ.get("GREETING", "Hello from FastAPI"),
    }


def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", DEFAULT_PORT))
    # uvicorn handles SIGTERM/SIGINT: it stops accepting, finishes requests, exits 0.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
