"""``myco edge --data-plane haproxy``: the pure planner (tables) and a real HAProxy driven
through its runtime API (skipped, with the reason, when haproxy is not installed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from reconciler.edge.haproxy import HAPROXY_MISSING, HaproxyDriver, HaproxyStats, RuntimeAPI
from reconciler.edge.haproxy_plan import (
    AppBackend,
    Plan,
    Server,
    ServerState,
    Settings,
    name_for,
    needs_reload,
    plan_routes,
    reap_commands,
    render_config,
    render_map,
    runtime_commands,
)
from reconciler.errors import EdgeError
from reconciler.httpclient import one_attempt_session
from reconciler.records import Backend as BackendRecord
from reconciler.records import RouteRecord
from tests.edge.conftest import EdgeProcess, StartBackends, route
from tests.helpers import async_wait_for, free_port

HAPROXY = shutil.which("haproxy")
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)"
)


def rec(app: str, *endpoints: str, draining: tuple[str, ...] = (), epoch: int = 0) -> RouteRecord:
    backends = []
    for i, e in enumerate(endpoints):
        ep, _, w = e.partition("*")
        backends.append(BackendRecord(f"{app}-{i}", ep, int(w or 1)))
    return RouteRecord(app, "/" + app, epoch, tuple(backends), draining)


# -- the pure part ---------------------------------------------------------------------------


def test_plan_follows_the_route_table_rules() -> None:
    plan = plan_routes(
        [
            rec(
                "billing", "10.0.0.1:80*3", "10.0.0.2:80", "10.0.0.3:80", draining=("10.0.0.3:80",)
            ),
            rec("old", "10.0.0.9:80", epoch=1),
            RouteRecord("new", "/old", 2, (BackendRecord("n", "10.0.0.8:80"),)),
            rec("zero", "10.0.0.4:80*0"),
            rec("six", "[fd00::5]:9000"),
            RouteRecord("deep", "/a/b", 0, ()),
        ]
    )
    got = {b.segment: [(s.addr, s.weight) for s in b.servers] for b in plan.backends.values()}
    assert got == {
        "billing": [("10.0.0.1:80", 3), ("10.0.0.2:80", 1)],
        "old": [("10.0.0.8:80", 1)],  # the higher epoch wins
        "zero": [],
        "six": [("[fd00::5]:9000", 1)],
    }
    assert plan.backends["app_old"].app == "new"
    assert plan.problems == ("app deep: prefix '/a/b' is not one path segment",)


@pytest.mark.parametrize(
    ("endpoint", "resolved", "addr", "problem"),
    [
        ("127.0.0.1:9001", {}, "127.0.0.1:9001", None),
        ("localhost:9001", {"localhost": "127.0.0.1"}, "127.0.0.1:9001", None),
        ("nosuch.invalid:9001", {}, None, "'nosuch.invalid' is not an IP address"),
        ("bad:0", {}, None, "port out of range"),
        ("no-port", {}, None, "no-port"),
        ("10.0.0.1:80*900", {}, "10.0.0.1:80", "weight 900 capped at 256"),
    ],
)
def test_plan_addresses(
    endpoint: str, resolved: dict[str, str], addr: str | None, problem: str | None
) -> None:
    plan = plan_routes([rec("a", endpoint, "10.9.9.9:1")], resolved)
    addrs = [s.addr for s in plan.backends["app_a"].servers]
    assert addrs == ([addr] if addr else []) + ["10.9.9.9:1"]  # the others are applied
    if problem is None:
        assert plan.problems == ()
    else:
        assert len(plan.problems) == 1
        assert problem in plan.problems[0]


def test_names_are_safe_and_distinct() -> None:
    assert name_for("s_", "10.0.0.1:80") == "s_10.0.0.1:80"
    a, b = name_for("s_", "[fd00::1]:80"), name_for("s_", "(fd00::1):80")
    assert a != b
    assert re.fullmatch(r"[A-Za-z0-9_.:-]+", a)


def _plan(*servers: tuple[str, int]) -> Plan:
    ss = tuple(Server(name_for("s_", a), a, w, a) for a, w in servers)
    return Plan({"app_a": AppBackend("a", "a", "app_a", ss)})


def _cur(*servers: tuple[str, int, str]) -> dict[tuple[str, str], ServerState]:
    return {("app_a", name_for("s_", a)): ServerState(a, w, st) for a, w, st in servers}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "desired", "commands"),
    [
        ((), (), []),
        (
            (),
            (("10.0.0.1:80", 2),),
            [
                "add server app_a/s_10.0.0.1:80 10.0.0.1:80 weight 2",
                "set server app_a/s_10.0.0.1:80 state ready",
            ],
        ),
        ((("10.0.0.1:80", 2, "ready"),), (("10.0.0.1:80", 2),), []),
        (
            (("10.0.0.1:80", 2, "ready"),),
            (("10.0.0.1:80", 5),),
            ["set server app_a/s_10.0.0.1:80 weight 5"],
        ),
        (  # a swap: the new one is added before the old one drains
            (("10.0.0.1:80", 1, "ready"),),
            (("10.0.0.2:80", 1),),
            [
                "add server app_a/s_10.0.0.2:80 10.0.0.2:80 weight 1",
                "set server app_a/s_10.0.0.2:80 state ready",
                "set server app_a/s_10.0.0.1:80 state drain",
            ],
        ),
        (  # back before it was deleted: made ready again, re-weighted
            (("10.0.0.1:80", 1, "drain"), ("10.0.0.2:80", 1, "maint")),
            (("10.0.0.1:80", 1), ("10.0.0.2:80", 4)),
            [
                "set server app_a/s_10.0.0.1:80 state ready",
                "set server app_a/s_10.0.0.2:80 weight 4",
                "set server app_a/s_10.0.0.2:80 state ready",
            ],
        ),
        ((("10.0.0.1:80", 1, "drain"),), (), []),  # already draining: the reaper's now
    ],
)
def test_runtime_commands(
    current: tuple[tuple[str, int, str], ...],
    desired: tuple[tuple[str, int], ...],
    commands: list[str],
) -> None:
    cur = _cur(*current)
    plan = _plan(*desired)
    out = runtime_commands(cur, plan)
    assert [c.text for c in out] == commands
    for c in out:  # each command's effect, applied in order, reaches the plan
        if c.after is None:
            cur.pop(c.key)
        else:
            cur[c.key] = c.after
    live = {k: v for k, v in cur.items() if v.state == "ready"}
    assert live == {
        ("app_a", s.name): ServerState(s.addr, s.weight, "ready")
        for s in plan.backends["app_a"].servers
    }


@pytest.mark.parametrize(
    ("state", "sessions", "commands"),
    [
        (
            "drain",
            0,
            ["set server app_a/s_10.0.0.1:80 state maint", "del server app_a/s_10.0.0.1:80"],
        ),
        ("maint", 0, ["del server app_a/s_10.0.0.1:80"]),  # a delete that failed before
        ("drain", 3, []),  # sessions left: not yet
        ("drain", None, []),  # unknown: kept
    ],
)
def test_reap_commands(state: str, sessions: int | None, commands: list[str]) -> None:
    cur = _cur(("10.0.0.1:80", 1, state), ("10.0.0.2:80", 1, "ready"))
    counts = {} if sessions is None else {("app_a", "s_10.0.0.1:80"): sessions}
    out = reap_commands(cur, _plan(("10.0.0.2:80", 1)), counts)
    assert [c.text for c in out] == commands


def test_a_reload_only_when_apps_change() -> None:
    one = plan_routes([rec("a", "10.0.0.1:80")])
    assert not needs_reload(one.backends, plan_routes([rec("a", "10.0.0.2:80")]))
    assert needs_reload(one.backends, plan_routes([rec("a"), rec("b")]))
    assert needs_reload(one.backends, plan_routes([]))


def test_stats_survive_a_reload() -> None:
    plan = plan_routes([rec("a", "10.0.0.1:80")])

    def rows(req: int, err: int) -> list[dict[str, str]]:
        return [
            {
                "pxname": "app_a",
                "svname": "BACKEND",
                "req_tot": str(req),
                "hrsp_5xx": str(err),
                "ttime": "3",
            }
        ]

    s = HaproxyStats(0.0)
    assert s.roll(1, plan, rows(10, 1), 10.0)["a"] == {
        "requests": 10,
        "errors_5xx": 1,
        "rps": 1.0,
        "error_rate": 0.1,
        "p50_ms": 3.0,
        "p99_ms": 0.0,
        "total_requests": 10,
    }
    assert s.roll(1, plan, rows(10, 1), 20.0) == {}
    assert s.roll(2, plan, rows(4, 0), 30.0)["a"]["total_requests"] == 14  # new process


@needs_haproxy
def test_rendered_config_is_valid_haproxy(tmp_path: Path) -> None:
    plan = plan_routes([rec("billing", "10.0.0.1:80*3", "[::1]:81"), rec("it's%", "10.0.0.2:80")])
    settings = Settings("127.0.0.1", 8080, str(tmp_path / "a.sock"), str(tmp_path / "apps.map"))
    (tmp_path / "apps.map").write_text(render_map(plan))
    (tmp_path / "h.cfg").write_text(render_config(settings, plan))
    assert HAPROXY is not None
    out = subprocess.run(
        [HAPROXY, "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_haproxy_missing_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EdgeError) as err:
        HaproxyDriver(Settings("127.0.0.1", 1, "", ""), tmp_path, binary="no-such-haproxy-here")
    assert str(err.value) == HAPROXY_MISSING
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "edge",
            "--data-plane",
            "haproxy",
            "--route",
            "a=127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == f"myco: error: {HAPROXY_MISSING}"


# -- a real HAProxy ---------------------------------------------------------------------------


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # short: a unix socket path must fit in 108 bytes
    with tempfile.TemporaryDirectory(prefix="myco-hx-") as tmp:
        yield Path(tmp)


@pytest.fixture
async def driver(state_dir: Path) -> AsyncIterator[HaproxyDriver]:
    settings = Settings("127.0.0.1", free_port(), "", "", stop_grace_s=2.0, retry_after_s=1)
    async with HaproxyDriver.running(settings, state_dir) as d:
        task = asyncio.create_task(d.supervise(tick_s=0.05))
        try:
            yield d
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert d.proc is None
    assert not d._retiring


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with one_attempt_session(connector=aiohttp.TCPConnector(limit=64)) as s:
        yield s


def url(d: HaproxyDriver, path: str) -> str:
    return f"http://127.0.0.1:{d.base.listen_port}{path}"


async def get_json(
    http: aiohttp.ClientSession, u: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with http.get(u, headers=headers) as resp:
        return resp.status, json.loads(await resp.read()), resp.headers


@needs_haproxy
async def test_routes_strip_the_prefix_and_set_the_headers(
    driver: HaproxyDriver, backends: StartBackends, http: aiohttp.ClientSession
) -> None:
    a, b = await backends("a", "b")
    await driver.apply([route("billing", (a, 1)), route("shop", (b, 1))])
    status, body, headers = await get_json(
        http, url(driver, "/billing/x/a%20y?q=1&r=2"), headers={"X-Forwarded-For": "10.1.1.1"}
    )
    assert status == 200
    assert body["backend"] == "a"
    assert body["path"] == "/x/a%20y"
    assert body["query"] == "q=1&r=2"
    sent = CIMultiDict(body["headers"])  # HAProxy sends header names in lower case
    assert sent["X-Forwarded-For"] == "10.1.1.1, 127.0.0.1"
    assert sent["X-Forwarded-Proto"] == "http"
    assert sent["X-Forwarded-Host"] == f"127.0.0.1:{driver.base.listen_port}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sent["X-Mycelium-Edge"])
    rid = sent["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert headers["X-Request-ID"] == rid
    for path, rest in (("/shop", "/"), ("/shop/", "/"), ("/shop//x", "//x")):
        status, body, _ = await get_json(
            http, url(driver, path), headers={"X-Request-ID": "mine-1"}
        )
        assert (status, body["backend"], body["path"]) == (200, "b", rest)
        assert CIMultiDict(body["headers"])["X-Request-ID"] == "mine-1"
    status, body, _ = await get_json(
        http, url(driver, "/shop/"), headers={"X-Request-ID": "bad id"}
    )
    assert re.fullmatch(r"[0-9a-f]{32}", CIMultiDict(body["headers"])["X-Request-ID"])


@needs_haproxy
async def test_unknown_app_and_no_backend_answer_the_edge_json(
    driver: HaproxyDriver, backends: StartBackends, http: aiohttp.ClientSession
) -> None:
    (a,) = await backends("a")
    await driver.apply(
        [route("billing", (a, 1)), route("empty"), route("drained", (a, 1), draining=(a,))]
    )
    for path in ("/nope/x", "/"):
        status, body, _ = await get_json(http, url(driver, path))
        assert (status, body) == (404, {"error": "unknown app", "status": 404, "path": path})
    for app in ("empty", "drained"):
        status, body, headers = await get_json(http, url(driver, f"/{app}/x"))
        assert (status, body) == (503, {"error": "no backend available", "status": 503, "app": app})
        assert headers["Retry-After"] == "1"
    assert a.hits == []


@needs_haproxy
async def test_weights_are_respected(
    driver: HaproxyDriver, backends: StartBackends, http: aiohttp.ClientSession
) -> None:
    a, b = await backends("a", "b")
    await driver.apply([route("w", (a, 1), (b, 1))])
    await driver.apply([route("w", (a, 3), (b, 1))])  # re-weighted at run time
    for _ in range(200):
        async with http.get(url(driver, "/w/")) as resp:
            assert resp.status == 200
    assert 130 <= len(a.hits) <= 170
    assert len(a.hits) + len(b.hits) == 200


@needs_haproxy
async def test_a_draining_backend_gets_no_new_requests_and_is_deleted(
    driver: HaproxyDriver, backends: StartBackends, http: aiohttp.ClientSession
) -> None:
    a, b = await backends("a", "b")
    await driver.apply([route("d", (a, 1), (b, 1))])
    gen = driver.generation
    b.gate.clear()
    slow = asyncio.ensure_future(http.get(url(driver, "/d/gate")))
    await async_wait_for(lambda: a.waiting + b.waiting == 1, what="a request at the gate")
    busy = a if a.waiting else b
    other = b if busy is a else a
    await driver.apply([route("d", (a, 1), (b, 1), draining=(busy,))])
    before = len(busy.hits)
    for _ in range(20):
        async with http.get(url(driver, "/d/x")) as resp:
            assert (await resp.json())["backend"] == other.name
    assert len(busy.hits) == before
    await driver.apply([route("d", (other, 1))])  # gone from the route: deleted once idle
    key = next(k for k, v in driver.current.items() if v.addr == busy.endpoint)
    assert driver.current[key].state == "drain"  # its request is still in flight
    busy.gate.set()
    async with await slow as resp:
        assert resp.status == 200  # the request in flight finished
    await async_wait_for(lambda: key not in driver.current, what="the drained server deleted")
    assert driver.generation == gen  # no reload for any of it


async def _load(
    http: aiohttp.ClientSession, u: str, stop: asyncio.Event, clients: int = 8
) -> tuple[int, list[str]]:
    ok = 0
    failures: list[str] = []

    async def one() -> None:
        nonlocal ok
        while not stop.is_set():
            try:
                async with http.get(u) as resp:
                    await resp.read()
                    if resp.status == 200:
                        ok += 1
                    else:
                        failures.append(f"status {resp.status} {(await resp.read())[:80]!r}")
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))

    await asyncio.gather(*(one() for _ in range(clients)))
    return ok, failures


@needs_haproxy
async def test_backend_swaps_under_load_fail_no_request(
    driver: HaproxyDriver, backends: StartBackends, http: aiohttp.ClientSession
) -> None:
    a, b, c, d = await backends("a", "b", "c", "d")
    sets = [((a, 1), (b, 2)), ((c, 1), (d, 1))]
    await driver.apply([route("s", *sets[0])])
    gen = driver.generation
    stop = asyncio.Event()
    load = asyncio.ensure_future(_load(http, url(driver, "/s/x"), stop))
    for i in range(20):
        await asyncio.sleep(0.1)  # let load run on each set
        await driver.apply([route("s", *sets[(i + 1) % 2])])
    await asyncio.sleep(0.1)
    stop.set()
    ok, failures = await load
    assert failures == []
    assert ok > 100
    assert all(x.hits for x in (a, b, c, d))
    assert driver.generation == gen  # all through the runtime API
    await async_wait_for(lambda: len(driver.current) == 2, what="drained servers deleted")


@needs_haproxy
async def test_apps_come_and_go_with_a_seamless_reload(
    driver: HaproxyDriver, backends: StartBackends, http: aiohttp.ClientSession
) -> None:
    a, b = await backends("a", "b")
    await driver.apply([route("one", (a, 1))])
    gen = driver.generation
    stop = asyncio.Event()
    load = asyncio.ensure_future(_load(http, url(driver, "/one/x"), stop, clients=4))
    for i in range(6):
        await driver.apply(
            [route("one", (a, 1)), route("two", (b, 1))] if i % 2 == 0 else [route("one", (a, 1))]
        )
        if i % 2 == 0:
            status, body, _ = await get_json(http, url(driver, "/two/"))
            assert (status, body["backend"]) == (200, "b")
    stop.set()
    ok, failures = await load
    assert driver.generation == gen + 6
    assert ok > 20
    assert failures == []


@needs_haproxy
async def test_a_refused_route_is_logged_and_the_others_applied(
    driver: HaproxyDriver,
    backends: StartBackends,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (a,) = await backends("a")
    bad = RouteRecord(
        "x", "/x", 0, (BackendRecord("i", "nosuch.invalid:80"), BackendRecord("j", a.endpoint))
    )
    await driver.apply([bad, rec("y", "bad:0"), route("z", (a, 1))])
    assert "nosuch.invalid" in caplog.text
    assert "bad:0" in caplog.text
    for app in ("x", "z"):
        status, body, _ = await get_json(http, url(driver, f"/{app}/"))
        assert (status, body["backend"]) == (200, "a")
    status, _, _ = await get_json(http, url(driver, "/y/"))
    assert status == 503
    # a command HAProxy refuses is logged too, and the rest of the batch still applies
    assert driver.api is not None
    answers = await driver.api.run(["set server app_z/nope weight 1", "show info"])
    assert answers[0].strip() == "No such server."
    assert "Pid:" in answers[1]


@needs_haproxy
async def test_haproxy_is_restarted_and_the_table_reapplied(
    driver: HaproxyDriver, backends: StartBackends, http: aiohttp.ClientSession
) -> None:
    a, b = await backends("a", "b")
    await driver.apply([route("r", (a, 1))])
    await driver.apply([route("r", (b, 1))])  # a runtime change, then a crash
    for kill in ("process", "socket"):
        old = driver.pid
        assert old is not None
        assert driver.api is not None
        if kill == "process":
            os.kill(old, signal.SIGKILL)
        else:
            os.unlink(driver.api.path)
        await async_wait_for(
            lambda old=old: driver.pid not in (None, old),  # type: ignore[misc]
            within=10,
            what="a restart",
        )
        status, body, _ = await get_json(http, url(driver, "/r/"))
        assert (status, body["backend"]) == (200, "b")
    assert driver.restarts == 2


@needs_haproxy
async def test_a_thousand_apps_of_ten_backends(driver: HaproxyDriver) -> None:
    def table(shift: int) -> list[RouteRecord]:
        return [
            rec(f"app{i}", *(f"10.{i // 250}.{i % 250}.{j + shift}:8080" for j in range(10)))
            for i in range(1000)
        ]

    t0 = time.perf_counter()
    await driver.apply(table(0))  # 1,000 new apps: a new config and a reload
    t1 = time.perf_counter()
    await driver.apply(table(1))  # one backend swapped in every app: 3,000 commands
    t2 = time.perf_counter()
    print(f"1000 apps x 10 backends: reload {t1 - t0:.2f}s, runtime swap {t2 - t1:.2f}s")
    assert len(driver.current) == 11_000
    assert sum(v.state == "ready" for v in driver.current.values()) == 10_000
    assert t1 - t0 < 10
    assert t2 - t1 < 10


@needs_haproxy
async def test_myco_edge_with_haproxy_process(
    backends: StartBackends,
    http: aiohttp.ClientSession,
    edge_process: Callable[..., EdgeProcess],
    state_dir: Path,
) -> None:
    (a,) = await backends("a")
    e = edge_process(
        "--data-plane",
        "haproxy",
        "--route",
        f"app={a.endpoint}",
        "--state",
        str(state_dir),
        "--metrics-listen",
        f"127.0.0.1:{free_port()}",
    )
    await e.ready(http)  # HAProxy answers; the edge serves /metrics once all is set up
    metrics_url = f"http://{e.args[e.args.index('--metrics-listen') + 1]}/metrics"

    async def metrics() -> str | None:
        try:
            async with http.get(metrics_url) as resp:
                return await resp.text()
        except aiohttp.ClientConnectionError:
            return None

    await async_wait_for(metrics, within=20, what="the edge's /metrics")
    status, body, _ = await get_json(http, f"{e.url}/app/hi")
    assert (status, body["path"]) == (200, "/hi")
    api = RuntimeAPI(str(state_dir / "admin.sock"))
    info = (await api.run(["show info"]))[0]
    pid = int(re.search(r"Pid: (\d+)", info).group(1))  # type: ignore[union-attr]
    assert 'myco_edge_haproxy_responses_total{app="app",class="2xx"} 1.0' in (await metrics() or "")
    code, err = e.stop()
    assert code == 0, err
    assert "haproxy data plane pid" in err
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopping the edge stopped HAProxy
