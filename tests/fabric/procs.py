"""Real member processes (``python -m reconciler.fabric.member``) for the fabric's tests."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class MemberProc:
    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        bind: str = "127.0.0.1:0",
        join: Sequence[str] = (),
        key_file: Path | None = None,
        publish: Sequence[str] = (),
        state_dir: Path | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.status_file = workdir / f"{name}.status.json"
        self.status_file.unlink(missing_ok=True)
        argv = [
            *prefix, sys.executable, "-m", "reconciler.fabric.member", "--name", name,
            "--bind", bind, "--status-file", str(self.status_file), "--profile", "local",
        ]  # fmt: skip
        for addr in join:
            argv += ["--join", addr]
        for item in publish:
            argv += ["--publish", item]
        if key_file is not None:
            argv += ["--key-file", str(key_file)]
        if state_dir is not None:
            argv += ["--state-dir", str(state_dir)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT
        )
        self.addr = self._read_addr(timeout=20.0)

    def _read_addr(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    if line.startswith("ADDR "):
                        return line.split()[1]
        self.kill()
        raise AssertionError(f"member {self.name} did not report its address: {buf!r}")

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.status_file.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def states(self) -> dict[str, str]:
        return {n: v[0] for n, v in self.status().get("members", {}).items()}

    def view(self) -> dict[str, list[Any]]:
        v: dict[str, list[Any]] = self.status().get("view", {})
        return v

    def kill(self) -> None:
        """kill -9."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
