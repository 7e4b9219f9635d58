"""Real HTTP backends on loopback for the edge tests (in-process, or ``python -m`` this).

Routes: ``/ws`` echoes WebSocket messages; ``/upload`` counts and hashes a streamed body;
``/download/{n}`` streams n bytes; ``/status/{code}`` answers that code; ``/drop`` reads
the body then drops the connection without answering; ``/gate`` answers once ``gate`` is
set; anything else answers JSON with
the backend's name, the path, the query and the headers it got. ``fail_with`` (when set)
makes every plain request answer that status.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

CHUNK = 64 * 1024


@dataclass
class Backend:
    name: str
    host: str = "127.0.0.1"
    port: int = 0
    hits: list[tuple[str, str]] = field(default_factory=list)
    fail_with: int | None = None
    runner: web.AppRunner | None = None
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # /gate waits on it
    waiting: int = 0
    sent: int = 0  # body bytes written by /download

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> Backend:
        self.runner = web.AppRunner(make_app(self), access_log=None, shutdown_timeout=2.0)
        await self.runner.setup()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self.runner, sock).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def make_app(backend: Backend) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        backend.hits.append((request.method, request.path))
        if backend.fail_with is not None:
            return web.Response(status=backend.fail_with, text="failing on purpose\n")
        body = await request.read()
        return web.json_response(
            {
                "backend": backend.name,
                "method": request.method,
                "path": request.rel_url.raw_path,
                "query": request.rel_url.raw_query_string,
                "headers": {k: v for k, v in request.headers.items()},
                "body_bytes": len(body),
            }
        )

    async def status(request: web.Request) -> web.Response:
        backend.hits.append((request.method, request.path))
        await request.read()
        return web.Response(status=int(request.match_info["code"]), text=backend.name)

    async def upload(request: web.Request) -> web.Response:
        backend.hits.append((request.method, request.path))
        digest = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            digest.update(chunk)
            n += len(chunk)
        return web.json_response({"bytes": n, "sha256": digest.hexdigest()})

    async def download(request: web.Request) -> web.StreamResponse:
        backend.hits.append((request.method, request.path))
        n = int(request.match_info["n"])
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        resp.content_length = n
        await resp.prepare(request)
        block = b"m" * CHUNK
        left = n
        while left > 0:
            piece = block if left >= CHUNK else block[:left]
            await resp.write(piece)
            backend.sent += len(piece)
            left -= len(piece)
        await resp.write_eof()
        return resp

    async def drop(request: web.Request) -> web.Response:
        backend.hits.append((request.method, request.path))
        await request.read()
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError  # nothing more to say on this connection

    async def gate(request: web.Request) -> web.Response:
        backend.hits.append((request.method, request.path))
        backend.waiting += 1
        await backend.gate.wait()
        return web.Response(text=f"{backend.name} passed the gate")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        backend.hits.append((request.method, request.path))
        sock = web.WebSocketResponse(protocols=("chat",))
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is WSMsgType.TEXT:
                await sock.send_str(f"{backend.name}:{msg.data}")
            elif msg.type is WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/gate", gate)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download/{n}", download)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_post("/drop", drop)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def _main(port: int, name: str) -> None:
    backend = await Backend(name, port=port).start()
    print(f"listening {backend.endpoint}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await backend.stop()


def reserve_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]), sys.argv[2]))
