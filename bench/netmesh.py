"""A mesh on several hosts: network namespaces on a bridge, each running real `myco` daemons.

Reusable by tests (``tests/hosts/``) and benchmarks (``bench/hosts.py``), as
:mod:`bench.localmesh` is for the one-host mesh. Needs root and ``ip netns``
(:func:`skip_reason` says why not); nothing is done in the root namespace's network.

Topology: a *hub* namespace holds a bridge with the address ``<subnet>.254``; every host is
a namespace with a veth into that bridge and one address, ``<subnet>.<i>``. The harness
itself talks to the hosts from the hub (or to a host's loopback from inside that host), by
sockets made in those namespaces (:meth:`NetMesh.socket`): the test process stays in the
root namespace, and only its helper threads enter others.

The commands are not written here: they are read from docs/deploy.md (:class:`Guide`), the
example values substituted with this harness's (:meth:`NetMesh.argv`), so the guide is run
as written and cannot drift from what works.

Clean-up is guaranteed by :meth:`NetMesh.close` (every process of every host killed, the
namespaces deleted with their veths, bridge and nftables tables, the agents' cgroups
removed, the temporary directory deleted) and :func:`sweep` removes what a crashed earlier
run left (every name carries the creating process's pid).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from socket import socket as Socket  # the method NetMesh.socket hides the module's name
from typing import Any, Literal

from bench.localmesh import billing_manifest  # the test garden's one app, short timers

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "deploy.md"

#: Every namespace, veth and cgroup this harness makes is named ``<PREFIX><pid>-...``.
PREFIX = "mh"
NFT_TABLE = "myco_harness"
CLONE_NEWNET = 0x40000000
Role = Literal["agent", "edge", "reconciler"]
SIX_HOSTS: tuple[Role, ...] = ("agent", "agent", "agent", "edge", "reconciler", "reconciler")


# --- the guide -------------------------------------------------------------------------


class GuideError(AssertionError):
    """docs/deploy.md no longer has what the harness runs (a unit, a placeholder)."""


@dataclass(frozen=True)
class Guide:
    """The commands of docs/deploy.md: the ``myco init`` line, the ``myco cert token`` line
    (a join token per agent and edge host), one ``ExecStart=`` per unit (``agent``,
    ``edge``, ``reconciler``), and the ``myco status`` check line."""

    init: str
    units: dict[str, str]
    status: str
    token: str
    operator: str = ""  # the `myco cert issue --role operator` line (people's certificates)

    #: example values of the guide, each replaced by the harness (see NetMesh.substitutions)
    SEEDS = ("10.0.0.11", "10.0.0.12")
    RECONCILERS = ("10.0.0.21", "10.0.0.22")
    NEW_HOST = "web-3"  # the join token line's host name
    JOIN_TOKEN = "/etc/myco/join.token"
    GIT_URL = "https://git.example.com/platform/garden.git"
    BINARY = "/opt/myco/bin/myco"
    IDENTITY = "/etc/myco/identity"
    STATE = "/var/lib/myco"

    @classmethod
    def load(cls, path: Path = GUIDE) -> Guide:
        text = path.read_text(encoding="utf-8")
        blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
        init = status = token = operator = ""
        units: dict[str, str] = {}
        for lang, body in blocks:
            joined = re.sub(r"\\\n\s*", " ", body)  # continuation lines
            if lang == "bash":
                for line in joined.splitlines():
                    if line.startswith("myco init "):
                        init = line.strip()
                    elif line.startswith("myco status "):
                        status = line.strip()
                    elif line.startswith("myco cert token "):
                        token = line.strip()
                    elif line.startswith("myco cert issue ") and "--role operator" in line:
                        operator = line.strip()
            elif lang == "ini":
                m = re.search(r"^# /etc/systemd/system/myco-(\w+)\.service$", body, flags=re.M)
                execs = re.findall(r"^ExecStart=(.*)$", joined, flags=re.M)
                if m and len(execs) == 1:
                    units[m.group(1)] = execs[0].strip()
        missing = [u for u in ("agent", "edge", "reconciler") if u not in units]
        lines = {
            "myco init": init,
            "myco status": status,
            "myco cert token": token,
            "myco cert issue --role operator": operator,
        }
        absent = [name for name, line in lines.items() if not line] + missing
        if absent:
            raise GuideError(
                f"{path}: expected a `myco init`, a `myco cert token` and a `myco status` line "
                f"and an ExecStart= in units myco-agent/edge/reconciler.service; missing: "
                f"{', '.join(absent)}"
            )
        guide = cls(init, units, status, token, operator)
        everything = " ".join([init, status, token, *units.values()])
        for placeholder in (
            *cls.SEEDS, *cls.RECONCILERS, cls.GIT_URL, cls.BINARY, cls.IDENTITY, cls.STATE,
            cls.NEW_HOST, cls.JOIN_TOKEN, "%H",
        ):  # fmt: skip
            if placeholder not in everything:
                raise GuideError(f"{path}: the example value {placeholder!r} is gone")
        return guide

    def flag(self, unit: str, name: str) -> str:
        """The value of ``name`` in ``unit``'s command line (e.g. the edge's ``--listen``)."""
        words = shlex.split(self.units[unit])
        if name not in words:
            raise GuideError(f"docs/deploy.md: the {unit} unit has no {name}")
        return words[words.index(name) + 1]

    def port(self, unit: str, name: str) -> int:
        return int(self.flag(unit, name).rsplit(":", 1)[1])


# --- namespaces ------------------------------------------------------------------------


def run(*argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def skip_reason() -> str | None:
    """Why multi-host tests cannot run here, or None."""
    for tool in ("ip", "nft", "git"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        run("ip", "netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        err = getattr(exc, "stderr", "") or str(exc)
        return f"`ip netns add` is not available here: {err.strip()}"
    try:
        nft = run("ip", "netns", "exec", probe, "nft", "list", "tables", check=False)
        if nft.returncode != 0:
            return f"nftables does not work in a namespace here: {nft.stderr.strip()}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(ns: str) -> None:
    """Move the calling thread (only) into namespace ``ns``."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_pids(ns: str) -> list[int]:
    out = run("ip", "netns", "pids", ns, check=False)
    me = os.getpid()
    return [int(p) for p in out.stdout.split() if p.isdigit() and int(p) != me]


