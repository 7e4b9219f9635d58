"""Upgrades on the fast front end: the handshake to a backend, then a raw byte tunnel.

:class:`TunnelUpstream` is the :class:`~.seam.Upstream` for an upgrade request (``GET``
with ``Connection: Upgrade``) received by the fast server. The request head goes to the
backend on a fresh connection; its answer head is parsed by httptools. A ``101`` is
passed on and the two connections are joined, each direction with flow control; any
other answer is passed on as it is. A tunnel with no byte either way for
``ClientLimits.tunnel_idle_s`` is closed (one lazily re-armed timer per tunnel).
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import httptools  # type: ignore[import-not-found,unused-ignore]  # see docs/edge.md

from reconciler.edge.config import EdgeConfig
from reconciler.edge.downstream import Downstream, TunnelEnd, Upgradable
from reconciler.edge.headers import downstream_from_raw
from reconciler.edge.routing import BackendState
from reconciler.edge.seam import (
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamTimeoutError,
)

log = logging.getLogger("myco.edge")

_CHUNK = 64 * 1024


class TunnelUpstream:
    """Handshake on a fresh connection per attempt; relay raw bytes after a ``101``."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config

    async def send(self, backend: BackendState, request: UpstreamRequest) -> TunnelResponse:
        t = self.config.timeouts
        try:
            async with asyncio.timeout(t.connect):
                reader, writer = await asyncio.open_connection(backend.host, backend.port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError(f"cannot connect to {backend.endpoint}: {exc}") from exc
        lines = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
        try:
            writer.write(
                f"{request.method} {request.target} HTTP/1.1\r\n"
                f"Host: {backend.host}:{backend.port}\r\n{lines}\r\n".encode(
                    "utf-8", "surrogateescape"
                )
            )
            async with asyncio.timeout(t.read):
                raw = await reader.readuntil(b"\r\n\r\n")
            status, reason, raw_headers = parse_response_head(raw)
        except TimeoutError as exc:
            writer.close()
            raise UpstreamTimeoutError("backend sent no answer in time") from exc
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            writer.close()
            raise UpstreamBrokenError(f"upgrade handshake failed: {exc}") from exc
        except BaseException:
            writer.close()
            raise
        return TunnelResponse(self.config, request, reader, writer, status, reason, raw_headers)


class TunnelResponse:
    """The backend's answer to an upgrade; :meth:`relay` joins the connections on a 101."""

    def __init__(
        self,
        config: EdgeConfig,
        request: UpstreamRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        status: int,
        reason: str,
        raw_headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.config = config
        self.request = request
        self.reader = reader
        self.writer = writer
        self.status = status
        self.reason = reason
        self.raw_headers = raw_headers

    async def relay(self, down: Downstream) -> None:
        out = downstream_from_raw(self.raw_headers, rid=self.request.rid)
        if self.status != 101:
            # the backend refused the upgrade: pass its (small) answer on
            length = out.get("Content-Length", "")
            body = b""
            if length.isdigit() and int(length) <= self.config.small_body_bytes:
                async with asyncio.timeout(self.config.timeouts.read):
                    body = await self.reader.readexactly(int(length))
            await down.respond(self.status, self.reason, out, body)
            return
        out["Connection"] = "Upgrade"
        out["Upgrade"] = self.request.headers["Upgrade"]
        client_end = await cast(Upgradable, down).switch(out)
        watch = IdleWatch(self.config.client.tunnel_idle_s)
        try:
            async with asyncio.timeout(None) as deadline:
                watch.start(deadline)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(_copy_to_backend(client_end, self.writer, watch))
                    tg.create_task(_copy_to_client(self.reader, client_end, watch))
        except* OSError as group:  # either side went away: the tunnel is over
            log.debug("upgraded connection ended: %s", group.exceptions[0])
        except* TimeoutError:
            log.debug("upgraded connection idle for %.0fs: closed", watch.idle_s)
        finally:
            watch.stop()

    def close(self) -> None:
        self.writer.close()


class _HeadParser:
    """httptools callbacks collecting one response head."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.done = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


def parse_response_head(raw: bytes) -> tuple[int, str, list[tuple[bytes, bytes]]]:
    """Status, reason and header pairs of a response head (ValueError when malformed)."""
    cb = _HeadParser()
    parser = httptools.HttpResponseParser(cb)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # a 101: the rest of the stream is the other protocol's
    except httptools.HttpParserError as exc:
        raise ValueError(f"bad response head from backend: {exc}") from None
    if not cb.done:
        raise ValueError("incomplete response head from backend")
    return int(parser.get_status_code()), cb.reason.decode("latin-1"), cb.headers


class IdleWatch:
    """Ends an ``asyncio.timeout`` block once :meth:`touch` was not called for ``idle_s``.

    One timer, re-armed lazily when it fires (not on every byte); ``idle_s`` 0: never.
    """

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.last = 0.0
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.Timeout | None = None

    def start(self, deadline: asyncio.Timeout) -> None:
        if self.idle_s <= 0:
            return
        self._deadline = deadline
        self.last = self._loop.time()
        self._timer = self._loop.call_later(self.idle_s, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        left = self.last + self.idle_s - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check)
        elif self._deadline is not None:
            self._timer = None
            self._deadline.reschedule(self._loop.time())  # the block ends with TimeoutError

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = None


async def _copy_to_backend(src: TunnelEnd, dst: asyncio.StreamWriter, watch: IdleWatch) -> None:
    while data := await src.read():
        watch.touch()
        dst.write(data)
        await dst.drain()
    if dst.can_write_eof():
        dst.write_eof()


async def _copy_to_client(src: asyncio.StreamReader, dst: TunnelEnd, watch: IdleWatch) -> None:
    while data := await src.read(_CHUNK):
        watch.touch()
        await dst.write(data)
    dst.write_eof()
