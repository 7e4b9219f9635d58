"""Addresses that work on real hosts: what a member advertises, the URLs it publishes, and
the refusals (a wildcard, loopback to another host, plaintext off loopback)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from reconciler.addr import Advertised, choose_advertise, url_host
from reconciler.commands.options import join_settings, refuse_plaintext
from reconciler.errors import ConfigError, UsageError
from reconciler.fabric import open_fabric
from reconciler.fabric.joining import JoinSettings, route_source
from reconciler.fabric.keyring import Keyring
from tests.helpers import free_port

ROUTES = {"10.77.0.1": "10.77.0.3", "127.0.0.1": "127.0.0.1", "192.0.2.9": "192.0.2.2"}


def fake_route(host: str, port: int) -> str:
    """A routing table for the pure decision: no socket involved."""
    if host not in ROUTES:
        raise OSError(101, "Network is unreachable")
    return ROUTES[host]


@pytest.mark.parametrize(
    ("bind", "advertise", "seeds", "expected"),
    [
        # a concrete bind is advertised as it is; a given --advertise wins
        ("127.0.0.1:0", None, (), Advertised("127.0.0.1")),
        ("10.77.0.3:7946", None, ("10.77.0.1:7946",), Advertised("10.77.0.3")),
        ("0.0.0.0:7946", "10.77.0.3", ("10.77.0.1:7946",), Advertised("10.77.0.3")),
        ("0.0.0.0:7946", "10.77.0.3:9000", (), Advertised("10.77.0.3", 9000)),
        ("127.0.0.1:0", None, ("127.0.0.1:7946", "localhost:7000"), Advertised("127.0.0.1")),
        # a wildcard bind: the address that routes to the first seed
        (
            "0.0.0.0:7946",
            None,
            ("10.77.0.1:7946", "192.0.2.9:7946"),
            Advertised("10.77.0.3", None, "the address that routes to seed 10.77.0.1:7946"),
        ),
        (
            "0.0.0.0:7946",
            None,
            ("127.0.0.1:7946",),
            Advertised("127.0.0.1", None, "the address that routes to seed 127.0.0.1:7946"),
        ),
        (":7946", None, ("127.0.0.1:7000",), Advertised("127.0.0.1")),  # ":PORT" is loopback
    ],
)
def test_what_a_member_advertises(
    bind: str, advertise: str | None, seeds: tuple[str, ...], expected: Advertised
) -> None:
    assert choose_advertise(bind, advertise, seeds, fake_route) == expected


@pytest.mark.parametrize(
    ("bind", "advertise", "seeds", "message"),
    [
        (
            "0.0.0.0:7946",
            None,
            (),
            "--gossip-bind 0.0.0.0:7946 listens on every address and there is no --join seed "
            "to learn the right one from: give --advertise HOST",
        ),
        (
            "0.0.0.0:7946",
            "0.0.0.0",
            ("10.77.0.1:7946",),
            "cannot advertise 0.0.0.0: no peer can reach a wildcard address",
        ),
        ("0.0.0.0:7946", "[::]:7946", (), "cannot advertise [::]:7946: no peer can reach"),
        (
            "127.0.0.1:0",
            None,
            ("127.0.0.1:7000", "10.77.0.1:7946"),
            "cannot advertise 127.0.0.1 to seed 10.77.0.1:7946: a loopback address is "
            "unreachable from other hosts",
        ),
        (
            "0.0.0.0:7946",
            "127.0.0.1:7946",
            ("seed.example:7946",),
            "cannot advertise 127.0.0.1:7946 to seed seed.example:7946",
        ),
        (
            "0.0.0.0:7946",
            None,
            ("198.51.100.1:7946",),
            "cannot find the address that routes to seed 198.51.100.1:7946: "
            "Network is unreachable; give --advertise HOST",
        ),
    ],
)
def test_refused_advertisements_say_why_in_one_line(
    bind: str, advertise: str | None, seeds: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        choose_advertise(bind, advertise, seeds, fake_route)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_the_route_probe_finds_the_loopback_route_without_sending() -> None:
    assert route_source("127.0.0.1", free_port()) == "127.0.0.1"
    assert route_source("127.0.0.2", 7946) == "127.0.0.1"  # the loopback interface's address


def test_join_settings_resolve_a_wildcard_bind_to_the_routed_address() -> None:
    raw = JoinSettings(bind="0.0.0.0:0", seeds=("10.77.0.1:7946",))
    done = raw.resolved(fake_route)
    assert done.advertise == "10.77.0.3"  # a host alone: the transport adds the bound port
    assert done.advertised_host() == "10.77.0.3"
    assert done.describe("10.77.0.3:7946") == (
        "advertising 10.77.0.3:7946 (the address that routes to seed 10.77.0.1:7946)"
    )
    plain = JoinSettings().resolved(fake_route)
    assert (plain.advertise, plain.advertised_host(), plain.advertise_why) == (
        None,
        "127.0.0.1",
        "",
    )
    assert "INSECURE" in JoinSettings(insecure=True).describe("127.0.0.1:1")


@pytest.mark.parametrize(
    ("bind", "key", "expected"),
    [
        ("127.0.0.1:0", None, False),
        ("127.0.0.2:7946", None, False),
        ("0.0.0.0:7946", None, True),
        (":7946", None, False),  # ":PORT" is loopback
        ("10.77.0.3:7946", None, True),
        ("0.0.0.0:7946", Path("gossip.key"), False),
    ],
)
def test_plaintext_off_loopback(bind: str, key: Path | None, expected: bool) -> None:
    assert JoinSettings(bind=bind, gossip_key=key).plaintext_off_loopback() is expected


def test_published_urls_use_the_advertised_host_for_a_wildcard_bind() -> None:
    assert url_host("0.0.0.0", "10.77.0.3") == "10.77.0.3"
    assert url_host("", "10.77.0.3") == "10.77.0.3"
    assert url_host("0.0.0.0", None) == "127.0.0.1"
    assert url_host("10.77.0.5", "10.77.0.3") == "10.77.0.5"


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "join": [],
        "gossip_bind": "127.0.0.1:0",
        "advertise": None,
        "gossip_key": None,
        "cluster": "myco",
        "profile": "local",
        "insecure": False,
    }
    base.update(kw)
    return argparse.Namespace(**base)


def test_the_flags_refuse_plaintext_gossip_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        join_settings(_args(gossip_bind="0.0.0.0:7946", join=["127.0.0.1:7000"]), "agent")
    assert str(err.value) == (
        "agent: refusing to gossip in plaintext on 0.0.0.0:7946: "
        "give --gossip-key FILE, or --insecure"
    )
    ok = join_settings(
        _args(gossip_bind="0.0.0.0:7946", join=["127.0.0.1:7000"], insecure=True), "agent"
    )
    assert (ok.insecure, ok.advertise) == (True, "127.0.0.1")
    key = tmp_path / "gossip.key"
    key.write_text("x\n")
    keyed = join_settings(
        _args(gossip_bind="0.0.0.0:7946", join=["127.0.0.1:7000"], gossip_key=key), "agent"
    )
    assert keyed.advertise_why == "the address that routes to seed 127.0.0.1:7000"
    with pytest.raises(UsageError, match="bad --join address '10.0.0.1': expected HOST:PORT"):
        join_settings(_args(join=["10.0.0.1"]), "agent")


def test_http_listeners_off_loopback_need_an_identity_or_insecure() -> None:
    refuse_plaintext("agent", "the agent API", "127.0.0.1:0", secured=False, insecure=False)
    refuse_plaintext("agent", "the agent API", "0.0.0.0:7000", secured=True, insecure=False)
    refuse_plaintext("agent", "the agent API", "0.0.0.0:7000", secured=False, insecure=True)
    with pytest.raises(ConfigError) as err:
        refuse_plaintext("edge", "--metrics-listen", "0.0.0.0:9100", secured=False, insecure=False)
    assert str(err.value) == (
        "edge: refusing to serve --metrics-listen in plaintext on 0.0.0.0:9100 without an "
        "identity: give --identity DIR (mutual TLS), or --insecure"
    )


async def test_an_unanswered_join_is_a_warning_naming_the_advertised_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="myco.fabric")
    nobody = f"127.0.0.1:{free_port()}"
    async with open_fabric("lonely", seeds=[nobody]) as fabric:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            f"fabric lonely: no member answered from {fabric.addr} after 2 s; check that the "
            f"seeds are up, that they can reach {fabric.addr} (--advertise) and that every "
            "member shares --cluster and --gossip-key; still trying"
        ]


@pytest.mark.parametrize("other", ["cluster", "key"])
async def test_a_seed_of_another_cluster_or_key_is_refused_with_one_warning(
    caplog: pytest.LogCaptureFixture, other: str
) -> None:
    caplog.set_level(logging.WARNING, logger="myco.fabric")
    key = Keyring.generate()
    their_key = Keyring.generate() if other == "key" else Keyring(key.keys)
    their_cluster = "green" if other == "cluster" else "blue"
    async with (
        open_fabric("seed", keyring=key, cluster="blue") as seed,
        open_fabric("joiner", seeds=[seed.addr], keyring=their_key, cluster=their_cluster) as j,
    ):
        assert seed.alive_members() == ["seed"]
        assert j.alive_members() == ["joiner"]
        refused = [
            r.getMessage() for r in caplog.records if "refused packets from" in r.getMessage()
        ]
        assert refused == [
            "fabric seed: refused packets from 127.0.0.1: they are sealed with another cluster "
            "name or gossip key (check --cluster and --gossip-key on both)"
        ]
        assert seed.refused["127.0.0.1"] >= 1
        unanswered = [
            r.getMessage() for r in caplog.records if "no member answered" in r.getMessage()
        ]
        assert len(unanswered) == 1


async def test_an_insecure_agent_says_so_in_its_node_record(tmp_path: Path) -> None:
    from reconciler.agent.agent import Agent, AgentConfig
    from reconciler.clock import RealClock
    from reconciler.fabric import MemoryNetwork, open_memory_fabric
    from reconciler.spore.trust import TrustPolicy

    async with open_memory_fabric("n1", MemoryNetwork(RealClock())) as fabric:
        for insecure in (False, True):
            config = AgentConfig(
                node="n1", state_dir=tmp_path, fabric=JoinSettings(insecure=insecure)
            )
            agent = Agent(config, fabric, TrustPolicy(()))
            assert agent.node_record().insecure is insecure