def kill_netns_processes(ns: str, timeout: float = 15.0) -> int:
    """SIGKILL every process in ``ns`` until none is left (new ones included); how many."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = netns_pids(ns)
        if not pids:
            return len(killed)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        if time.monotonic() > deadline:
            raise AssertionError(f"processes still alive in {ns} after {timeout}s: {pids}")
        time.sleep(0.02)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cgroup_bases() -> list[Path]:
    """The directories of this process's cgroups, in every mounted hierarchy (v1 and v2)."""
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                own[c.removeprefix("name=")] = path
    bases: list[Path] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3:
                continue
            root, point, fstype, opts = fields[3], fields[4], rfields[0], rfields[2]
            if fstype == "cgroup2":
                keys = [""]
            elif fstype == "cgroup":
                keys = [o.removeprefix("name=") for o in opts.split(",")]
            else:
                continue
            key = next((k for k in keys if k in own), None)
            if key is None:
                continue
            path = own[key]
            if root != "/" and (path == root or path.startswith(root + "/")):
                path = path[len(root) :]
            base = Path(point) / path.lstrip("/")
            if base.is_dir() and base not in bases:
                bases.append(base)
    return bases


def _remove_cgroup_tree(d: Path) -> None:
    """Kill what is left in a cgroup tree and remove it, deepest first."""
    for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _kill_cgroup(sub)
        with contextlib.suppress(OSError):
            sub.rmdir()
    _kill_cgroup(d)
    with contextlib.suppress(OSError):
        d.rmdir()


