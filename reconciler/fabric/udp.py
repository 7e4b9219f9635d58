"""The real transport: asyncio UDP for packets, one-shot TCP connections for streams.

A stream is ``length(4, big endian) | sealed bytes`` on a fresh connection, then close;
the answer (if any) comes back on a new connection to the sender's advertised address.
Every task the transport starts is tracked and cancelled and awaited by :meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

from reconciler.errors import FabricError

from .transport import Receiver, member_addr, peer_addr

log = logging.getLogger("myco.fabric")

_LEN = struct.Struct(">I")


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTcpTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.owner._deliver(f"{addr[0]}:{addr[1]}", data, False)

    def error_received(self, exc: Exception) -> None:
        log.debug("fabric udp error: %s", exc)


class UdpTcpTransport:
    def __init__(self, max_stream_bytes: int = 64 * 1024 * 1024, stream_timeout: float = 10.0):
        self._addr = ""
        self._receiver: Receiver | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._max = max_stream_bytes
        self._timeout = stream_timeout
        self._closing = False

    @classmethod
    async def open(
        cls,
        bind: str,
        advertise: str | None = None,
        *,
        max_stream_bytes: int = 64 * 1024 * 1024,
        stream_timeout: float = 10.0,
    ) -> UdpTcpTransport:
        """Bind TCP and UDP on the same port (``:0`` picks a free one)."""
        self = cls(max_stream_bytes, stream_timeout)
        host, port = member_addr(bind, "fabric bind address")
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for _ in range(20 if port == 0 else 1):
            try:
                self._server = await asyncio.start_server(
                    self._on_conn, host, port, reuse_address=True, family=socket.AF_INET
                )
                bound = self._server.sockets[0].getsockname()[1]
                self._udp, _ = await loop.create_datagram_endpoint(
                    lambda: _Datagrams(self), local_addr=(host, bound), family=socket.AF_INET
                )
            except OSError as exc:
                last = exc
                if self._server is not None:
                    self._server.close()
                    await self._server.wait_closed()
                    self._server = None
                continue
            if advertise and ":" not in advertise:  # a host alone: the port we bound
                advertise = f"{advertise}:{bound}"
            self._addr = advertise or f"{host}:{bound}"
            return self
        raise FabricError(f"cannot bind the fabric to {bind}: {last}")

    @property
    def addr(self) -> str:
        return self._addr

    def set_receiver(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def _deliver(self, src: str, data: bytes, stream: bool) -> None:
        if self._receiver is not None and not self._closing:
            self._receiver(src, data, stream)

    def send_packet(self, addr: str, data: bytes) -> None:
        if self._udp is None or self._closing:
            return
        try:
            self._udp.sendto(data, peer_addr(addr))
        except (OSError, FabricError) as exc:
            log.debug("fabric: udp send to %s failed: %s", addr, exc)

    def send_stream(self, addr: str, data: bytes) -> None:
        if self._closing:
            return
        task = asyncio.get_running_loop().create_task(self._stream(addr, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream(self, addr: str, data: bytes) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            host, port = peer_addr(addr)
            async with asyncio.timeout(self._timeout):
                _, writer = await asyncio.open_connection(host, port)
                writer.write(_LEN.pack(len(data)) + data)
                await writer.drain()
        except (OSError, FabricError, TimeoutError) as exc:
            log.debug("fabric: stream to %s failed: %s", addr, exc)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await writer.wait_closed()

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        src = f"{peer[0]}:{peer[1]}" if peer else "?"
        try:
            async with asyncio.timeout(self._timeout):
                (size,) = _LEN.unpack(await reader.readexactly(4))
                if size > self._max:
                    log.debug("fabric: stream of %d bytes from %s refused", size, src)
                    return
                data = await reader.readexactly(size)
            self._deliver(src, data, True)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.debug("fabric: stream from %s failed: %s", src, exc)
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        self._closing = True
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            self._server.close()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
