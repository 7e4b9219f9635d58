"""Edge benchmark: the same backend direct, through nginx, and through ``myco edge``.

``python -m bench.edge [--json] [--workers N] [--duration S] [--connections C]``

One backend (an nginx ``return 200`` server block when nginx is installed, so the proxies
are the bottleneck; else a small aiohttp app), one load generator (``wrk`` when
installed, else a Python client), the same number of worker processes for each proxy,
all measured in one run on this machine:

* maximum rate (closed loop, C connections): ``rps_*``, ``p50_ms_*``, ``p99_ms_*``;
* ``p99_added_ms``: p99 through myco minus p99 direct, both at half of myco's maximum
  rate (wrk paced with a per-connection ``delay()``).

The myco edge is measured with every front end (``--servers fast,aiohttp``) on every event
loop asked for (``--loops uvloop,asyncio``); the flat fields are for the first pair,
``by_server[server][loop]`` holds each (``by_loop``: the first server's). The machine's
load average before and after the run is reported with the figures. Every process
started is stopped, the nginx configuration lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

TARGETS = {"ratio": 0.33, "p99_added_ms": 2.0}


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], within: float = 20.0) -> None:
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
def _process(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_port(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _nginx_conf(tmp: Path, workers: int, body: str) -> Path:
    for d in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""worker_processes {workers};
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


@contextmanager
def _nginx(tmp: Path, workers: int, body: str, port: int) -> Iterator[None]:
    tmp.mkdir(parents=True, exist_ok=True)
    conf = _nginx_conf(tmp, workers, body)
    with _process(["nginx", "-c", str(conf), "-p", str(tmp)], port):
        yield


_PY_BACKEND = """
import asyncio, sys
from aiohttp import web
async def hello(request): return web.Response(text="hello from backend\\n")
async def main():
    runner = web.ServerRunner(web.Server(hello, access_log=None)); await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1]), reuse_port=True).start()
    await asyncio.Event().wait()
