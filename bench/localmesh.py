"""A real local mesh for end-to-end tests and benchmarks: `myco up` as a subprocess.

Everything is real: the reconciler watching a garden directory (a Git work tree), N agents,
the edge, the example workload as the app. :meth:`LocalMesh.stop` stops it with SIGINT, as
Ctrl-C does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    """A port to hand to a process started later: below the ephemeral range, so no
    outgoing connection can take it meanwhile (reconciler.ports)."""
    from reconciler.ports import free_port as pick

    return pick(host)


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def billing_manifest(version: str = "1.0.0", instances: int = 2, warmup_s: float = 0.5) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: myco/v1
        kind: Spore
        metadata:
          name: billing
        spec:
          version: "{version}"
          source: ../workloads/billing
          command: ["{sys.executable}", "server.py"]
          nutrients: {{cpu_milli: 100, memory_mb: 128}}
          health: {{path: /health, interval_s: 0.2, timeout_s: 1.0, grace_s: 10.0}}
          restart: {{backoff_initial_s: 0.1, backoff_max_s: 1.0, stop_grace_s: 2.0}}
          instances: {instances}
          rollout: {{strategy: blue-green, warmup_s: {warmup_s}}}
        """
    )


def frontend_manifest(edge: str, version: str = "1.0.0", instances: int = 1) -> str:
    """The frontend app, calling billing through the edge at ``edge`` (HOST:PORT)."""
    return textwrap.dedent(
        f"""\
        apiVersion: myco/v1
        kind: Spore
        metadata:
          name: frontend
        spec:
          version: "{version}"
          source: ../workloads/frontend
          command: ["{sys.executable}", "server.py"]
          env: {{BILLING_URL: "http://{edge}/billing", BILLING_TIMEOUT_S: "2"}}
          nutrients: {{cpu_milli: 100, memory_mb: 64}}
          health: {{path: /health, interval_s: 0.2, timeout_s: 1.0, grace_s: 10.0}}
          restart: {{backoff_initial_s: 0.1, backoff_max_s: 1.0, stop_grace_s: 2.0}}
          instances: {instances}
          depends_on: [billing]
        """
    )


@dataclass
class LocalMesh:
    root: Path
    state: Path
    garden: Path
    edge: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.edge}"

    def record(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.state / "mesh.json").read_text())
        return data

    def write_app(self, text: str, name: str = "billing.yaml") -> None:
        tmp = self.garden / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(self.garden / name)

    def processes(self) -> list[psutil.Process]:
        """Every live process started by this mesh: `myco` children and their instances."""
        found = []
        for p in psutil.process_iter(["cmdline", "cwd", "environ"]):
            try:
                cmd = " ".join(p.info["cmdline"] or ())
                cwd = p.info["cwd"] or ""
                env = p.info["environ"] or {}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if p.pid == os.getpid():
                continue
            if str(self.state) in cmd or cwd.startswith(str(self.state)):
                found.append(p)
            elif env.get("MYCO_INSTANCE") and str(self.state) in env.get("PWD", ""):
                found.append(p)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_mesh(
    tmp_path: Path,
    nodes: int = 3,
    manifest: str | None = None,
    garden: dict[str, str] | None = None,
    workloads: tuple[str, ...] = ("billing",),
    extra_args: tuple[str, ...] = (),
    edge: str | None = None,
) -> LocalMesh:
    """A mesh on a fresh garden: ``garden`` maps file names to text (default: billing).

    ``edge`` is its HOST:PORT (default: a free loopback port), for a garden that names it.
    """
    root = tmp_path / "repo"
    (root / "garden").mkdir(parents=True)
    for name in workloads:
        shutil.copytree(ROOT / "workloads" / name, root / "workloads" / name)
    for name, text in (garden or {"billing.yaml": manifest or billing_manifest()}).items():
        (root / "garden" / name).write_text(text)
    # A garden lives in a Git work tree: its root bounds where `source` may point.
    subprocess.run(["git", "init", "-q", str(root)], check=True, timeout=30)
    state = tmp_path / "state"
    edge = edge or f"127.0.0.1:{free_port()}"
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "reconciler", "up", str(root / "garden"),
                "--nodes", str(nodes), "--edge", edge, "--state", str(state), *extra_args,
            ],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    mesh = LocalMesh(root, state, root / "garden", edge, proc, log)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"myco up exited {proc.returncode}:\n{log.read_text()}")
        return (state / "mesh.json").exists()

    wait_for(up, timeout=60, what="the mesh to start")
    return mesh


def get_json(url: str, timeout: float = 2.0) -> tuple[int, dict[str, object]]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}


def wait_serving(
    mesh: LocalMesh,
    instances: int,
    version: str = "1.0.0",
    timeout: float = 60,
    app: str = "billing",
) -> set[str]:
    """Wait until the edge answers from ``instances`` distinct instances of ``version``."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = get_json(f"{mesh.url}/{app}/hello")
        if status == 200 and body.get("version") == version:
            seen.add(str(body.get("instance")))
            if len(seen) >= instances:
                return seen
        time.sleep(0.05)
    raise AssertionError(
        f"edge did not answer from {instances} instances of {version} (saw {seen}):\n"
        + mesh.log.read_text()[-3000:]
    )
