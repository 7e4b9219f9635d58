"""Fixtures: real loopback backends and a real edge worker in the test's event loop."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack
from typing import cast

import aiohttp
import pytest

from reconciler.edge.config import SERVER_KINDS, EdgeConfig, EjectionPolicy, ServerKind
from reconciler.edge.server import RunningEdge, running_edge
from reconciler.httpclient import one_attempt_session
from reconciler.records import Backend as BackendRecord
from reconciler.records import RouteRecord
from tests.edge.backends import Backend
from tests.helpers import async_wait_for, free_port

StartBackends = Callable[..., Awaitable[list[Backend]]]


@pytest.fixture
async def backends() -> AsyncIterator[StartBackends]:
    started: list[Backend] = []

    async def start(*names: str) -> list[Backend]:
        out = [await Backend(n).start() for n in names]
        started.extend(out)
        return out

    yield start
    for b in started:
        await b.stop()


def route(app: str, *pairs: tuple[Backend, int], draining: tuple[Backend, ...] = ()) -> RouteRecord:
    return RouteRecord(
        app=app,
        prefix="/" + app,
        backends=tuple(BackendRecord(b.name, b.endpoint, w) for b, w in pairs),
        draining=tuple(b.endpoint for b in draining),
    )


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async edge test runs on asyncio's loop and, when installed, on uvloop's."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest.fixture(params=list(SERVER_KINDS))
def server_kind(request: pytest.FixtureRequest) -> ServerKind:
    """The client-facing server: the httptools protocol ("fast") and aiohttp's."""
    kind = cast(ServerKind, request.param)
    if kind == "fast" and importlib.util.find_spec("httptools") is None:
        pytest.skip("httptools is not installed: the fast server is off")
    return kind


@pytest.fixture(params=[True, False], ids=["lean-get", "aiohttp-only"])
def edge_config(request: pytest.FixtureRequest, server_kind: ServerKind) -> EdgeConfig:
    """Each server, with the lean GET upstream path (httptools) and with aiohttp's client only."""
    if request.param and importlib.util.find_spec("httptools") is None:
        pytest.skip("httptools is not installed: the lean GET path is off")
    return EdgeConfig(
        port=0,
        fast_path=bool(request.param),
        server=server_kind,
        ejection=EjectionPolicy(consecutive_5xx=3, base_s=0.3, max_s=1.0),
        stats_interval_s=3600,
        shutdown_grace_s=2.0,
    )


@pytest.fixture
async def edge(edge_config: EdgeConfig) -> AsyncIterator[RunningEdge]:
    async with running_edge(edge_config) as e:
        yield e


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            one_attempt_session(connector=aiohttp.TCPConnector(limit=200))
        )
        yield session


class EdgeProcess:
    """``myco edge`` as a real child process; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.args = ["--listen", f"127.0.0.1:{self.port}", *args]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EdgeProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "edge", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        return self

    async def ready(self, client: aiohttp.ClientSession) -> None:
        async def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"edge exited with {self.proc.returncode}")
            try:
                async with client.get(f"{self.url}/-/ready") as resp:
                    return resp.status == 404
            except aiohttp.ClientConnectionError:
                return False

        await async_wait_for(answers, within=20, what="the edge process to answer")

    def stop(self) -> tuple[int, str]:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            _, err = self.proc.communicate()
        return self.proc.returncode, err.decode(errors="replace")


@pytest.fixture
def edge_process() -> Iterator[Callable[..., EdgeProcess]]:
    made: list[EdgeProcess] = []

    def make(*args: str) -> EdgeProcess:
        e = EdgeProcess(*args).start()
        made.append(e)
        return e

    yield make
    for e in made:
        if e.proc is not None and e.proc.poll() is None:
            try:
                os.killpg(e.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            e.proc.communicate()
