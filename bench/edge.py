"""Edge benchmark: one backend direct, through nginx, and through ``myco edge``'s data planes.

``python -m bench.edge [--json] [--duration S] [--connections C] [--repeat N]
[--configs python,python-asyncio,python-aiohttp] [--no-haproxy] [--no-hardening]``

One backend (an nginx ``return 200`` server block when nginx is installed, so the proxies
are the bottleneck; else a small aiohttp app), one load generator (``wrk`` when installed,
else a Python client), one worker per proxy, all measured in one run on this machine:

* every proxy configuration gets its own object (``configs[name]``): the median of
  ``--repeat`` (at least 3) runs at maximum rate (closed loop, C connections), runs
  interleaved (direct, nginx, python, ... then again), its ``ratio`` to nginx's median in
  the same run (and ``ratio_runs``, round by round), and every error kind counted over
  all its runs (wrk's ``Socket errors: connect, read, write, timeout`` and ``Non-2xx or
  3xx responses``; a load generator error is never retried or dropped);
* ``p99_added_ms``: p99 through the proxy minus p99 direct, both paced at half of that
  proxy's own median maximum rate (wrk's ``delay()``), median of ``--repeat`` pairs;
* ``python``: the Python data plane (fast server, uvloop) and its targets;
* ``haproxy``: ``myco edge --data-plane haproxy`` (ratio, p99 added, errors), requests
  failed while its backends are swapped 20 times during 10 s of load, and the time to
  apply a 1000-app route table (:class:`reconciler.edge.haproxy.HaproxyDriver`);
* ``hardening``: with ``--client-header-timeout 5``, how long the edge takes to close N
  slow partial heads and the p99 of a normal client served meanwhile (``bench.slowloris``).

A part whose pieces are missing (HAProxy, the driver, ``bench.slowloris``) says
``"skipped": "<reason>"``. Pinning (``taskset``, 2+ CPUs): each proxy on CPU 0, the load
generator and the backend on CPU 1 (``pinning``); ``quiet`` says whether the proxy had
its own core that way. The machine's load average before and after is reported, and
``checks`` evaluates every target. Every process started is stopped; configuration lives
in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: What the figures must reach (``checks`` in the output says which do).
TARGETS: dict[str, float] = {
    "python.ratio": 0.45,  # >=
    "python.p99_added_ms": 1.0,  # <=
    "haproxy.ratio": 0.9,  # >=
    "haproxy.route_change_failed_requests": 0,  # ==
    "haproxy.apply_1000_apps_s": 2.0,  # <=
    "hardening.slow_heads_closed_s": 5.0 + 1.0,  # <= the head timeout + 1
    "hardening.served_p99_ms_during": 10.0,  # <=
}
_AT_LEAST = frozenset({"python.ratio", "haproxy.ratio"})
_EXACTLY = frozenset({"haproxy.route_change_failed_requests"})
HEAD_TIMEOUT_S = 5.0

#: Proxy configurations: the myco edge's flags (``nginx`` is the reference, not here).
CONFIGS: dict[str, list[str]] = {
    "python": ["--server", "fast", "--loop", "uvloop"],
    "python-asyncio": ["--server", "fast", "--loop", "asyncio"],
    "python-aiohttp": ["--server", "aiohttp", "--loop", "uvloop"],
    "haproxy": ["--data-plane", "haproxy"],
}
ERROR_KINDS = ("connect", "read", "write", "timeout", "status")
_PY_REQUEST_TIMEOUT_S = 10.0  # the Python load generator's deadline per request


# --- wrk's output ----------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int] = field(default_factory=dict)  # by kind (ERROR_KINDS)

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _need(pattern: str, out: str) -> re.Match[str]:
    m = re.search(pattern, out)
    if m is None:
        raise ValueError(f"wrk output without {pattern!r}:\n{out}")
    return m


def parse_wrk(out: str) -> Load:
    """wrk's summary (run with ``--latency``): rate, p50, p99, requests and every error.

    ``Socket errors: connect C, read R, write W, timeout T`` and ``Non-2xx or 3xx
    responses: N`` are printed only when not zero; both are read when present.
    """
    rps = float(_need(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(_need(r"(\d+) requests in ", out).group(1))
    p50 = _ms(_need(r"\n\s+50%\s+(\S+)", out).group(1))
    p99 = _ms(_need(r"\n\s+99%\s+(\S+)", out).group(1))
    errors = dict.fromkeys(ERROR_KINDS, 0)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock is not None:
        for kind, n in zip(("connect", "read", "write", "timeout"), sock.groups(), strict=True):
            errors[kind] = int(n)
    status = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if status is not None:
        errors["status"] = int(status.group(1))
    return Load(rps, p50, p99, requests, errors)


# --- processes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the proxies and the rest (load generator, backend) run on."""

    proxy: str = ""
    rest: str = ""

    @property
    def active(self) -> bool:
        return bool(self.proxy)

    def wrap(self, args: list[str], role: str) -> list[str]:
        cpus = self.proxy if role == "proxy" else self.rest
        return ["taskset", "-c", cpus, *args] if cpus else args


