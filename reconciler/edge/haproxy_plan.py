"""The HAProxy data plane's pure part: route table → HAProxy config text and runtime commands.

No I/O. :func:`plan_routes` turns route records into a :class:`Plan` (one HAProxy backend
per app, one server per usable backend endpoint, with the problems found on the way);
:func:`render_config` writes the whole configuration for a plan; :func:`runtime_commands`
lists the runtime API commands that take HAProxy's servers from what it has now (a
:data:`Current` map) to the plan without a reload; :func:`reap_commands` deletes the
servers that left the plan once they carry no session. :func:`needs_reload` says when the
runtime API cannot do it (an app appeared or went: backends cannot be added at run time).

The selection rules are :class:`reconciler.edge.routing.RouteTable`'s: the prefix must be
one path segment; two records with one prefix, the higher epoch wins; endpoints listed in
``draining``, or of weight 0, get no new requests.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from reconciler.edge.routing import prefix_segment, split_endpoint
from reconciler.errors import EdgeError
from reconciler.records import RouteRecord

#: HAProxy's largest server weight (``set server ... weight`` refuses more).
MAX_WEIGHT = 256

#: The request-id rule of :func:`reconciler.edge.headers.request_id`, as an HAProxy regex.
REQUEST_ID_REGEX = "^[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}$"

_NAME_OK = re.compile(r"[A-Za-z0-9_.:-]+")
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.:-]")
#: What a first path segment may hold to be a map key (RFC 3986 pchar, no space or quote).
_SEGMENT_OK = re.compile(r"[A-Za-z0-9._~!$&()*+,;=:@%-]+")

ServerStateName = Literal["ready", "drain", "maint"]


@dataclass(frozen=True)
class Server:
    """One backend endpoint as an HAProxy server: ``name`` is made from its address."""

    name: str
    addr: str  # what HAProxy is given: "10.0.0.5:9001" or "[fd00::5]:9001"
    weight: int
    endpoint: str  # as the route gave it


@dataclass(frozen=True)
class AppBackend:
    app: str
    segment: str  # the first path segment that selects it
    name: str  # the HAProxy backend's name
    servers: tuple[Server, ...]  # those that may get new requests


@dataclass(frozen=True)
class Plan:
    """What HAProxy should serve: backends by name, and what could not be used."""

    backends: dict[str, AppBackend] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def servers(self) -> dict[tuple[str, str], Server]:
        return {(b.name, s.name): s for b in self.backends.values() for s in b.servers}


@dataclass(frozen=True)
class ServerState:
    """A server as HAProxy has it (as far as the driver knows)."""

    addr: str
    weight: int
    state: ServerStateName


#: (backend name, server name) → its state: what the running HAProxy has.
Current = dict[tuple[str, str], ServerState]


@dataclass(frozen=True)
class Command:
    """One runtime API command and what it changes once HAProxy accepts it."""

    text: str
    key: tuple[str, str]  # (backend, server)
    after: ServerState | None  # the server's state after it; None: deleted


@dataclass(frozen=True)
class Settings:
    """What the rendered configuration needs besides the routes."""

    listen_host: str
    listen_port: int
    socket_path: str  # the runtime API socket (level admin)
    map_path: str  # first path segment → backend name
    threads: int = 1
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 30.0
    client_timeout_s: float = 75.0
    retries: int = 2
    retry_after_s: int = 1
    stop_grace_s: float = 10.0
    maxconn: int = 0  # 0: HAProxy's own, from the file descriptor limit


def name_for(prefix: str, text: str) -> str:
    """An HAProxy object name for ``text``: itself when its characters are allowed, else
    those replaced and a short hash added (two texts never share a name)."""
    if _NAME_OK.fullmatch(text):
        return prefix + text
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    return f"{prefix}{_NAME_BAD.sub('_', text)}_{digest}"


def haproxy_addr(host: str, port: int) -> str | None:
    """``host:port`` as HAProxy's runtime API takes it, or None if ``host`` is not an IP
    literal (the runtime API does not resolve names: a name would never connect)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def plan_routes(routes: Iterable[RouteRecord], resolved: Mapping[str, str] | None = None) -> Plan:
    """The backends and servers to serve for ``routes``.

    ``resolved`` maps host names found in endpoints to an IP address (the driver resolves
    them); an endpoint that is neither an IP literal nor resolved is a problem, as is a
    malformed one or a prefix that cannot be a map key. Weights above 256 are capped.
    """
    resolved = resolved or {}
    problems: list[str] = []
    chosen: dict[str, RouteRecord] = {}
    for rec in routes:
        seg = prefix_segment(rec.prefix or "/" + rec.app)
        if seg is None:
            problems.append(f"app {rec.app}: prefix {rec.prefix!r} is not one path segment")
            continue
        if not _SEGMENT_OK.fullmatch(seg):
            problems.append(f"app {rec.app}: prefix {rec.prefix!r} has characters a map refuses")
            continue
        old = chosen.get(seg)
        if old is None or (rec.epoch, rec.app) > (old.epoch, old.app):
            chosen[seg] = rec
    backends: dict[str, AppBackend] = {}
    for seg in sorted(chosen):
        rec = chosen[seg]
        draining = set(rec.draining)
        servers: dict[str, Server] = {}
        for b in rec.backends:
            if b.endpoint in draining or b.weight <= 0:
                continue
            try:
                host, port = split_endpoint(b.endpoint)
            except EdgeError as exc:
                problems.append(f"app {rec.app}: {exc}")
                continue
            addr = haproxy_addr(host, port)
            if addr is None and host in resolved:
                addr = haproxy_addr(resolved[host], port)
            if addr is None:
                problems.append(
                    f"app {rec.app}: backend {b.endpoint}: {host!r} is not an IP address "
                    "and did not resolve"
                )
                continue
            weight = b.weight
            if weight > MAX_WEIGHT:
                problems.append(
                    f"app {rec.app}: backend {b.endpoint}: weight {weight} capped at {MAX_WEIGHT}"
                )
                weight = MAX_WEIGHT
            name = name_for("s_", addr)
            if name not in servers:
                servers[name] = Server(name, addr, weight, b.endpoint)
        be = name_for("app_", seg)
        backends[be] = AppBackend(rec.app, seg, be, tuple(servers.values()))
    return Plan(backends, tuple(problems))


