"""The asyncio face (FabricAPI) on the in-memory network and on real loopback sockets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import main as myco
from reconciler.errors import KeyFileError
from reconciler.fabric import (
    Change,
    FabricAPI,
    Keyring,
    MemoryNetwork,
    RealClock,
    open_fabric,
    open_memory_fabric,
)
from tests.helpers import async_wait_for

from .procs import ROOT, MemberProc


async def next_change(it: object, within: float = 5.0) -> Change:
    async with asyncio.timeout(within):
        return await it.__anext__()  # type: ignore[attr-defined,no-any-return]


async def test_publish_subscribe_view_members_on_the_memory_network() -> None:
    net = MemoryNetwork(RealClock())
    async with open_memory_fabric("a", net) as a:
        sub = a.subscribe("routes/")
        async with open_memory_fabric("b", net, seeds=[a.addr]) as b:
            api: FabricAPI = b
            await async_wait_for(lambda: len(a.alive_members()) == 2, what="join")
            api.publish("routes/web", {"backends": ["x"]})
            api.publish("other", 1)
            c = await next_change(sub)
            assert (c.owner, c.key, c.value) == ("b", "routes/web", {"backends": ["x"]})
            assert a.get("b", "routes/web") == {"backends": ["x"]}
            assert a.view("routes/") == {("b", "routes/web"): {"backends": ["x"]}}
            await async_wait_for(lambda: a.get("b", "other") == 1, what="other key")
            b.delete("routes/web")
            c = await next_change(sub)
            assert (c.key, c.value) == ("routes/web", None)
            assert a.view("routes/") == {}
            b.publish("routes/web", {"backends": ["y"]})
            assert (await next_change(sub)).value == {"backends": ["y"]}
            await b.leave()
            # The owner left: its keys disappear from the view and subscribers hear it.
            c = await next_change(sub)
            assert (c.owner, c.key, c.value) == ("b", "routes/web", None)
            states = {m.name: m.state for m in a.members()}
            assert states["b"] == "left"
            assert a.view("routes/") == {}
            assert a.view("routes/", include_gone=True) == {
                ("b", "routes/web"): {"backends": ["y"]}
            }
    # The subscription ends when the fabric stops.
    with pytest.raises(StopAsyncIteration):
        await next_change(sub)


async def test_join_counts_answers_and_tolerates_silence() -> None:
    net = MemoryNetwork(RealClock())
    async with open_memory_fabric("a", net) as a, open_memory_fabric("b", net) as b:
        c_addr = "10.0.0.99:1"  # nobody there
        b.config = b.config.with_(join_timeout=0.3)
        assert await b.join([a.addr, c_addr]) == 1
        assert await b.join([]) == 0


async def test_real_sockets_encrypted_members_merge_and_outsiders_are_refused() -> None:
    ring = Keyring.generate()
    async with (
        open_fabric("a", keyring=ring) as a,
        open_fabric("b", seeds=[a.addr], keyring=ring) as b,
    ):
        assert b.alive_members() == ["a", "b"]
        a.publish("node", {"id": "a"})
        await async_wait_for(lambda: b.get("a", "node") == {"id": "a"}, what="state over UDP")
        async with open_fabric("evil", seeds=[a.addr], keyring=Keyring.generate()) as evil:
            assert evil.alive_members() == ["evil"]
            evil.publish("intents/a", {"bad": True})
            await async_wait_for(lambda: a.stats.dropped_auth > 0, what="a drops the outsider")
        assert a.view("intents/") == {}
        assert a.alive_members() == ["a", "b"]


def test_keyring_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "gossip.key"
    ring = Keyring.generate()
    ring.install(Keyring.generate().primary)
    ring.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Keyring.load(path).keys == ring.keys
    with pytest.raises(KeyFileError, match="exists"):
        ring.save(path)
    (tmp_path / "bad").write_text("not base64!\n")
    with pytest.raises(KeyFileError, match="base64"):
        Keyring.load(tmp_path / "bad")
    (tmp_path / "short").write_text("AAAA\n")
    with pytest.raises(KeyFileError, match="16, 24 or 32"):
        Keyring.load(tmp_path / "short")
    with pytest.raises(KeyFileError, match="primary"):
        ring.remove(ring.primary)


def test_gossip_key_verb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"
    assert myco(["gossip-key", "--out", str(out)]) == 0
    first = Keyring.load(out).primary
    assert myco(["gossip-key", "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert myco(["gossip-key", "--out", str(out), "--rotate"]) == 0
    keys = Keyring.load(out).keys
    assert len(keys) == 2
    assert keys[1] == first


def test_members_verb_lists_a_running_mesh(tmp_path: Path) -> None:
    key = tmp_path / "k"
    Keyring.generate().save(key)
    member = MemberProc("solo", tmp_path, key_file=key)
    try:
        run = [sys.executable, "-m", "reconciler", "members", "--join", member.addr]
        ok = subprocess.run(
            [*run, "--key-file", str(key)], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.split("\t")[:3] == ["solo", member.addr, "alive"]
        refused = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert refused.returncode == 2
        assert "myco: error: no member answered" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        member.stop()