def choose_pinning(cpus: int | None, have_taskset: bool) -> Pinning:
    if not have_taskset or (cpus or 1) < 2:
        return Pinning()
    return Pinning(proxy="0", rest="1" if cpus == 2 else f"1-{(cpus or 2) - 1}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {within}s")


@contextmanager
def _process(args: list[str], port: int, log: Path | None = None) -> Iterator[int]:
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
    try:
        _wait_port(port, proc)
        yield proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if log is not None:
            out.close()  # type: ignore[union-attr]


def _nginx_conf(tmp: Path, body: str) -> Path:
    for d in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
{body}
}}
"""
    )
    return conf


_PY_BACKEND = """
import asyncio, sys
from aiohttp import web
async def hello(request): return web.Response(text="hello from backend\\n")
async def main():
    runner = web.ServerRunner(web.Server(hello, access_log=None)); await runner.setup()
    for port in sys.argv[1:]:
        await web.TCPSite(runner, "127.0.0.1", int(port), reuse_port=True).start()
    await asyncio.Event().wait()
asyncio.run(main())
"""


@contextmanager
def _backend(kind: str, tmp: Path, ports: list[int], pin: Pinning) -> Iterator[None]:
    """The backend, listening on every port in ``ports`` (two: for the route swaps)."""
    if kind == "nginx":
        hello = 'return 200 "hello from backend\\n";'
        body = "\n".join(
            f"  server {{ listen 127.0.0.1:{p}; location / {{ {hello} }} }}" for p in ports
        )
        conf = _nginx_conf(tmp / "backend", body)
        args = ["nginx", "-c", str(conf), "-p", str(tmp / "backend")]
    else:
        args = [sys.executable, "-c", _PY_BACKEND, *map(str, ports)]
    with _process(pin.wrap(args, "rest"), ports[0]):
        yield


# --- load generators -------------------------------------------------------------------


def _wrk(url: str, conns: int, duration: float, delay_ms: float | None, pin: Pinning) -> Load:
    args = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency", url]
    script = None
    if delay_ms is not None:
        fd, script = tempfile.mkstemp(suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(f"function delay() return {delay_ms:.3f} end\n")
        args[1:1] = ["-s", script]
    try:
        done = subprocess.run(pin.wrap(args, "rest"), capture_output=True, text=True, check=True)
    finally:
        if script:
            os.unlink(script)
    return parse_wrk(done.stdout)


async def _py_load_async(url: str, conns: int, duration: float, delay_ms: float | None) -> Load:
    """wrk's stand-in: ``conns`` keep-alive connections, closed loop. Every request is one
    attempt (a dropped kept-alive connection is an error, never silently re-sent), has its
    own deadline, and is finished before the figures are taken; errors by wrk's kinds."""
    import aiohttp

    from reconciler.httpclient import one_attempt_session

    lat: list[float] = []
    errors = dict.fromkeys(ERROR_KINDS, 0)
    end = time.perf_counter() + duration
    timeout = aiohttp.ClientTimeout(total=_PY_REQUEST_TIMEOUT_S)

    async def one(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status >= 400:
                        errors["status"] += 1
            except aiohttp.ClientConnectorError:
                errors["connect"] += 1
            except TimeoutError:
                errors["timeout"] += 1
            except aiohttp.ClientError:
                errors["read"] += 1
            lat.append((time.perf_counter() - t0) * 1000)
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)

    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=conns)
    async with one_attempt_session(connector=connector, timeout=timeout) as s:
        async with asyncio.TaskGroup() as tg:
            for _ in range(conns):
                tg.create_task(one(s))
    span = time.perf_counter() - start
    lat.sort()
    if not lat:
        return Load(0.0, 0.0, 0.0, 0, errors)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return Load(len(lat) / span, lat[len(lat) // 2], p99, len(lat), errors)


def _load(
    url: str, conns: int, duration: float, pin: Pinning, delay_ms: float | None = None
) -> Load:
    if shutil.which("wrk"):
        return _wrk(url, conns, duration, delay_ms, pin)
    return asyncio.run(_py_load_async(url, conns, duration, delay_ms))


def _paced(url: str, conns: int, duration: float, rate: float, pin: Pinning) -> Load:
    """Load at about ``rate`` requests/s: closed-loop connections paced by a delay.

    Each connection makes ``rate / conns`` requests a second, so it waits ``conns / rate``
    minus the time a request takes; a one-second probe measures that time first.
    """
    period_ms = conns * 1000.0 / rate
    probe = _load(url, conns, 1.0, pin, delay_ms=period_ms)
    taken_ms = max(0.0, conns * 1000.0 / max(probe.rps, 1.0) - period_ms)
    return _load(url, conns, duration, pin, delay_ms=max(0.01, period_ms - taken_ms))


# --- the run ---------------------------------------------------------------------------


def _sum_errors(loads: list[Load]) -> dict[str, int]:
    return {k: sum(x.errors.get(k, 0) for x in loads) for k in ERROR_KINDS}


def _median_load(loads: list[Load]) -> Load:
    """The run with the median rate (its own latencies, so the figures belong together)."""
    return sorted(loads, key=lambda x: x.rps)[len(loads) // 2]


def _myco_args(name: str, port: int, be_port: int, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "reconciler", "edge", "--listen", f"127.0.0.1:{port}",
        "--route", f"bench=127.0.0.1:{be_port}", *CONFIGS[name], *extra,
    ]  # fmt: skip


def _skip_reason_haproxy() -> str | None:
    if importlib.util.find_spec("reconciler.edge.haproxy") is None:
        return "the HAProxy data plane (reconciler.edge.haproxy) is not in this tree"
    if shutil.which("haproxy") is None:
        return "haproxy is not installed (apt-get install haproxy)"
    return None


def _skip_reason_hardening() -> str | None:
    if importlib.util.find_spec("bench.slowloris") is None:
        return "bench.slowloris is not in this tree"
    return None


def run(
    duration: float = 5.0,
    connections: int = 64,
    repeat: int = 3,
    configs: tuple[str, ...] = ("python",),
    backend: str = "auto",
    haproxy: bool = True,
    hardening: bool = True,
    pin: bool = True,
    slow_heads: int = 500,
) -> dict[str, Any]:
    """Measure every configuration ``repeat`` times, interleaved; see the module docstring."""
    have_nginx = shutil.which("nginx") is not None
    if backend == "auto":
        backend = "nginx" if have_nginx else "python"
    pinning = choose_pinning(os.cpu_count(), shutil.which("taskset") is not None and pin)
    configs = tuple(c for c in dict.fromkeys(configs) if c in CONFIGS and c != "haproxy")
    hx_skip = _skip_reason_haproxy() if haproxy else "not asked for (--no-haproxy)"
    if hx_skip is None:
        configs = (*configs, "haproxy")
    result: dict[str, Any] = {
        "workers": 1,
        "connections": connections,
        "duration_s": duration,
        "repeat": repeat,
        "backend": backend,
        "load_generator": "wrk" if shutil.which("wrk") else "python-aiohttp",
        "cpus": os.cpu_count(),
        "pinning": (
            {"proxy_cpus": pinning.proxy, "load_and_backend_cpus": pinning.rest, "tool": "taskset"}
            if pinning.active
            else None
        ),
        "quiet": pinning.active,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="myco-bench-edge-") as tmp_s, ExitStack() as stack:
        tmp = Path(tmp_s)
        be_ports = [_free_port(), _free_port()]
        be_port = be_ports[0]
        stack.enter_context(_backend(backend, tmp, be_ports, pinning))
        urls = {"direct": f"http://127.0.0.1:{be_port}/hello"}
        if have_nginx:
            nx_port = _free_port()
            body = f"""  upstream be {{ server 127.0.0.1:{be_port}; keepalive 256; }}
  server {{ listen 127.0.0.1:{nx_port};
    location /bench/ {{ proxy_pass http://be/; proxy_http_version 1.1;
                        proxy_set_header Connection ""; }} }}"""
            conf = _nginx_conf(tmp / "proxy", body)
            args = ["nginx", "-c", str(conf), "-p", str(tmp / "proxy")]
            stack.enter_context(_process(pinning.wrap(args, "proxy"), nx_port))
            urls["nginx"] = f"http://127.0.0.1:{nx_port}/bench/hello"
        for name in configs:
            port = _free_port()
            extra = ["--state", str(tmp / "hx-state")] if name == "haproxy" else []
            args = pinning.wrap(_myco_args(name, port, be_port, extra), "proxy")
            stack.enter_context(_process(args, port, tmp / f"{name}.log"))
            urls[name] = f"http://127.0.0.1:{port}/bench/hello"
        for url in urls.values():
            _load(url, connections, 1.0, pinning)  # warm-up: pools filled, code paths hot
        runs: dict[str, list[Load]] = {name: [] for name in urls}
        for _ in range(repeat):
            for name, url in urls.items():
                runs[name].append(_load(url, connections, duration, pinning))
        medians = {name: _median_load(loads) for name, loads in runs.items()}
        out: dict[str, dict[str, Any]] = {}
        for name, loads in runs.items():
            top = medians[name]
            d: dict[str, Any] = {
                "rps": round(top.rps, 1),
                "p50_ms": round(top.p50_ms, 3),
                "p99_ms": round(top.p99_ms, 3),
                "rps_runs": [round(x.rps, 1) for x in loads],
                "requests": sum(x.requests for x in loads),
                "errors": sum(x.error_total for x in loads),
                "errors_by_kind": _sum_errors(loads),
            }
            if name not in ("direct", "nginx") and "nginx" in runs:
                d["ratio"] = round(top.rps / medians["nginx"].rps, 3)
                d["ratio_runs"] = [
                    round(m.rps / n.rps, 3) for m, n in zip(loads, runs["nginx"], strict=True)
                ]
            out[name] = d
        paced_conns = max(4, min(connections, 32))
        for name in configs:
            half = medians[name].rps / 2
            pairs = []
            for _ in range(repeat):  # interleaved pairs: proxy, then direct, at one rate
                via = _paced(urls[name], paced_conns, duration, half, pinning)
                direct = _paced(urls["direct"], paced_conns, duration, half, pinning)
                pairs.append((via, direct))
            added = [v.p99_ms - d.p99_ms for v, d in pairs]
            mid = sorted(range(len(pairs)), key=lambda i: added[i])[len(pairs) // 2]
            via, direct = pairs[mid]
            out[name].update(
                half_rate_rps=round(via.rps, 1),
                p99_ms_at_half=round(via.p99_ms, 3),
                p99_ms_direct_at_half=round(direct.p99_ms, 3),
                p99_added_ms=round(added[mid], 3),
                p99_added_ms_runs=[round(x, 3) for x in added],
                errors_at_half=sum(v.error_total for v, _ in pairs),
            )
        result["configs"] = out
        result["python"] = _summary(out.get("python"), "python")
        result["haproxy"] = (
            _summary(out.get("haproxy"), "haproxy") if hx_skip is None else {"skipped": hx_skip}
        )
        if hx_skip is None:
            result["haproxy"].update(_haproxy_extras(tmp, be_ports, duration, connections, pinning))
        hd_skip = _skip_reason_hardening() if hardening else "not asked for (--no-hardening)"
        result["hardening"] = (
            {"skipped": hd_skip}
            if hd_skip is not None
            else _hardening(tmp, be_port, pinning, slow_heads)
        )
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = TARGETS
    result["checks"] = checks(result)
    return result


def _summary(d: dict[str, Any] | None, name: str) -> dict[str, Any]:
    if d is None:
        return {"skipped": f"{name} was not measured"}
    return {
        "ratio": d.get("ratio"),
        "p99_added_ms": d.get("p99_added_ms"),
        "errors": d["errors"] + d.get("errors_at_half", 0),
        "rps": d["rps"],
    }


def checks(result: dict[str, Any]) -> dict[str, bool | None]:
    """Each target: met (True), missed (False), or not measured (None)."""
    out: dict[str, bool | None] = {}
    for key, target in TARGETS.items():
        part, _, figure = key.partition(".")
        value = (result.get(part) or {}).get(figure)
        if not isinstance(value, int | float) or isinstance(value, bool):
            out[key] = None
        elif key in _AT_LEAST:
            out[key] = value >= target
        elif key in _EXACTLY:
            out[key] = value == target
        else:
            out[key] = value <= target
    return out


# --- the HAProxy data plane's extras ---------------------------------------------------


def _haproxy_extras(
    tmp: Path, be_ports: list[int], duration: float, conns: int, pin: Pinning
) -> dict[str, Any]:
    """Route swaps under load and a 1000-app table, on an in-process HaproxyDriver."""
    old = os.sched_getaffinity(0) if pin.active else None
    try:
        if pin.active:  # the driver and the HAProxy processes it starts: the proxy's CPU
            os.sched_setaffinity(0, {int(c) for c in pin.proxy.split(",")})
        (tmp / "hx-driver").mkdir(parents=True, exist_ok=True)
        return asyncio.run(_haproxy_async(tmp / "hx-driver", be_ports, conns, pin))
    except Exception as exc:  # reported, not hidden: the figures stay None
        return {
            "route_change_failed_requests": None,
            "apply_1000_apps_s": None,
            "error": f"{type(exc).__name__}: {exc}",
        }
    finally:
        if old is not None:
            os.sched_setaffinity(0, old)


async def _haproxy_async(
    state: Path, be_ports: list[int], conns: int, pin: Pinning
) -> dict[str, Any]:
    from reconciler.edge.haproxy import HaproxyDriver
    from reconciler.edge.haproxy_plan import Settings
    from reconciler.records import Backend, RouteRecord

    port = _free_port()
    settings = Settings(
        listen_host="127.0.0.1",
        listen_port=port,
        socket_path=str(state / "admin.sock"),
        map_path=str(state / "apps.map"),
    )

    def table(i: int) -> list[RouteRecord]:
        p = be_ports[i % len(be_ports)]
        return [
            RouteRecord(
                app="bench",
                prefix="/bench",
                backends=(Backend(instance_id=f"be-{p}", endpoint=f"127.0.0.1:{p}"),),
            )
        ]

    url = f"http://127.0.0.1:{port}/bench/hello"
    swaps, load_s = 20, 10.0
    async with HaproxyDriver.running(settings, state) as driver:
        await driver.apply(table(0))
        await asyncio.to_thread(_wait_listening, port)
        load_task = asyncio.create_task(_load_async(url, min(conns, 32), load_s, pin))
        await asyncio.sleep(0.25)
        for i in range(1, swaps + 1):
            await driver.apply(table(i))
            await asyncio.sleep((load_s - 1.0) / swaps)
        load = await load_task
        apps = [
            RouteRecord(
                app=f"app{i}",
                prefix=f"/app{i}",
                backends=(Backend(instance_id=f"i{i}", endpoint=f"127.0.0.1:{be_ports[i % 2]}"),),
            )
            for i in range(1000)
        ]
        t0 = time.perf_counter()
        await driver.apply(apps)
        took = time.perf_counter() - t0
        served = await asyncio.to_thread(_get_status, f"http://127.0.0.1:{port}/app999/hello")
    return {
        "route_change_failed_requests": load.error_total,
        "route_change_errors_by_kind": load.errors,
        "route_change_requests": load.requests,
        "route_changes": swaps,
        "route_change_load_s": load_s,
        "apply_1000_apps_s": round(took, 3),
        "after_1000_apps_status": served,
    }


async def _load_async(url: str, conns: int, duration: float, pin: Pinning) -> Load:
    if not shutil.which("wrk"):
        return await _py_load_async(url, conns, duration, None)
    args = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency", url]
    proc = await asyncio.create_subprocess_exec(
        *pin.wrap(args, "rest"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode(errors='replace')}")
    return parse_wrk(out.decode())


def _wait_listening(port: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _get_status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# --- hardening -------------------------------------------------------------------------


def _hardening(tmp: Path, be_port: int, pin: Pinning, n: int) -> dict[str, Any]:
    """N slow partial heads against a Python edge with a 5 s head timeout, and a normal
    client's p99 meanwhile (``bench.slowloris``)."""
    from bench import slowloris

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * n + 512
    if soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the edge inherits it
    port = _free_port()
    extra = ["--client-header-timeout", str(HEAD_TIMEOUT_S)]
    args = pin.wrap(_myco_args("python", port, be_port, extra), "proxy")
    url = f"http://127.0.0.1:{port}/bench/hello"
    try:
        with _process(args, port, tmp / "hardening.log"):
            slow, served = asyncio.run(
                slowloris.served_p99_during(
                    url, slowloris.slow_heads("127.0.0.1", port, n, within=HEAD_TIMEOUT_S * 4)
                )
            )
    except Exception as exc:  # reported, not hidden
        return {
            "slow_heads_closed_s": None,
            "served_p99_ms_during": None,
            "error": f"{type(exc).__name__}: {exc}",
        }
    return {
        "head_timeout_s": HEAD_TIMEOUT_S,
        "slow_heads": n,
        "slow_heads_opened": slow.opened,
        "slow_heads_closed": slow.closed,
        "slow_heads_answered_408": slow.answered_408,
        "slow_heads_timed_out": slow.timed_out,
        "slow_heads_closed_s": slow.closed_s,
        "served_requests": served.requests,
        "served_failures": served.failures,
        "served_failures_by_kind": served.failures_by_kind,
        "served_p50_ms_during": served.p50_ms,
        "served_p99_ms_during": served.p99_ms,
    }


# --- output ----------------------------------------------------------------------------


def _table(r: dict[str, Any]) -> str:
    pin = r.get("pinning")
    lines = [
        f"edge benchmark: 1 worker, {r['connections']} connections, {r['duration_s']}s each "
        f"(median of {r['repeat']}, interleaved), backend {r['backend']}, load "
        f"{r['load_generator']}, {r['cpus']} CPUs, "
        + (
            f"proxy on CPU {pin['proxy_cpus']}, load and backend on {pin['load_and_backend_cpus']}"
            if pin
            else "not pinned"
        ),
        f"{'':<16}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'ratio':>8}"
        f"{'p99 added at half':>20}",
    ]
    for name, d in r.get("configs", {}).items():
        added = f"{d['p99_added_ms']} ms @ {d['half_rate_rps']}" if "p99_added_ms" in d else "-"
        lines.append(
            f"{name:<16}{d['rps']:>10}{d['p50_ms']:>9}{d['p99_ms']:>9}{d['errors']:>8}"
            f"{d.get('ratio', '-')!s:>8}{added:>20}"
        )
    for part in ("haproxy", "hardening"):
        d = r.get(part) or {}
        extra = {k: v for k, v in d.items() if k not in ("ratio", "p99_added_ms", "rps")}
        lines.append(f"{part}: {json.dumps(extra)}")
    lines.append(
        f"load average before/after: {r['load_average_before']} / {r.get('load_average_after')}"
    )
    lines.append("checks: " + json.dumps(r.get("checks")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs (at least 3)")
    ap.add_argument(
        "--configs",
        default="python",
        help="Python data plane configurations: python, python-asyncio, python-aiohttp",
    )
    ap.add_argument("--backend", choices=("auto", "nginx", "python"), default="auto")
    ap.add_argument("--no-haproxy", action="store_true", help="skip the HAProxy data plane")
    ap.add_argument("--no-hardening", action="store_true", help="skip the slow-client part")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--slow-heads", type=int, default=500, help="slow connections (hardening)")
    args = ap.parse_args(argv)
    configs = tuple(x for x in args.configs.split(",") if x)
    unknown = [c for c in configs if c not in CONFIGS or c == "haproxy"]
    if unknown:
        ap.error(f"unknown configuration(s): {', '.join(unknown)}")
    result = run(
        duration=args.duration,
        connections=args.connections,
        repeat=max(3, args.repeat),
        configs=configs,
        backend=args.backend,
        haproxy=not args.no_haproxy,
        hardening=not args.no_hardening,
        pin=not args.no_pin,
        slow_heads=args.slow_heads,
    )
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