def needs_reload(current_backends: Iterable[str], plan: Plan) -> bool:
    """Backends (apps) cannot be added or removed at run time: a new config is needed."""
    return set(current_backends) != set(plan.backends)


def state_after_start(plan: Plan) -> Current:
    """What HAProxy has right after starting on :func:`render_config` of ``plan``."""
    return {k: ServerState(s.addr, s.weight, "ready") for k, s in plan.servers().items()}


def runtime_commands(current: Mapping[tuple[str, str], ServerState], plan: Plan) -> list[Command]:
    """The commands that take ``current`` to ``plan`` (whose backends HAProxy must have).

    New servers are added (they start in maintenance), weighted and made ready; a server
    whose weight changed is re-weighted; one that left the plan is set to drain (no new
    requests; its sessions finish) and later deleted by :func:`reap_commands`. Additions
    come first, so an app never passes through a moment without a server.
    """
    desired = plan.servers()
    out: list[Command] = []
    for key, s in desired.items():
        be, sv = key
        now = current.get(key)
        target = ServerState(s.addr, s.weight, "ready")
        if now is None:
            added = ServerState(s.addr, s.weight, "maint")
            out.append(Command(f"add server {be}/{sv} {s.addr} weight {s.weight}", key, added))
            out.append(Command(f"set server {be}/{sv} state ready", key, target))
            continue
        if now.weight != s.weight:
            now = ServerState(now.addr, s.weight, now.state)
            out.append(Command(f"set server {be}/{sv} weight {s.weight}", key, now))
        if now.state != "ready":
            out.append(Command(f"set server {be}/{sv} state ready", key, target))
    for key, now in current.items():
        if key not in desired and now.state == "ready" and key[0] in plan.backends:
            drained = ServerState(now.addr, now.weight, "drain")
            out.append(Command(f"set server {key[0]}/{key[1]} state drain", key, drained))
    return out


