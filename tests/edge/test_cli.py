"""``myco edge`` on the command line: usage errors, workers sharing one port, stopping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import psutil
import pytest

from reconciler.cli import main
from reconciler.httpclient import one_attempt_session
from tests.edge.conftest import EdgeProcess, StartBackends


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["edge"], "--join ADDR"),
        (["edge", "--route", "a=h:1", "--join", "h:2"], "exclude each other"),
        (["edge", "--route", "a=h:1", "--workers", "0"], "--workers"),
        (["edge", "--route", "a", "--listen", ":0"], "bad --route"),
        (["edge", "--route", "a=h:1", "--listen", "nope"], "bad address"),
        (["edge", "--join", "h:1", "--gossip-key", "/no/such/file"], "no such file"),
        (["edge", "--route", "a=h:1", "--loop", "tokio"], "invalid choice"),
        (["edge", "--route", "a=h:1", "--server", "nginx"], "invalid choice"),
    ],
)
def test_usage_errors_are_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert needle in err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("myco: error: ")


def test_listen_on_a_busy_port_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["edge", "--route", "a=127.0.0.1:1", "--listen", f"127.0.0.1:{port}"])
    assert code == 1
    assert "cannot listen" in capsys.readouterr().err


async def test_workers_share_the_port_and_stop_on_sigterm(
    backends: StartBackends,
    client: aiohttp.ClientSession,
    edge_process: Callable[..., EdgeProcess],
) -> None:
    (a,) = await backends("a")
    edge = edge_process("--route", f"app={a.endpoint}", "--workers", "2", "--loop", "asyncio")
    await edge.ready(client)
    assert edge.proc is not None
    parent = psutil.Process(edge.proc.pid)
    # spawn-context workers (multiprocessing may add its resource tracker: not a worker)
    workers = [c for c in parent.children() if "resource_tracker" not in " ".join(c.cmdline())]
    assert len(workers) == 2

    async def one() -> int:
        async with one_attempt_session() as fresh:  # a new connection each time
            async with fresh.get(f"{edge.url}/app/x") as resp:
                return resp.status

    assert set(await asyncio.gather(*(one() for _ in range(20)))) == {200}
    pids = {w.pid for w in workers}
    code, err = edge.stop()
    assert code == 0, err
    assert not any(psutil.pid_exists(p) for p in pids)  # stopped and reaped by the supervisor
