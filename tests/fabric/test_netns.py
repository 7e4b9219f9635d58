"""A real network partition: 4 hosts in network namespaces, split 2|2, then healed.

Each host is a namespace with a veth into a "hub" namespace holding two bridges; moving
two hosts' ports to the second bridge splits the network, moving them back heals it.
Needs root and ``ip netns``; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.fabric.keyring import Keyring
from tests.helpers import wait_for

from .procs import MemberProc

pytestmark = [pytest.mark.netns, pytest.mark.slow]

TAG = f"m{os.getpid() % 100000}"
HUB = f"myco-{TAG}-hub"
HOSTS = [f"myco-{TAG}-h{i}" for i in range(1, 5)]
IPS = [f"10.77.0.{i}" for i in range(1, 5)]
NAMES = ["h1", "h2", "h3", "h4"]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def _skip_reason() -> str | None:
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"myco-{TAG}-probe"
    try:
        ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        return f"`ip netns add` is not available here: {err.decode(errors='replace').strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    return None


@pytest.fixture
def network() -> Iterator[None]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    made: list[str] = []
    try:
        for ns in (HUB, *HOSTS):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for br in ("br0", "br1"):
            ip("-n", HUB, "link", "add", br, "type", "bridge")
            ip("-n", HUB, "link", "set", br, "up")
        for i, (ns, addr) in enumerate(zip(HOSTS, IPS, strict=True), 1):
            inner, outer = f"{TAG}a{i}", f"{TAG}b{i}"
            ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            ip("link", "set", inner, "netns", ns)
            ip("link", "set", outer, "netns", HUB)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
            ip("-n", HUB, "link", "set", outer, "master", "br0")
            ip("-n", HUB, "link", "set", outer, "up")
        yield
    finally:
        # Deleting a namespace deletes the veth ends inside it (and so their peers).
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def move(hosts: list[int], bridge: str) -> None:
    for i in hosts:
        ip("-n", HUB, "link", "set", f"{TAG}b{i}", "master", bridge)


def test_partition_of_four_hosts_heals_to_full_membership_and_state(
    network: None, tmp_path: Path
) -> None:
    key = tmp_path / "gossip.key"
    Keyring.generate().save(key)
    procs: dict[str, MemberProc] = {}
    try:
        for name, ns, addr in zip(NAMES, HOSTS, IPS, strict=True):
            procs[name] = MemberProc(
                name, tmp_path, bind=f"{addr}:7946", join=[f"{IPS[0]}:7946"], key_file=key,
                publish=[f'node={{"host":"{name}"}}'], prefix=["ip", "netns", "exec", ns],
            )  # fmt: skip

        def sees(observers: list[str], targets: list[str], state: str | None) -> bool:
            return all(procs[o].states().get(t) == state for o in observers for t in targets)

        def full() -> bool:
            return sees(NAMES, NAMES, "alive") and all(
                len([k for k in procs[n].view() if k.endswith(" node")]) == 4 for n in NAMES
            )

        wait_for(full, timeout=30, what="the four hosts to form one cluster")

        move([3, 4], "br1")  # split 2|2
        left, right = ["h1", "h2"], ["h3", "h4"]
        wait_for(
            lambda: sees(left, right, "dead") and sees(right, left, "dead"),
            timeout=60,
            what="each half to mark the other dead",
        )
        # Longer than the dead timeout: until each half has forgotten the other entirely.
        wait_for(
            lambda: sees(left, right, None) and sees(right, left, None),
            timeout=60,
            what="each half to reap the other",
        )
        move([3, 4], "br0")  # heal
        wait_for(full, timeout=60, what="full membership and state after the heal")
    finally:
        for p in procs.values():
            p.stop()