def reap_commands(
    current: Mapping[tuple[str, str], ServerState],
    plan: Plan,
    sessions: Mapping[tuple[str, str], int],
) -> list[Command]:
    """Delete the servers that left the plan and carry no session any more (put in
    maintenance first, as ``del server`` requires). A server of unknown session count
    is kept."""
    desired = plan.servers()
    out: list[Command] = []
    for key, now in current.items():
        if key in desired or key[0] not in plan.backends or sessions.get(key, 1) > 0:
            continue
        be, sv = key
        if now.state != "maint":
            gone = ServerState(now.addr, now.weight, "maint")
            out.append(Command(f"set server {be}/{sv} state maint", key, gone))
        out.append(Command(f"del server {be}/{sv}", key, None))
    return out


def accepted(command: Command, answer: str) -> bool:
    """Whether HAProxy's answer to ``command`` says it was done."""
    text = answer.strip()
    if command.text.startswith("add server"):
        return text.startswith("New server registered")
    if command.text.startswith("del server"):
        return text.startswith("Server deleted")
    return text == ""


def render_map(plan: Plan) -> str:
    """The map file: first path segment → backend name."""
    return "".join(f"{b.segment} {b.name}\n" for b in plan.backends.values())


def _json_literal(value: str) -> str:
    """A JSON string safe inside an HAProxy single-quoted log-format string."""
    text = json.dumps(value)
    return text.replace("'", "\\u0027").replace("%", "\\u0025")


def _secs(value: float) -> str:
    return f"{max(1, round(value * 1000))}ms"


