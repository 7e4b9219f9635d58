"""docs/deploy.md is the script of the multi-host tests: what the harness reads from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.netmesh import GUIDE, Guide, GuideError, NetMesh


def test_the_guide_has_every_command_the_hosts_run() -> None:
    guide = Guide.load()
    assert guide.init.startswith("myco init /etc/myco/identity")
    assert set(guide.units) >= {"agent", "edge", "reconciler"}
    for unit in ("agent", "edge", "reconciler"):
        assert guide.flag(unit, "--gossip-bind").startswith("0.0.0.0:"), unit
        assert guide.flag(unit, "--gossip-key") == "/etc/myco/identity/gossip.key", unit
        assert guide.flag(unit, "--profile") == "lan", unit
    assert guide.flag("agent", "--api").startswith("0.0.0.0:")
    assert guide.flag("edge", "--listen").startswith("0.0.0.0:")
    assert guide.flag("reconciler", "--repo-listen").startswith("0.0.0.0:")
    assert guide.flag("reconciler", "--branch") == "main"


def test_substituted_commands_use_only_the_test_net_and_temp_paths(tmp_path: Path) -> None:
    mesh = NetMesh(workdir=tmp_path)
    for host in mesh.hosts:
        argv = mesh.command(host)
        line = " ".join(argv)
        assert argv[1:3] == ["-m", "reconciler"]
        assert "10.0.0." not in line
        assert "/etc/myco" not in line
        assert "/var/lib" not in line
        assert str(tmp_path) in line
        seeds = argv[argv.index("--join") + 1 : argv.index("--join") + 3]
        assert seeds == [f"{mesh.hosts[0].addr}:7946", f"{mesh.hosts[1].addr}:7946"]
        assert argv[argv.index("--profile") + 1] == "local"
    rec = mesh.command(mesh.role("reconciler")[0])
    assert rec[rec.index("--git") + 1] == str(mesh.remote)
    assert rec[rec.index("--interval") + 1] == "1"


def test_a_guide_that_lost_a_unit_or_a_placeholder_is_refused(tmp_path: Path) -> None:
    text = GUIDE.read_text()
    broken = tmp_path / "deploy.md"
    broken.write_text(text.replace("myco-edge.service", "myco-gateway.service"))
    with pytest.raises(GuideError, match="edge"):
        Guide.load(broken)
    broken.write_text(text.replace("10.0.0.12", "10.0.0.99"))
    with pytest.raises(GuideError, match="10.0.0.12"):
        Guide.load(broken)


def test_an_address_outside_the_test_net_is_never_run(tmp_path: Path) -> None:
    guide = Guide.load()
    units = dict(guide.units)
    units["edge"] += " --join 192.0.2.1:7946"
    mesh = NetMesh(workdir=tmp_path, guide=Guide(guide.init, units, guide.status, guide.token))
    with pytest.raises(GuideError, match="192.0.2.1"):
        mesh.command(mesh.edge)
