"""``myco init`` makes the mesh CA; ``myco cert issue|token|bearer|show|revoke``; daemons
refuse to gossip or serve off loopback without an identity; and a daemon's identity must be
its own (real files, the real CLI, real processes where a daemon starts)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.fabric.keyring import Keyring
from reconciler.identity.layout import CADir, MemberDir
from reconciler.identity.live import LiveIdentity
from reconciler.identity.tokens import check_token
from reconciler.mesh.identity import Identity, create_identity, ensure_ca, ensure_identity
from tests.identity.lifecycle import CLUSTER, ca_server, member

MYCO = [sys.executable, "-m", "reconciler"]


def myco(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MYCO, *args], capture_output=True, text=True, timeout=60)


# -- myco init ---------------------------------------------------------------------------------


def test_init_writes_the_mesh_ca_beside_the_other_keys(tmp_path: Path) -> None:
    root = tmp_path / "identity"
    done = myco("init", str(root), "--mesh", "prod-eu")
    assert done.returncode == 0, done.stderr
    for name in ("signing.key", "trust.yaml", "gossip.key", "ca.crt", "issuer.crt"):
        assert (root / name).is_file(), name
    for secret in ("ca.key", "issuer.key", "signing.key", "gossip.key"):
        assert (root / secret).stat().st_mode & 0o777 == 0o600, secret
    assert "ca.key  its key: keep it offline" in done.stdout
    issuer = CADir(root).issuer()
    assert issuer.mesh == "prod-eu"
    # It refuses to overwrite anything, and says what it found.
    again = myco("init", str(root))
    assert again.returncode == 1
    assert again.stderr.startswith("myco: error: an identity already exists in ")
    bad = myco("init", str(tmp_path / "other"), "--mesh", "Not_A_Mesh")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "myco: error: mesh name 'Not_A_Mesh' is not valid: lower-case DNS-like, 1-63 chars"
    )
    assert not (tmp_path / "other").exists()


def test_the_dev_identity_gets_a_ca_and_an_old_one_is_given_one(tmp_path: Path) -> None:
    ident, created = ensure_identity(tmp_path / "dev")
    assert created
    assert ident.ca.exists()
    assert ident.ca.issuer().mesh == "myco"
    assert not ensure_ca(ident)  # nothing to add
    old = create_identity(tmp_path / "old")
    for path in old.ca_files():
        path.unlink()  # as made before the mesh CA existed
    again, created = ensure_identity(tmp_path / "old")
    assert not created
    assert ensure_ca(again)
    assert CADir(tmp_path / "old").issuer().mesh == "myco"
    (tmp_path / "old" / "issuer.key").unlink()
    with pytest.raises(Exception, match="the mesh CA in .* is incomplete"):
        ensure_ca(Identity(tmp_path / "old"))


# -- myco cert ---------------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    root = tmp_path / "ca"
    CADir(root).create("lifemesh")
    return root


def test_cert_issue_writes_an_identity_and_show_reads_it(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "node-1"
    code = main(["cert", "issue", "--ca", str(ca), "--role", "agent", "--name", "node-1",
                 "--lifetime", "90m", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert "issued agent node-1: spiffe://lifemesh/agent/node-1" in capsys.readouterr().out
    ident = MemberDir(out).load()
    p = ident.principal
    assert (p.role, p.name) == ("agent", "node-1")
    assert 89 * 60 < p.not_after - time.time() <= 90 * 60
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    LiveIdentity(MemberDir(out), CLUSTER)  # usable by a daemon as it is
    assert main(["cert", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "agent node-1 (spiffe://lifemesh/agent/node-1), valid until" in shown
    assert "(in 1h 29m)" in shown
    assert "chain: valid against the root CA in" in shown
    # Overwriting needs --force; an operator gets its access level.
    assert main(["cert", "issue", "--ca", str(ca), "--role", "agent", "--name", "node-1",
                 "--out", str(out)]) == 1  # fmt: skip
    assert "already holds an identity" in capsys.readouterr().err
    admin = tmp_path / "alice"
    assert main(["cert", "issue", "--ca", str(ca), "--role", "operator", "--name", "alice",
                 "--access", "admin", "--out", str(admin)]) == 0  # fmt: skip
    assert MemberDir(admin).load().principal.access == "admin"
    assert main(["cert", "show", str(admin / "cert.pem")]) == 0
    assert "operator alice, admin access" in capsys.readouterr().out


def test_cert_show_says_when_a_certificate_has_expired(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reconciler.identity.enrol import issue_to_dir

    out = tmp_path / "old"
    issue_to_dir(CADir(ca).issuer(), "edge", "edge-1", out, now=time.time() - 7200,
                 lifetime_s=3600)  # fmt: skip
    assert main(["cert", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "edge edge-1" in shown
    assert "EXPIRED 1h 0m ago" in shown
    assert "chain: NOT valid against" in shown
    assert "has expired" in shown


def test_cert_tokens_print_only_the_token_and_it_verifies(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    verifier = LiveIdentity(member(CADir(ca), "agent", "x", tmp_path / "x"), CLUSTER).verifier
    assert main(["cert", "token", "--ca", str(ca), "--role", "edge", "--name", "edge-2"]) == 0
    out, err = capsys.readouterr()
    token = check_token(out.strip(), verifier, time.time(), "join")
    assert (token.name, token.role) == ("edge-2", "edge")
    assert 3590 < token.exp - time.time() <= 3600
    assert "a one-time join token for edge edge-2, valid until" in err
    assert main(["cert", "bearer", "--ca", str(ca), "--name", "ci", "--access", "operator",
                 "--ttl", "30d"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    bearer = check_token(out.strip(), verifier, time.time(), "bearer")
    assert (bearer.name, bearer.access) == ("ci", "operator")
    assert 29.9 * 86400 < bearer.exp - time.time() <= 30 * 86400
    token_file = tmp_path / "t"
    token_file.write_text(out)
    assert main(["cert", "show", str(token_file)]) == 0
    assert "a bearer token for ci (operator), mesh lifemesh" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["issue", "--role", "agent", "--name", "n", "--out", "{tmp}/o", "--lifetime", "5q"],
            2,
            "--lifetime '5q': expected a number and a unit, e.g. 90m, 24h or 30d",
        ),
        (
            ["issue", "--role", "agent", "--name", "n", "--out", "{tmp}/o", "--lifetime", "0m"],
            2,
            "--lifetime '0m': must be positive",
        ),
        (
            ["issue", "--role", "agent", "--name", "n", "--out", "{tmp}/o", "--access", "admin"],
            2,
            "--access is for --role operator",
        ),
        (
            ["issue", "--role", "agent", "--name", "a#b", "--out", "{tmp}/o"],
            1,
            "--name 'a#b' is not valid",
        ),
        (["token", "--role", "operator", "--name", "n"], 2, "invalid choice: 'operator'"),
        (["bearer", "--name", "n"], 2, "the following arguments are required: --access"),
    ],
)
def test_cert_refuses_bad_input_in_one_line(
    ca: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    argv = ["cert", args[0], "--ca", str(ca), *[a.format(tmp=tmp_path) for a in args[1:]]]
    done = myco(*argv)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_cert_needs_a_ca_directory_with_an_issuer(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = myco("cert", "token", "--ca", str(tmp_path / "empty"), "--role", "agent",
                "--name", "n")  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().endswith("no issuing CA there (issuer.key); give the directory "
                                        "`myco init` made")  # fmt: skip
    done = myco("cert", "token", "--ca", str(tmp_path / "nope"), "--role", "agent", "--name", "n")
    assert done.returncode == 2
    assert "--ca " in done.stderr
    assert "no such directory" in done.stderr


async def test_cert_revoke_asks_the_reconciler_with_an_admin_identity(tmp_path: Path) -> None:
    async with ca_server(tmp_path) as srv:
        admin = member(srv.ca, "operator", "alice", tmp_path / "alice", access="admin")
        viewer = member(srv.ca, "operator", "bob", tmp_path / "bob", access="viewer")

        def revoke(who: MemberDir) -> int:
            return main(["cert", "revoke", "node-1", "--reconciler", srv.url,
                         "--identity", str(who.root), "--state", str(tmp_path / "st")])  # fmt: skip

        assert await asyncio.to_thread(revoke, viewer) == 1
        assert not (srv.state / "revocations.json").exists()
        assert await asyncio.to_thread(revoke, admin) == 0
        saved = json.loads((srv.state / "revocations.json").read_text())
        assert [e["name"] for e in saved["revocations"]] == ["node-1"]


# -- daemons -------------------------------------------------------------------------------------


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    path = tmp_path / "gossip.key"
    Keyring.generate().save(path)
    return path


@pytest.mark.parametrize(
    ("verb", "extra"),
    [
        ("agent", ["--node", "n1", "--state", "{tmp}/s", "--trust", "{tmp}/pub"]),
        ("edge", ["--join", "10.0.0.9:7946"]),
        ("reconcile", ["--watch", "{tmp}", "--state", "{tmp}/s"]),
    ],
)
def test_a_daemon_off_loopback_without_an_identity_refuses_to_start(
    tmp_path: Path, keyring: Path, verb: str, extra: list[str]
) -> None:
    (tmp_path / "pub").write_text("")
    args = [a.format(tmp=tmp_path) for a in extra]
    wild = ["--gossip-bind", "0.0.0.0:0", "--advertise", "10.0.0.5", "--gossip-key", str(keyring)]
    done = myco(verb, *args, *wild)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"myco: error: {verb}: refusing to gossip on 0.0.0.0:0 without an identity (its "
        "records would be unsigned): give --identity DIR (or --join-token FILE), or --insecure"
    )


def test_loopback_http_is_for_loopback_listeners_only(tmp_path: Path) -> None:
    done = myco("agent", "--node", "n1", "--state", str(tmp_path / "s"), "--api", "0.0.0.0:0",
                "--loopback-http")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "agent: --loopback-http serves plain HTTP to anybody: --api 0.0.0.0:0 must be on loopback"
    )
    done = myco("agent", "--node", "n1", "--state", str(tmp_path / "s"), "--join-token",
                str(tmp_path / "nope"))  # fmt: skip
    assert done.returncode == 2
    assert "--join-token" in done.stderr
    assert "no such file" in done.stderr


def test_an_agent_refuses_an_identity_made_for_another_node(
    tmp_path: Path, ca: Path, keyring: Path
) -> None:
    ident = create_identity(tmp_path / "mesh")
    member(CADir(ca), "agent", "node-2", tmp_path / "s" / "identity")
    done = myco("agent", "--node", "node-1", "--state", str(tmp_path / "s"),
                "--trust", str(ident.trust), "--gossip-key", str(keyring))  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"myco: error: the identity in {tmp_path / 's' / 'identity'} is for agent 'node-2', "
        "but this agent is 'node-1': they must be the same"
    )
