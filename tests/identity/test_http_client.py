"""The one client (``MeshClient``) against a control API over mutual TLS: an operator
certificate or a bearer token, and a clear one-line error for every refusal."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from reconciler.client import Credentials, MeshClient, read_token
from reconciler.errors import ConfigError, UnavailableError
from tests.identity.pki import Pki
from tests.identity.servers import control_api


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def root_only(pki: Pki, tmp: Path) -> Path:
    """An identity directory with the mesh root only (a token user's)."""
    d = tmp / "root-only"
    d.mkdir()
    shutil.copy(pki.ca.ca_cert, d / "ca.crt")
    return d


def client(url: str, tmp: Path, **creds: object) -> MeshClient:
    return MeshClient(reconciler=url, state=tmp / "state", credentials=Credentials(**creds))  # type: ignore[arg-type]


async def test_an_operator_certificate_drains_and_a_viewer_token_is_told_why_not(
    pki: Pki, tmp_path: Path
) -> None:
    async with control_api(pki, tmp_path) as srv:
        alice = pki.member("operator", "alice", access="operator")
        async with client(srv.url, tmp_path, identity=alice.root) as c:
            assert (await c.status())["active"] is True
            assert await c.drain("n1") == "n1: drained"
        assert "n1" in srv.rec.overrides.drain

        ca = root_only(pki, tmp_path)
        async with client(srv.url, tmp_path, identity=ca, token=pki.token("bob", "viewer")) as c:
            assert (await c.status())["active"] is True  # a viewer reads
            with pytest.raises(ConfigError) as err:
                await c.drain("n1", undo=True)
        message = str(err.value)
        assert message.startswith("the control API refused: bob (viewer) may not POST")
        assert message.endswith("needs operator (give --identity or --token)")
        assert "n1" in srv.rec.overrides.drain

        async with client(srv.url, tmp_path, identity=ca) as c:  # nobody
            with pytest.raises(ConfigError, match=r"refused: no credentials.*\(give --identity"):
                await c.status()


async def test_trouble_with_the_identity_is_one_clear_line(pki: Pki, tmp_path: Path) -> None:
    async with control_api(pki, tmp_path) as srv:
        # no mesh root: the server's certificate cannot be checked
        async with client(srv.url, tmp_path) as c:
            with pytest.raises(UnavailableError, match="cannot reach the reconciler at https"):
                await c.status()
        # another mesh's root: the server does not verify
        other = Pki(tmp_path / "other").member("operator", "alice", access="operator")
        async with client(srv.url, tmp_path, identity=other.root) as c:
            with pytest.raises(UnavailableError, match="does not verify against the mesh root"):
                await c.status()
    # an expired certificate is refused before anything is sent
    old = pki.member("operator", "alice", access="operator", now=time.time() - 7200)
    with pytest.raises(ConfigError, match=r"the certificate of alice expired at .* UTC"):
        Credentials(identity=old.root).ssl_context()


def test_credentials_come_from_flags_then_the_environment_then_the_state(
    pki: Pki, tmp_path: Path
) -> None:
    token = pki.token("bob", "viewer")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    alice = pki.member("operator", "alice", access="operator")
    state = tmp_path / "state"
    # nothing anywhere: no credentials (a loopback mesh needs none)
    assert Credentials.resolve(state=state, env={}) == Credentials()
    # <state>/operator, when it holds an identity
    shutil.copytree(alice.root, state / "operator")
    assert Credentials.resolve(state=state, env={}).identity == state / "operator"
    # the environment wins over the state; the flags over the environment
    env = {"MYCO_IDENTITY": str(alice.root), "MYCO_TOKEN": str(token_file)}
    got = Credentials.resolve(state=state, env=env)
    assert got == Credentials(alice.root, token)
    assert got.certificate
    assert got.headers() == {"Authorization": f"Bearer {token}"}
    assert Credentials.resolve(token=token, identity=state / "operator", env=env) == Credentials(
        state / "operator", token
    )
    with pytest.raises(ConfigError, match="no ca.crt there"):
        Credentials.resolve(identity=tmp_path / "nowhere", env={})
    with pytest.raises(ConfigError, match="neither a token .* nor a readable file"):
        read_token(str(tmp_path / "missing"))
    (tmp_path / "junk").write_text("hello\n")
    with pytest.raises(ConfigError, match="holds no myco token"):
        read_token(str(tmp_path / "junk"))
