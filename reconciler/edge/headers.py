"""Header rules of the proxy (pure): hop-by-hop stripping, forwarding and request ids."""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

#: RFC 9110 §7.6.1 connection-specific fields, plus the non-standard ones proxies drop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Handshake fields a WebSocket client library makes itself for the upstream leg.
_WS_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}")

EDGE_HEADER = "X-Mycelium-Edge"
REQUEST_ID_HEADER = "X-Request-ID"

Headers = CIMultiDictProxy[str] | CIMultiDict[str]


def _connection_tokens(headers: Headers) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


#: Request ids need to be unique, not secret: a generator seeded once from the OS (in
#: each process: ``os.register_at_fork`` reseeds a forked child) rather than
#: ``os.urandom`` per request, a ``getrandom`` system call on the hot path.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def request_id(incoming: str | None) -> str:
    """Keep a well-formed incoming id (1-128 safe characters), else make a fresh one."""
    if incoming is not None and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return f"{_ids.getrandbits(128):032x}"  # 128 random bits, as a uuid4


def upstream_request_headers(
    incoming: Headers,
    *,
    client_ip: str,
    scheme: str,
    rid: str,
    edge_time: str,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """The headers to send to the backend for a request that arrived with ``incoming``.

    ``Host`` is left for the client library (the backend's address); the original one goes
    in ``X-Forwarded-Host``. ``X-Forwarded-For`` gets the client appended.
    """
    drop = (
        HOP_BY_HOP
        | _connection_tokens(incoming)
        | {"host", "x-forwarded-proto", "x-forwarded-host"}
    )
    if websocket:
        drop |= _WS_HANDSHAKE
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lname = name.lower()
        if lname in drop or lname == "x-request-id" or lname == "x-forwarded-for":
            continue
        out.add(name, value)
    prior = ", ".join(incoming.getall("X-Forwarded-For", ()))
    out["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    out["X-Forwarded-Proto"] = scheme
    host = incoming.get("Host")
    if host:
        out["X-Forwarded-Host"] = host
    out[REQUEST_ID_HEADER] = rid
    out[EDGE_HEADER] = edge_time
    return out


def downstream_response_headers(upstream: Headers, *, rid: str) -> CIMultiDict[str]:
    """The backend's response headers minus hop-by-hop ones, plus the request id."""
    drop = HOP_BY_HOP | _connection_tokens(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in drop:
            out.add(name, value)
    if REQUEST_ID_HEADER not in out:
        out[REQUEST_ID_HEADER] = rid
    return out


def downstream_from_raw(raw: list[tuple[bytes, bytes]], *, rid: str) -> CIMultiDict[str]:
    """:func:`downstream_response_headers` for raw header pairs from the lean client."""
    drop = HOP_BY_HOP
    for name, value in raw:
        if name.lower() == b"connection":
            drop = drop | {t.strip().lower() for t in value.decode("latin-1").split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    has_rid = False
    for name, value in raw:
        n = name.decode("latin-1")
        ln = n.lower()
        if ln in drop:
            continue
        if ln == "x-request-id":
            has_rid = True
        out.add(n, value.decode("latin-1"))
    if not has_rid:
        out[REQUEST_ID_HEADER] = rid
    return out


def request_head(method: str, target: str, hostport: str, headers: Headers) -> bytes:
    """An HTTP/1.1 request head: the request line, ``Host: hostport``, then ``headers``."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {hostport}\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def is_websocket_upgrade(headers: Headers) -> bool:
    return "websocket" in headers.get("Upgrade", "").lower() and "upgrade" in _connection_tokens(
        headers
    )


def websocket_protocols(headers: Headers) -> tuple[str, ...]:
    return tuple(_split(headers.getall("Sec-WebSocket-Protocol", ())))


def _split(values: Iterable[str]) -> Iterable[str]:
    for v in values:
        for part in v.split(","):
            if part.strip():
                yield part.strip()


class Rfc3339Clock:
    """RFC 3339 UTC time (``2026-11-26T11:00:25Z``), formatted once per second."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self, wall: float | None = None) -> str:
        t = time.time() if wall is None else wall
        sec = int(t)
        if sec != self._second:
            self._second = sec
            self._text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))
        return self._text