asyncio.run(main())
"""


@contextmanager
def _backend(kind: str, tmp: Path, port: int) -> Iterator[None]:
    if kind == "nginx":
        hello = 'return 200 "hello from backend\\n";'
        body = f"  server {{ listen 127.0.0.1:{port}; location / {{ {hello} }} }}"
        with _nginx(tmp / "backend", 1, body, port):
            yield
    else:
        with _process([sys.executable, "-c", _PY_BACKEND, str(port)], port):
            yield


# --- load generators -------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _wrk(url: str, conns: int, duration: float, delay_ms: float | None) -> Load:
    args = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency", url]
    script = None
    if delay_ms is not None:
        fd, script = tempfile.mkstemp(suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(f"function delay() return {delay_ms:.3f} end\n")
        args[1:1] = ["-s", script]
    try:
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    finally:
        if script:
            os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    for pat in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?(\d+)"):
        m = re.search(pat, out)
        if m:
            errors += int(m.group(1))
    return Load(rps, p50, p99, errors)


async def _py_load_async(url: str, conns: int, duration: float, delay_ms: float | None) -> Load:
    import aiohttp

    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + duration

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status >= 400:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            lat.append((time.perf_counter() - t0) * 1000)
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)

    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as s:
        async with asyncio.TaskGroup() as tg:
            for _ in range(conns):
                tg.create_task(one(s))
    span = time.perf_counter() - start
    lat.sort()
    if not lat:
        return Load(0.0, 0.0, 0.0, errors)
    return Load(
        len(lat) / span, lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], errors
    )


def _load(url: str, conns: int, duration: float, delay_ms: float | None = None) -> Load:
    if shutil.which("wrk"):
        return _wrk(url, conns, duration, delay_ms)
    return asyncio.run(_py_load_async(url, conns, duration, delay_ms))


def _paced(url: str, conns: int, duration: float, rate: float) -> Load:
    """Load at about ``rate`` requests/s, closed-loop connections paced by a delay.

    Each connection makes ``rate / conns`` requests a second, so it waits ``conns / rate``
    minus the time a request takes; a one-second probe measures that time first.
    """
    period_ms = conns * 1000.0 / rate
    probe = _load(url, conns, 1.0, delay_ms=period_ms)
    taken_ms = max(0.0, conns * 1000.0 / max(probe.rps, 1.0) - period_ms)
    return _load(url, conns, duration, delay_ms=max(0.01, period_ms - taken_ms))


# --- the run ---------------------------------------------------------------------------


def run(
    workers: int = 1,
    duration: float = 5.0,
    connections: int = 64,
    loops: tuple[str, ...] = ("uvloop", "asyncio"),
    backend: str = "auto",
    repeat: int = 3,
    servers: tuple[str, ...] = ("fast", "aiohttp"),
) -> dict[str, object]:
    """Measure every target ``repeat`` times, interleaved, and keep the median of each.

    Interleaving (direct, nginx, myco, direct, nginx, myco, ...) with all the servers up
    at once means a neighbour's burst of CPU use hits every target alike.
    """
    have_nginx = shutil.which("nginx") is not None
    if backend == "auto":
        backend = "nginx" if have_nginx else "python"
    loops = tuple(
        lp for lp in loops if lp != "uvloop" or importlib.util.find_spec("uvloop") is not None
    )
    result: dict[str, object] = {
        "workers": workers,
        "connections": connections,
        "duration_s": duration,
        "repeat": repeat,
        "backend": backend,
        "load_generator": "wrk" if shutil.which("wrk") else "python-aiohttp",
        "cpus": os.cpu_count(),
        "targets": TARGETS,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    variants = [(srv, lp) for srv in servers for lp in loops]
    with tempfile.TemporaryDirectory(prefix="myco-bench-edge-") as tmp_s, ExitStack() as stack:
        tmp = Path(tmp_s)
        be_port = _free_port()
        stack.enter_context(_backend(backend, tmp, be_port))
        urls = {"direct": f"http://127.0.0.1:{be_port}/hello"}
        if have_nginx:
            nx_port = _free_port()
            body = f"""  upstream be {{ server 127.0.0.1:{be_port}; keepalive 256; }}
  server {{ listen 127.0.0.1:{nx_port};
    location /bench/ {{ proxy_pass http://be/; proxy_http_version 1.1;
                        proxy_set_header Connection ""; }} }}"""
            stack.enter_context(_nginx(tmp / "proxy", workers, body, nx_port))
            urls["nginx"] = f"http://127.0.0.1:{nx_port}/bench/hello"
        for srv, loop in variants:
            port = _free_port()
            args = [
                sys.executable, "-m", "reconciler", "edge", "--listen", f"127.0.0.1:{port}",
                "--route", f"bench=127.0.0.1:{be_port}", "--workers", str(workers),
                "--loop", loop, "--server", srv,
            ]  # fmt: skip
            stack.enter_context(_process(args, port))
            urls[f"myco_{srv}_{loop}"] = f"http://127.0.0.1:{port}/bench/hello"
        if workers > 1:
            time.sleep(1.0)  # let every worker bind before measuring
        for url in urls.values():
            _load(url, connections, 1.0)  # warm-up: pools filled, code paths hot
        runs: dict[str, list[Load]] = {name: [] for name in urls}
        for _ in range(repeat):
            for name, url in urls.items():
                runs[name].append(_load(url, connections, duration))
        medians = {name: _median(loads) for name, loads in runs.items()}
        _put(result, "direct", medians["direct"])
        if "nginx" in medians:
            _put(result, "nginx", medians["nginx"])
        by_server: dict[str, dict[str, dict[str, float]]] = {srv: {} for srv in servers}
        for srv, loop in variants:
            name = f"myco_{srv}_{loop}"
            top = medians[name]
            half = top.rps / 2
            paced_conns = max(4, min(connections, 32))
            myco_half = _paced(urls[name], paced_conns, duration, half)
            direct_half = _paced(urls["direct"], paced_conns, duration, half)
            by_server[srv][loop] = {
                "rps_myco": round(top.rps, 1),
                "p50_ms_myco": round(top.p50_ms, 3),
                "p99_ms_myco": round(top.p99_ms, 3),
                "errors_myco": sum(x.errors for x in runs[name]),
                "rps_myco_runs": [round(x.rps, 1) for x in runs[name]],  # type: ignore[dict-item]
                "half_rate_rps": round(myco_half.rps, 1),
                "p99_ms_myco_at_half": round(myco_half.p99_ms, 3),
                "p99_ms_direct_at_half": round(direct_half.p99_ms, 3),
                "p99_added_ms": round(myco_half.p99_ms - direct_half.p99_ms, 3),
            }
        result["rps_direct_runs"] = [round(x.rps, 1) for x in runs["direct"]]
        if "nginx" in runs:
            result["rps_nginx_runs"] = [round(x.rps, 1) for x in runs["nginx"]]
        result["by_server"] = by_server
        result["by_loop"] = by_server[variants[0][0]] if variants else {}
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if variants:
        first = by_server[variants[0][0]][variants[0][1]]
        result["server"], result["loop"] = variants[0]
        for k in (
            "rps_myco", "p50_ms_myco", "p99_ms_myco", "errors_myco", "p99_added_ms",
            "half_rate_rps", "p99_ms_direct_at_half", "p99_ms_myco_at_half",
        ):  # fmt: skip
            result[k] = first[k]
        if "rps_nginx" in result:
            nginx_rps = float(result["rps_nginx"])  # type: ignore[arg-type]
            result["ratio"] = round(float(first["rps_myco"]) / nginx_rps, 3)
            for per_loop in by_server.values():
                for d in per_loop.values():
                    d["ratio"] = round(d["rps_myco"] / nginx_rps, 3)
    return result


def _median(loads: list[Load]) -> Load:
    """The run with the median rate (its own latencies, so the figures belong together)."""
    return sorted(loads, key=lambda x: x.rps)[len(loads) // 2]


def _put(result: dict[str, object], name: str, load: Load) -> None:
    result[f"rps_{name}"] = round(load.rps, 1)
    result[f"p50_ms_{name}"] = round(load.p50_ms, 3)
    result[f"p99_ms_{name}"] = round(load.p99_ms, 3)
    result[f"errors_{name}"] = load.errors


def _table(r: dict[str, object]) -> str:
    lines = [
        f"edge benchmark: {r['workers']} worker(s), {r['connections']} connections, "
        f"{r['duration_s']}s each (median of {r['repeat']}), backend {r['backend']}, "
        f"load {r['load_generator']}, {r['cpus']} CPUs",
        f"{'':<18}{'rps':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}",
    ]
    rows = [("direct", "direct"), ("nginx", "nginx")]
    for name, key in rows:
        if f"rps_{key}" in r:
            lines.append(
                f"{name:<18}{r[f'rps_{key}']:>10}{r[f'p50_ms_{key}']:>10}"
                f"{r[f'p99_ms_{key}']:>10}{r[f'errors_{key}']:>8}"
            )
    by_server = r.get("by_server") or {}
    assert isinstance(by_server, dict)
    for srv, per_loop in by_server.items():
        for loop, d in per_loop.items():
            lines.append(
                f"{'myco ' + srv + '/' + loop:<18}{d['rps_myco']:>10}{d['p50_ms_myco']:>10}"
                f"{d['p99_ms_myco']:>10}{d['errors_myco']:>8}"
                f"   ratio {d.get('ratio', '-')}  p99 added at {d['half_rate_rps']} rps: "
                f"{d['p99_added_ms']} ms"
            )
    lines.append(f"load average before/after: {r['load_average']} / {r.get('load_average_after')}")
    lines.append(f"targets: ratio >= {TARGETS['ratio']}, p99_added_ms <= {TARGETS['p99_added_ms']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--workers", type=int, default=1, help="worker processes of each proxy")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--loops", default="uvloop,asyncio", help="event loops to run myco on")
    ap.add_argument(
        "--servers", default="fast,aiohttp", help="myco front ends to measure (fast, aiohttp)"
    )
    ap.add_argument("--backend", choices=("auto", "nginx", "python"), default="auto")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per target (median)")
    args = ap.parse_args(argv)
    result = run(
        workers=args.workers,
        duration=args.duration,
        connections=args.connections,
        loops=tuple(x for x in args.loops.split(",") if x),
        backend=args.backend,
        repeat=max(1, args.repeat),
        servers=tuple(x for x in args.servers.split(",") if x),
    )
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
