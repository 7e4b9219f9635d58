"""The one start/stop path of every daemon (reconciler.aio.run_until_signalled).

Real signals to a real child process: the first stops gracefully, a second forces; a
background task that dies stops the service with a clear error.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reconciler.aio import Service, run_until_signalled
from reconciler.errors import ServiceFailed

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from reconciler.aio import run_until_signalled

    async def main(svc):
        svc.on_force(lambda: print("force callback", flush=True))
        async def ticker():
            while True:
                await asyncio.sleep(3600)
        svc.spawn("ticker", ticker())
        print("ready", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            print("cleaning up", flush=True)
            try:
                await asyncio.sleep(float(sys.argv[1]))  # a long grace period
                print("clean stop", flush=True)
            except asyncio.CancelledError:
                print("grace cut short", flush=True)
                raise

    sys.exit(run_until_signalled(main, name="child"))
    """
)


def _start(grace: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(grace)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the child says it is ready
    assert line.strip() == "ready", line
    return proc


def _wait_for_line(proc: subprocess.Popen[str], wanted: str, deadline_s: float = 20.0) -> None:
    assert proc.stdout is not None
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        if line.strip() == wanted:
            return
    raise AssertionError(f"child never printed {wanted!r}")


def test_first_signal_stops_gracefully() -> None:
    proc = _start(grace=0.2)
    try:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "cleaning up" in out
    assert "clean stop" in out
    assert "force callback" not in out


def test_sigterm_is_the_same_as_ctrl_c() -> None:
    proc = _start(grace=0.2)
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "clean stop" in out


def test_second_signal_forces_the_stop() -> None:
    proc = _start(grace=300.0)  # graceful stop would take five minutes
    try:
        proc.send_signal(signal.SIGINT)
        _wait_for_line(proc, "cleaning up")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert "force callback" in out
    assert "grace cut short" in out
    assert "clean stop" not in out


def test_a_background_task_that_fails_stops_the_service() -> None:
    async def main(svc: Service) -> None:
        async def fabric() -> None:
            await asyncio.sleep(0.01)
            raise OSError("socket closed")

        svc.spawn("the fabric", fabric())
        await asyncio.Event().wait()

    with pytest.raises(ServiceFailed, match=r"^the fabric failed: socket closed$"):
        run_until_signalled(main, name="test")


def test_a_background_task_that_ends_stops_the_service() -> None:
    async def main(svc: Service) -> None:
        async def route_source() -> None:
            return None

        svc.spawn("the route source", route_source())
        await asyncio.Event().wait()

    with pytest.raises(ServiceFailed, match="the route source stopped unexpectedly"):
        run_until_signalled(main, name="test")


def test_main_returning_is_a_clean_stop_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGINT)

    async def main(svc: Service) -> None:
        assert not svc.stopping.is_set()

    assert run_until_signalled(main, name="test") == 0
    assert signal.getsignal(signal.SIGINT) == before


def test_an_error_in_main_reaches_the_caller_unwrapped() -> None:
    async def main(svc: Service) -> None:
        raise ServiceFailed("bad config")

    with pytest.raises(ServiceFailed, match="^bad config$"):
        run_until_signalled(main, name="test")


def test_a_child_process_exits_when_its_parent_kills_it_on_force() -> None:
    # on_force callbacks run synchronously from the loop: a callback that kills a child's
    # process group leaves nothing behind even when the graceful stop is cut short.
    script = textwrap.dedent(
        """
        import asyncio, os, signal, subprocess, sys
        from reconciler.aio import run_until_signalled

        async def main(svc):
            child = subprocess.Popen(["sleep", "300"], start_new_session=True)
            print(child.pid, flush=True)
            svc.on_force(lambda: os.killpg(child.pid, signal.SIGKILL))
            try:
                await asyncio.Event().wait()
            finally:
                print("stopping", flush=True)
                await asyncio.sleep(300)

        sys.exit(run_until_signalled(main, name="parent"))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    child_pid = int(proc.stdout.readline())
    try:
        proc.send_signal(signal.SIGINT)
        # Two signals sent back to back may merge into one: wait for the first to land.
        assert proc.stdout.readline().strip() == "stopping"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
        end = time.monotonic() + 10
        while time.monotonic() < end and _alive(child_pid):
            time.sleep(0.05)
        assert not _alive(child_pid)
    finally:
        proc.kill()
        if _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