def _kill_cgroup(d: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (d / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if not (d / "cgroup.procs").read_text().strip():
                return
        except OSError:
            return
        time.sleep(0.02)


_CGROUP_NAME = re.compile(rf"^myco-(?:agent-)?{PREFIX}(\d+)-")
_NS_NAME = re.compile(rf"^{PREFIX}(\d+)-")


def sweep(only_pid: int | None = None) -> list[str]:
    """Remove namespaces and agent cgroups of this harness whose creating process is gone
    (or, with ``only_pid``, those of that process); returns what was removed."""

    def ours(m: re.Match[str] | None) -> bool:
        if m is None:
            return False
        pid = int(m.group(1))
        return pid == only_pid if only_pid is not None else not _pid_alive(pid)

    removed: list[str] = []
    listing = run("ip", "netns", "list", check=False).stdout if shutil.which("ip") else ""
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    for ns in names:
        if ours(_NS_NAME.match(ns)):
            with contextlib.suppress(AssertionError):
                kill_netns_processes(ns)
            run("ip", "netns", "del", ns, check=False)
            removed.append(f"netns {ns}")
    for base in _cgroup_bases():
        with contextlib.suppress(OSError):
            for d in base.iterdir():
                if d.is_dir() and ours(_CGROUP_NAME.match(d.name)):
                    _remove_cgroup_tree(d)
                    removed.append(f"cgroup {d}")
    return removed


# --- the mesh --------------------------------------------------------------------------


@dataclass
class Host:
    name: str  # also its namespace, its node name (%H) and the agents' cgroup suffix
    short: str  # h1, h2...
    role: Role
    addr: str
    veth: str  # its end, inside its namespace
    root: Path  # its files (state under var-lib-myco/)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.root / f"{self.role}.log"

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass(frozen=True)
class InstanceProcess:
    """A process of an instance, as /proc shows it (:meth:`NetMesh.instance_processes`)."""

    host: str  # the host's short name
    pid: int
    app: str
    instance_id: str


def clock_ahead(offset_s: float) -> list[str]:
    """A command prefix running a reconciler with its wall clock ``offset_s`` seconds off,
    for :meth:`NetMesh.start`'s ``prefix`` (the reconciler's test-only
    ``$MYCO_TEST_WALL_OFFSET_S``: libfaketime slowed the Python daemons down so much that
    their fabric membership flapped, which is not the fault under test)."""
    return ["env", f"MYCO_TEST_WALL_OFFSET_S={offset_s:g}"]


def git(cwd: Path, *args: str) -> str:
    ident = ["-c", "user.name=harness", "-c", "user.email=harness@localhost"]
    return subprocess.run(
        ["git", *ident, *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60
    ).stdout


class NetMesh:
    """N hosts in namespaces running the guide's daemons; see the module docstring.

    ``with NetMesh(roles) as mesh: mesh.start(); ...`` -- or call :meth:`close` in a
    ``finally``. ``workdir`` defaults to a fresh temporary directory (deleted on close).
    """

    def __init__(
        self,
        roles: Sequence[Role] = SIX_HOSTS,
        *,
        workdir: Path | None = None,
        subnet: str = "10.77.1",
        poll_interval: float = 1.0,
        profile: str = "local",
        instances: int = 2,
        warmup_s: float = 0.5,
        guide: Guide | None = None,
        verbose: bool = False,
    ) -> None:
        if roles.count("agent") < 2:
            raise ValueError("the guide's two seeds are agent hosts: need two agents or more")
        self.guide = guide or Guide.load()
        self.tag = f"{PREFIX}{os.getpid()}"
        self.subnet = subnet
        self.net = ipaddress.ip_network(f"{subnet}.0/24")
        self.hub = f"{self.tag}-hub"
        self.hub_addr = f"{subnet}.254"
        self.poll_interval = poll_interval
        self.profile = profile
        self.instances = instances
        self.warmup_s = warmup_s
        self.verbose = verbose  # the daemons log at INFO (-v), for a post-mortem
        self.prefixes: dict[str, list[str]] = {}  # host -> the prefix its daemon started with
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-")) if workdir is None else workdir
        self.hosts: list[Host] = []
        for i, role in enumerate(roles, 1):
            name = f"{self.tag}-h{i}"
            self.hosts.append(
                Host(name, f"h{i}", role, f"{subnet}.{i}", f"{self.tag}a{i}",
                     self.workdir / "hosts" / f"h{i}")
            )  # fmt: skip
        self.identity = self.workdir / "identity"
        self.operator = self.workdir / "operator"
        self._tls: ssl.SSLContext | None = None
        self.remote = self.workdir / "garden.git"
        self.work = self.workdir / "work"
        self._made: list[str] = []
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- context ------------------------------------------------------------------------
    def __enter__(self) -> NetMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- set-up -------------------------------------------------------------------------
    def setup(self, *, plant: bool = True) -> None:
        """Network, identity (the guide's `myco init`), Git remote with the test garden
        (``plant=False``: an empty garden; :meth:`plant` commits the app later)."""
        reason = skip_reason()
        if reason is not None:
            raise RuntimeError(reason)
        sweep()  # leftovers of crashed earlier runs
        self._network()
        for h in self.hosts:
            h.root.mkdir(parents=True, exist_ok=True)
        init = self.argv(self.guide.init, None)
        out = subprocess.run(init, capture_output=True, text=True, timeout=60, cwd=self.workdir)
        if out.returncode != 0:
            raise AssertionError(f"the guide's `myco init` failed: {out.stderr}")
        for h in self.hosts:
            if h.role != "reconciler":
                self._join_token(h)
        self._operator()
        self._garden(plant)

    def bring_up(self, timeout: float = 60.0) -> None:
        """:meth:`setup` and start every host in the order that spreads the app: the
        reconcilers first (agents enrol with them), then the agents; the app is committed
        once every agent is in, so its first placement sees every node; then the edge."""
        self.setup(plant=False)
        first = [*self.role("reconciler"), *self.role("agent")]
        self.start(first)
        self.wait(
            lambda: self.formed(first), timeout, "the agents to enrol and form with the reconcilers"
        )
        self.plant()
        self.start(self.role("edge"))

    def _join_token(self, host: Host) -> None:
        """The guide's `myco cert token` line for ``host``, its output where the units read
        the token (the guide copies it there by hand)."""
        line = self.guide.token.split(">", 1)[0]  # the redirect is the harness's job here
        argv = self.argv(line.replace("--role agent", f"--role {host.role}"), host)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=self.workdir)
        if out.returncode != 0 or not out.stdout.strip():
            raise AssertionError(f"the guide's `myco cert token` failed: {out.stderr}")
        path = host.root / "join.token"
        path.write_text(out.stdout)
        path.chmod(0o600)

    def _operator(self) -> None:
        """An admin certificate for the harness's own HTTPS requests: the guide's `myco cert
        issue --role operator` line, with this harness as the person and admin access (the
        hostile tests revoke)."""
        if not self.guide.operator:
            raise GuideError("docs/deploy.md: no `myco cert issue --role operator` line")
        words = self.argv(self.guide.operator, None)
        words[words.index("--out") + 1] = str(self.operator)
        words[words.index("--access") + 1] = "admin"
        out = subprocess.run(words, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(f"the guide's `myco cert issue` failed: {out.stderr}")

    @property
    def tls(self) -> ssl.SSLContext:
        """A client context with the harness's operator certificate (made once)."""
        if self._tls is None:
            from reconciler.identity.tls import client_context

            d = self.operator
            self._tls = client_context(d / "cert.pem", d / "key.pem", d / "ca.crt")
        return self._tls

    def _network(self) -> None:
        for ns in (self.hub, *(h.name for h in self.hosts)):
            run("ip", "netns", "add", ns)
            self._made.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.hub, "addr", "add", f"{self.hub_addr}/24", "dev", "br0")
        run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i, h in enumerate(self.hosts, 1):
            outer = f"{self.tag}b{i}"
            # Made inside the host's namespace, so the root namespace never holds it.
            run("ip", "-n", h.name, "link", "add", h.veth, "type", "veth", "peer", "name", outer)
            run("ip", "-n", h.name, "link", "set", outer, "netns", self.hub)
            run("ip", "-n", h.name, "addr", "add", f"{h.addr}/24", "dev", h.veth)
            run("ip", "-n", h.name, "link", "set", h.veth, "up")
            run("ip", "-n", self.hub, "link", "set", outer, "master", "br0")
            run("ip", "-n", self.hub, "link", "set", outer, "up")

    def _garden(self, plant: bool) -> None:
        run("git", "init", "-q", "--bare", "-b", "main", str(self.remote))
        (self.work / "garden").mkdir(parents=True)
        shutil.copytree(ROOT / "workloads" / "billing", self.work / "workloads" / "billing")
        git(self.work, "init", "-q", "-b", "main")
        git(self.work, "remote", "add", "origin", str(self.remote))
        if plant:
            self.plant()
        else:
            (self.work / "garden" / "README").write_text("apps go here\n")
            git(self.work, "add", "-A")
            git(self.work, "commit", "-q", "-m", "an empty garden")
            git(self.work, "push", "-q", "origin", "main")

    def plant(self) -> float:
        """Commit the test app (version v1) to the garden."""
        return self.commit(billing_manifest(instances=self.instances, warmup_s=self.warmup_s), "v1")

    def commit(self, manifest: str, message: str, name: str = "billing.yaml") -> float:
        """Commit ``manifest`` to the garden and push it; returns the monotonic time the
        push finished."""
        (self.work / "garden" / name).write_text(manifest)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", "main")
        return time.monotonic()

    def bump(self, version: str) -> float:
        return self.commit(
            billing_manifest(version, self.instances, self.warmup_s), f"billing {version}"
        )

    # -- the guide's commands -----------------------------------------------------------
    def substitutions(self, host: Host | None) -> list[tuple[str, str]]:
        seeds = [h for h in self.hosts if h.role == "agent"][:2]
        recs = [h for h in self.hosts if h.role == "reconciler"][:2] or seeds
        subs = [
            (Guide.GIT_URL, str(self.remote)),
            (Guide.IDENTITY, str(self.identity)),
            (Guide.SEEDS[0], seeds[0].addr),
            (Guide.SEEDS[1], seeds[1].addr),
            (Guide.RECONCILERS[0], recs[0].addr),
            (Guide.RECONCILERS[1], recs[-1].addr),
            ("--interval 30", f"--interval {self.poll_interval:g}"),
            ("--profile lan", f"--profile {self.profile}"),
        ]
        if host is not None:
            subs += [
                ("%H", host.name),
                (Guide.NEW_HOST, host.name),
                (Guide.STATE, str(host.root / "var-lib-myco")),
                (Guide.JOIN_TOKEN, str(host.root / "join.token")),
            ]
        return subs

    def argv(self, line: str, host: Host | None) -> list[str]:
        """A guide command line as this harness runs it (placeholders substituted)."""
        for old, new in self.substitutions(host):
            line = line.replace(old, new)
        words = shlex.split(line)
        if words[0] in (Guide.BINARY, "myco"):
            words = [sys.executable, "-m", "reconciler", *words[1:]]
        self._check_addresses(words)
        return words

    def _check_addresses(self, words: Iterable[str]) -> None:
        """Never any address outside loopback, the wildcard and this harness's subnet."""
        for w in words:
            for m in re.finditer(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])", w):
                a = ipaddress.ip_address(m.group(1))
                if not (a.is_loopback or a.is_unspecified or a in self.net):
                    raise GuideError(f"the guide's command would use {a}, outside the test net")
        for leftover in ("%H", Guide.STATE, "/etc/myco", Guide.NEW_HOST, "example.com"):
            if any(leftover in w for w in words):
                raise GuideError(f"{leftover!r} was not substituted in {' '.join(words)}")

    def command(self, host: Host) -> list[str]:
        words = self.argv(self.guide.units[host.role], host)
        if self.verbose:  # [python, -m, reconciler, <verb>, ...]: the verb's option
            words.insert(4, "-v")
        return words

    def start(self, hosts: Iterable[Host] | None = None, *, prefix: Sequence[str] = ()) -> None:
        """Start each host's daemon (its unit's ExecStart=) inside its namespace; ``prefix``
        goes before the command (e.g. :func:`clock_ahead` for a clock that is off)."""
        for h in self.hosts if hosts is None else hosts:
            self.prefixes[h.name] = list(prefix)
            argv = ["ip", "netns", "exec", h.name, *prefix, *self.command(h)]
            with h.log.open("ab") as out:
                h.procs.append(
                    subprocess.Popen(
                        argv,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        cwd=h.root,
                        start_new_session=True,
                    )  # fmt: skip
                )

    def run_status(self, host: Host) -> subprocess.CompletedProcess[str]:
        """The guide's `myco status` check, on ``host``."""
        argv = ["ip", "netns", "exec", host.name, *self.argv(self.guide.status, host)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    # -- faults -------------------------------------------------------------------------
    def kill_host(self, host: Host) -> int:
        """The host dies: every process in its namespace SIGKILLed; how many there were."""
        n = kill_netns_processes(host.name)
        for p in host.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        return n

    def stop_daemon(self, host: Host, sig: int = signal.SIGKILL, timeout: float = 15.0) -> None:
        """Stop ``host``'s daemon alone, by ``sig``, and wait until it has exited: its
        instances (sessions of their own) keep running, as with the guide's
        ``KillMode=process``; :meth:`start` runs it again."""
        for p in host.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)
        for p in host.procs:
            p.wait(timeout=timeout)

    def _nft(self, host: Host, script: str) -> None:
        out = subprocess.run(
            ["ip", "netns", "exec", host.name, "nft", "-f", "-"],
            input=script, capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"nft on {host.short}: {out.stderr.strip()}\n{script}")

    def _install(self, host: Host, rules_in: str, rules_out: str) -> None:
        """Replace ``host``'s harness rules by these (one nftables table with an input and an
        output chain); an empty string installs no rule in that chain."""
        self.heal(host)
        head = "type filter hook {} priority -10; policy accept;"
        self._nft(
            host,
            f"table inet {NFT_TABLE} {{\n"
            f"  chain input {{\n    {head.format('input')}\n    {rules_in}\n  }}\n"
            f"  chain output {{\n    {head.format('output')}\n    {rules_out}\n  }}\n"
            "}\n",
        )

    def _rules(self, host: Host, direction: str, match: str) -> None:
        if direction not in ("both", "in", "out"):
            raise ValueError(f"direction: both, in or out, not {direction!r}")
        rules_in = f'iifname "{host.veth}" {match} drop' if direction in ("both", "in") else ""
        rules_out = f'oifname "{host.veth}" {match} drop' if direction in ("both", "out") else ""
        self._install(host, rules_in, rules_out)

    def partition(self, host: Host, direction: str = "both") -> None:
        """Cut ``host`` off from every other (and from the hub): its veth drops everything
        (``in``, ``out`` or ``both`` directions); its loopback keeps working."""
        self._rules(host, direction, "")

    def loss(
        self, host: Host, percent: int, direction: str = "both", *, spare_hub: bool = False
    ) -> None:
        """Drop ``percent``% of the packets on ``host``'s link, at random (``spare_hub``: not
        those to or from the hub, where the harness and its load generators sit)."""
        spare = f"ip saddr != {self.hub_addr} ip daddr != {self.hub_addr} " if spare_hub else ""
        self._rules(host, direction, f"{spare}numgen random mod 100 < {int(percent)}")

    def split(self, *groups: Sequence[Host]) -> None:
        """The network split into ``groups``: a host reaches the hosts of its own group and
        the hub, none of the other groups' (hosts in no group are left as they are)."""
        for group in groups:
            others = [h.addr for g in groups if g is not group for h in g]
            if not others:
                continue
            addrs = ", ".join(others)
            for h in group:
                self._install(
                    h,
                    f'iifname "{h.veth}" ip saddr {{ {addrs} }} drop',
                    f'oifname "{h.veth}" ip daddr {{ {addrs} }} drop',
                )

    def heal_all(self) -> None:
        """Every host's harness rules removed."""
        for h in self.hosts:
            self.heal(h)

    def heal(self, host: Host) -> None:
        subprocess.run(
            ["ip", "netns", "exec", host.name, "nft", "delete", "table", "inet", NFT_TABLE],
            capture_output=True, timeout=20,
        )  # fmt: skip

    # -- talking to hosts ---------------------------------------------------------------
    def _executor(self, ns: str) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the mesh is closed")
            ex = self._executors.get(ns)
            if ex is None:
                ex = ThreadPoolExecutor(1, f"netns-{ns}", initializer=_enter_netns, initargs=(ns,))
                self._executors[ns] = ex
            return ex

    def socket(self, ns: str | None = None) -> Socket:
        """A TCP socket in namespace ``ns`` (default: the hub), for use from any thread."""
        return self._executor(ns or self.hub).submit(socket.socket).result(timeout=10)

    def socket_factory(self, ns: str | None = None) -> Callable[[], Socket]:
        return lambda: self.socket(ns)

    def http(
        self,
        addr: str,
        port: int,
        path: str,
        *,
        ns: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 2.0,
        tls: bool | ssl.SSLContext = False,
        method: str = "GET",
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        """One request to ``addr:port`` from namespace ``ns`` (default the hub); (0, b"") on
        a transport error. ``tls``: HTTPS with the harness's operator certificate (the
        members' APIs are mutual TLS), or with the client context given."""
        mesh = self
        context = tls if isinstance(tls, ssl.SSLContext) else (self.tls if tls else None)

        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                s = mesh.socket(ns)
                s.settimeout(timeout)
                try:
                    s.connect((self.host, self.port))
                except OSError:
                    s.close()
                    raise
                self.sock = context.wrap_socket(s) if context is not None else s

        conn = Conn(addr, port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            return 0, b""
        finally:
            conn.close()

    def get_json(self, addr: str, port: int, path: str, **kw: Any) -> tuple[int, Any]:
        status, body = self.http(addr, port, path, **kw)
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, None

    # -- roles and views ----------------------------------------------------------------
    def role(self, role: Role) -> list[Host]:
        return [h for h in self.hosts if h.role == role]

    @property
    def edge(self) -> Host:
        return self.role("edge")[0]

    @property
    def edge_url(self) -> str:
        return f"http://{self.edge.addr}:{self.guide.port('edge', '--listen')}"

    def edge_get(self, path: str = "/billing/hello", timeout: float = 2.0) -> tuple[int, Any]:
        return self.get_json(self.edge.addr, self.guide.port("edge", "--listen"), path,
                             timeout=timeout)  # fmt: skip

    def fabric_view(self, host: Host) -> dict[str, Any] | None:
        """An agent's ``/v1/fabric`` (members and entries), read on its loopback."""
        if host.role != "agent":
            raise ValueError(f"{host.short} is not an agent host")
        status, data = self.get_json(
            "127.0.0.1", self.guide.port("agent", "--api"), "/v1/fabric", ns=host.name, tls=True
        )
        return data if status == 200 and isinstance(data, dict) else None

    def member_states(self, host: Host) -> dict[str, int] | dict[str, str] | None:
        """How ``host``'s daemon sees the fabric: for an agent, name -> state; for an edge or
        a reconciler, state -> count (from its ``/metrics``)."""
        if host.role == "agent":
            view = self.fabric_view(host)
            if view is None:
                return None
            return {m["name"]: m["state"] for m in view.get("members", [])}
        port = (
            self.guide.port("edge", "--metrics-listen") if host.role == "edge"
            else self.guide.port("reconciler", "--repo-listen")
        )  # fmt: skip
        status, body = self.http("127.0.0.1", port, "/metrics", ns=host.name, tls=True)
        if status != 200:
            return None
        counts: dict[str, int] = {}
        for line in body.decode(errors="replace").splitlines():
            m = re.match(r'^myco_gossip_members\{state="(\w+)"\} ([\d.e+]+)$', line)
            if m:
                counts[m.group(1)] = int(float(m.group(2)))
        return counts

    def sees_all_alive(self, host: Host, members: int | None = None, strict: bool = True) -> bool:
        """``host`` sees ``members`` (default: every running host) members, all alive
        (``strict=False``: that many alive; members of a daemon's earlier life, dead or
        gone under their old name, aside)."""
        n = members if members is not None else sum(1 for h in self.hosts if self.running(h))
        states = self.member_states(host)
        if not states:
            return False
        if host.role == "agent":
            alive = sum(1 for s in states.values() if s == "alive")
            return alive == n and (not strict or len(states) == n)
        others = any(v for k, v in states.items() if k != "alive")
        return states.get("alive") == n and not (strict and others)

    def formed(self, hosts: Iterable[Host] | None = None, strict: bool = True) -> bool:
        """Every (running) member sees every other alive (``strict``: see
        :meth:`sees_all_alive`)."""
        live = [h for h in (self.hosts if hosts is None else hosts) if self.running(h)]
        return bool(live) and all(self.sees_all_alive(h, len(live), strict) for h in live)

    def running(self, host: Host) -> bool:
        return any(p.poll() is None for p in host.procs)

    def status(self, host: Host | None = None) -> Any:
        """``MeshStatus`` built from an agent's fabric view (first live agent by default)."""
        from reconciler.observe.snapshot import snapshot_from_json
        from reconciler.observe.status import build_status

        for h in [host] if host is not None else self.role("agent"):
            if not self.running(h):
                continue
            view = self.fabric_view(h)
            if view is not None:
                return build_status(snapshot_from_json(view))
        return None

    def active_reconciler(self, host: Host | None = None) -> Host | None:
        """The reconciler host whose lease (the highest live epoch) is in force."""
        view = None
        for h in [host] if host is not None else self.role("agent"):
            if self.running(h):
                view = self.fabric_view(h)
                if view is not None:
                    break
        if view is None:
            return None
        addr_of = {m["name"]: str(m["addr"]) for m in view["members"] if m["state"] == "alive"}
        best: tuple[int, str] | None = None
        now = time.time()
        for e in view["entries"]:
            v = e["value"]
            if e["key"] == "lease" and isinstance(v, dict) and e["owner"] in addr_of:
                # the lease rule's order: the highest (epoch, holder) wins a tie of epochs
                mine = (int(v["epoch"]), str(e["owner"]))
                if float(v.get("expires_at", 0)) > now and (best is None or mine > best):
                    best = mine
        if best is None:
            return None
        host_addr = addr_of[best[1]].rsplit(":", 1)[0].strip("[]")
        return next((h for h in self.role("reconciler") if h.addr == host_addr), None)

    def wait(self, cond: Callable[[], object], timeout: float, what: str) -> float:
        """Poll ``cond`` until truthy; returns the seconds it took; fails at the deadline
        with every host's log tail."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}\n{self.logs()}"
                )
            time.sleep(0.05)
        return time.monotonic() - t0

    def wait_value(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        """Like :meth:`wait`, returning ``cond``'s truthy value."""
        box: list[Any] = []

        def probe() -> bool:
            value = cond()
            if value:
                box.append(value)
            return bool(value)

        self.wait(probe, timeout, what)
        return box[-1]

    def logs(self, n: int = 1500) -> str:
        return "\n".join(f"--- {h.short} ({h.role}) {h.log}:\n{h.log_tail(n)}" for h in self.hosts)

    def instance_pids(self, app: str = "billing") -> dict[str, list[int]]:
        """Host (short name) -> pids of the processes running ``app``'s instances there (the
        ground truth: read from /proc, whatever the fabric says)."""
        out: dict[str, list[int]] = {}
        for p in self.instance_processes(app):
            out.setdefault(p.host, []).append(p.pid)
        return out

    def instance_processes(self, app: str | None = "billing") -> list[InstanceProcess]:
        """Every process of an instance (of ``app``; None: of any app) on this mesh's hosts,
        in one pass over /proc: a process's network namespace says its host, its
        environment (``MYCO_APP``, ``MYCO_INSTANCE``) what it runs. Cheap enough to sample
        several times a second."""
        hosts: dict[int, Host] = {}
        for h in self.hosts:
            with contextlib.suppress(OSError):
                hosts[os.stat(f"/run/netns/{h.name}").st_ino] = h
        out: list[InstanceProcess] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                ns = os.readlink(f"/proc/{entry}/ns/net")
                host = hosts.get(int(ns[ns.index("[") + 1 : -1]))
                if host is None:
                    continue
                env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue  # gone meanwhile, or not a namespace we made
            found = dict(v.split(b"=", 1) for v in env if v.startswith(b"MYCO_") and b"=" in v)
            name = found.get(b"MYCO_APP", b"").decode(errors="replace")
            iid = found.get(b"MYCO_INSTANCE", b"").decode(errors="replace")
            if iid and (app is None or name == app):
                out.append(InstanceProcess(host.short, int(entry), name, iid))
        return out

    def host_of_node(self, node: str) -> Host:
        return next(h for h in self.hosts if h.name == node)

    # -- clean-up -----------------------------------------------------------------------
    def close(self) -> None:
        """Kill everything, delete the namespaces, the agents' cgroups and the temp dir."""
        with self._lock:
            self._closed = True
            executors, self._executors = list(self._executors.values()), {}
        errors: list[str] = []
        for h in self.hosts:
            if h.name in self._made:
                try:
                    self.kill_host(h)
                except AssertionError as exc:
                    errors.append(str(exc))
            for p in h.procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(timeout=5)
        for ex in executors:  # their threads hold the namespaces open
            ex.shutdown(wait=True)
        for ns in reversed(self._made):
            run("ip", "netns", "del", ns, check=False)
        self._made.clear()
        sweep(only_pid=os.getpid())
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise AssertionError("; ".join(errors))

    def leftovers(self) -> list[str]:
        """What of this mesh still exists (for a test of the clean-up)."""
        out = [
            f"netns {line.split()[0]}"
            for line in run("ip", "netns", "list", check=False).stdout.splitlines()
            if line.startswith(f"{self.tag}-")
        ]
        for base in _cgroup_bases():
            with contextlib.suppress(OSError):
                for d in base.iterdir():
                    m = _CGROUP_NAME.match(d.name)
                    if d.is_dir() and m and int(m.group(1)) == os.getpid():
                        out.append(f"cgroup {d}")
        if self._own_workdir and self.workdir.exists():
            out.append(f"dir {self.workdir}")
        return out


@contextlib.contextmanager
def netmesh(**kw: Any) -> Iterator[NetMesh]:
    """A set-up and started mesh; closed however the block ends."""
    mesh = NetMesh(**kw)
    try:
        mesh.setup()
        mesh.start()
        yield mesh
    finally:
        mesh.close()