def render_config(settings: Settings, plan: Plan) -> str:
    """The whole HAProxy configuration for ``plan``: the servers it lists are in it, ready.

    The front end answers an unknown app with the Python edge's 404 JSON, makes or keeps
    ``X-Request-ID``, sets ``X-Forwarded-For/Proto/Host`` and ``X-Mycelium-Edge``, picks
    the backend from the map by the first path segment and strips that segment. Each
    backend answers the edge's 503 JSON (with ``Retry-After``) when it has no usable
    server. Health checks stay off: the fabric says what is ready.
    """
    s = settings
    lines = [
        "# Written by myco edge --data-plane haproxy; rewritten on every app change.",
        "global",
        f"    stats socket {s.socket_path} mode 600 level admin expose-fd listeners",
        f"    nbthread {s.threads}",
        *([f"    maxconn {s.maxconn}"] if s.maxconn > 0 else []),
        f"    hard-stop-after {_secs(s.stop_grace_s)}",
        "    tune.bufsize 32768",
        "",
        "defaults",
        "    mode http",
        f"    timeout connect {_secs(s.connect_timeout_s)}",
        f"    timeout server {_secs(s.read_timeout_s)}",
        f"    timeout client {_secs(s.client_timeout_s)}",
        f"    timeout http-keep-alive {_secs(s.client_timeout_s)}",
        "    timeout http-request 30s",
        f"    timeout queue {_secs(s.connect_timeout_s)}",
        "    timeout tunnel 1h",
        f"    retries {s.retries}",
        "    option redispatch 1",
        # During a reload (soft stop) the old process would close idle keep-alive client
        # connections at once, racing a request the client is sending on one: a client
        # that does not retry sees an error. With this option it waits for one more
        # request and closes after its response, with "Connection: close".
        "    option idle-close-on-response",
        # Only a failed connect is retried (nothing was sent). Any L7 condition (a status,
        # empty-response) makes HAProxy copy the whole request buffer (tune.bufsize) before
        # every send in case it must replay it: measured ~6 us/request at 32 KiB, the
        # largest single cost of this front end, so 502/503/504 are not retried here.
        "    retry-on conn-failure",
        "",
        "frontend edge",
        f"    bind {_bind(s.listen_host, s.listen_port)}",
        f"    http-request set-var(txn.be) path,field(2,/),map_str({s.map_path})",
        "    http-request return status 404 content-type application/json lf-string "
        '\'{"error":"unknown app","status":404,"path":"%[path,json(utf8s)]"}\' '
        "unless { var(txn.be) -m found }",
        "    http-request set-header X-Request-ID %[uuid,regsub(-,,g)] "
        "unless { req.hdr_cnt(x-request-id) eq 1 } "
        f"{{ req.fhdr(x-request-id) -m reg '{REQUEST_ID_REGEX}' }}",
        "    http-request set-var(txn.rid) req.fhdr(x-request-id)",
        '    http-request set-header X-Forwarded-For "%[req.fhdr(x-forwarded-for)], %[src]" '
        "if { req.hdr(x-forwarded-for) -m found }",
        "    http-request set-header X-Forwarded-For %[src] "
        "unless { req.hdr(x-forwarded-for) -m found }",
        "    http-request set-header X-Forwarded-Proto http",
        "    http-request set-header X-Forwarded-Host %[req.fhdr(host)] "
        "if { req.hdr(host) -m found }",
        "    http-request del-header X-Forwarded-Host unless { req.hdr(host) -m found }",
        "    http-request set-header X-Mycelium-Edge %[date,utime(%Y-%m-%dT%H:%M:%SZ)]",
        "    http-request replace-path ^/[^/]*/?(.*) /\\1",
        "    http-response set-header X-Request-ID %[var(txn.rid)] "
        "unless { res.hdr(x-request-id) -m found }",
        "    use_backend %[var(txn.be)]",
        "",
    ]
    for b in plan.backends.values():
        app = _json_literal(b.app)
        lines += [
            f"backend {b.name}",
            # not leastconn: HAProxy 2.6's gives every idle server the same key whatever its
            # weight, so a 9:1 canary gets half of the traffic at low load
            # (test_weights_are_respected fails with it); see docs/edge.md
            "    balance roundrobin",
            f"    http-request return status 503 content-type application/json "
            f"hdr Retry-After {s.retry_after_s} "
            f'lf-string \'{{"error":"no backend available","status":503,"app":{app}}}\' '
            "if { nbsrv lt 1 } !{ stopping }",  # a stopping process reports none
            "    http-error status 502 content-type application/json "
            f'string \'{{"error":"backend unreachable","status":502,"app":{app}}}\'',
            "    http-error status 503 content-type application/json "
            f"hdr Retry-After {s.retry_after_s} "
            f'string \'{{"error":"no backend available","status":503,"app":{app}}}\'',
            "    http-error status 504 content-type application/json "
            f'string \'{{"error":"backend timed out","status":504,"app":{app}}}\'',
        ]
        lines += [f"    server {sv.name} {sv.addr} weight {sv.weight}" for sv in b.servers]
        lines.append("")
    return "\n".join(lines) + "\n"


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_stat_csv(text: str) -> list[dict[str, str]]:
    """``show stat`` CSV → one dict per row (the header line starts with ``# ``)."""
    rows = [line for line in text.splitlines() if line.strip()]
    if not rows or not rows[0].startswith("# "):
        return []
    names = rows[0][2:].split(",")
    return [dict(zip(names, row.split(","), strict=False)) for row in rows[1:]]


def app_counters(
    rows: Iterable[Mapping[str, str]], plan: Plan
) -> tuple[dict[str, tuple[int, int, float]], dict[tuple[str, str], int]]:
    """From ``show stat`` rows: per app (requests, 5xx answers, average total time in ms
    over HAProxy's last 1024 requests) and the sessions of every server."""
    apps: dict[str, tuple[int, int, float]] = {}
    sessions: dict[tuple[str, str], int] = {}
    for row in rows:
        px, sv = row.get("pxname", ""), row.get("svname", "")
        if sv == "BACKEND":
            be = plan.backends.get(px)
            if be is not None:
                apps[be.app] = (
                    _int(row.get("req_tot")),
                    _int(row.get("hrsp_5xx")),
                    float(_int(row.get("ttime"))),
                )
        elif sv != "FRONTEND":
            sessions[(px, sv)] = _int(row.get("scur"))
    return apps, sessions


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0
