"""``myco init DIR`` (docs/deploy.md step 1, docs/identity.md): the files it writes, their
modes, that what it prints names them and that they work (a spore signed with the key passes
the trust policy only for the apps given; the issuing CA issues a member certificate; the
keyring loads), that it refuses to overwrite any of them without ``--force`` in one line,
and that a bad DIR is one line too, never a traceback. The real CLI, real files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reconciler.fabric.keyring import Keyring
from reconciler.identity.layout import CADir
from reconciler.mesh.identity import ensure_identity

MYCO = [sys.executable, "-m", "reconciler"]
SECRETS = ("signing.key", "gossip.key", "ca.key", "issuer.key")
PUBLIC = ("signing.pub", "trust.yaml", "ca.crt", "issuer.crt")


def myco(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MYCO, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def one_line_error(done: subprocess.CompletedProcess[str], starts: str) -> None:
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"myco: error: {starts}"), done.stderr


def app(root: Path, name: str) -> Path:
    """A one-app garden file whose spore can be built (a tiny payload)."""
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "app.py").write_text("print('hi')\n")
    path = root / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: myco/v1
            kind: Spore
            metadata: {{name: {name}}}
            spec: {{version: "1.0.0", source: ./src, command: [python3, app.py]}}
            """
        )
    )
    return path


def test_init_writes_a_usable_identity_and_says_where(tmp_path: Path) -> None:
    ident = tmp_path / "identity"
    done = myco("init", str(ident), "--apps", "billing", "team-a-*")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    written = {p.name for p in ident.iterdir()}
    assert written == set(SECRETS) | set(PUBLIC)
    for name in SECRETS:
        assert (ident / name).stat().st_mode & 0o777 == 0o600, name
    for name in PUBLIC:
        assert (ident / name).stat().st_mode & 0o077 == 0o044, name  # others may read them
    # The output names every file it wrote (a path or, for the issuing CA, a file name).
    out = done.stdout
    assert out.splitlines()[0] == f"created a mesh identity in {ident}:"
    for name in written:
        assert str(ident / name) in out or f" {name} " in out, name
    assert "apps: billing, team-a-*" in out
    assert "keep it offline (mode 0600)" in out

    # The signing key signs spores the trust policy accepts, for the apps given only.
    for name in ("team-a-web", "payroll"):
        built = myco(
            "build", str(app(tmp_path / "garden", name)), "--key", str(ident / "signing.key"),
            "--out", str(tmp_path / "out"), "--json", "--state", str(tmp_path / "state"),
        )  # fmt: skip
        assert built.returncode == 0, built.stderr
        spore = json.loads(built.stdout)["path"]
        verified = myco("verify", spore, "--trust", str(ident / "trust.yaml"))
        if name == "payroll":
            assert verified.returncode == 1
            assert verified.stderr.startswith("myco: error: "), verified.stderr
            assert "not trusted for app 'payroll'" in verified.stderr
        else:
            assert verified.returncode == 0, verified.stderr
    # The issuing CA issues a member certificate chained to the root it printed.
    issued = myco(
        "cert", "issue", "--ca", str(ident), "--role", "agent", "--name", "web-3",
        "--out", str(tmp_path / "web-3"),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    assert (tmp_path / "web-3" / "ca.crt").read_bytes() == (ident / "ca.crt").read_bytes()
    assert CADir(ident).issuer().mesh == "myco"
    assert Keyring.load(ident / "gossip.key").primary  # the keyring loads
    # An identity `myco init` made is one `myco up` uses as it is.
    _, created = ensure_identity(ident)
    assert not created


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    ident = tmp_path / "identity"
    ident.mkdir()
    (ident / "gossip.key").write_text("a keyring already in use\n")  # one file is enough
    one_line_error(myco("init", str(ident)), f"an identity already exists in {ident}")
    assert [p.name for p in ident.iterdir()] == ["gossip.key"]  # nothing written
    assert (ident / "gossip.key").read_text() == "a keyring already in use\n"

    forced = myco("init", str(ident), "--force")
    assert forced.returncode == 0, forced.stderr
    first = {name: (ident / name).read_bytes() for name in (*SECRETS, *PUBLIC)}
    assert Keyring.load(ident / "gossip.key").primary
    one_line_error(myco("init", str(ident)), f"an identity already exists in {ident}")
    assert {name: (ident / name).read_bytes() for name in first} == first  # untouched

    again = myco("init", str(ident), "--force")
    assert again.returncode == 0, again.stderr
    for name in SECRETS:  # every secret replaced, and still private
        assert (ident / name).read_bytes() != first[name], name
        assert (ident / name).stat().st_mode & 0o777 == 0o600, name
    assert sorted(p.name for p in ident.iterdir()) == sorted(first)  # no temporary left


@pytest.mark.parametrize("where", ["a-file", "a-file/identity"])
def test_a_file_in_the_way_is_one_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    done = myco("init", str(tmp_path / where))
    one_line_error(done, f"cannot make the identity directory {tmp_path / where}: ")
    assert done.stderr.rstrip().endswith("a file is in the way")
    assert (tmp_path / "a-file").read_text() == "not a directory\n"


def test_init_defaults_to_the_state_directory(tmp_path: Path) -> None:
    done = myco("init", "--state", "st", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where = tmp_path / "st" / "identity"
    assert done.stdout.splitlines()[0] == f"created a mesh identity in {where}:"
    assert {p.name for p in where.iterdir()} == set(SECRETS) | set(PUBLIC)
