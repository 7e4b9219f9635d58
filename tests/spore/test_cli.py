"""The spore and repo verbs end to end through ``reconciler.cli.main``."""

from __future__ import annotations

import json
import shutil
import stat
import sys
from pathlib import Path

from reconciler.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_keygen_build_verify_publish_ls(capsys, tmp_path):
    k = tmp_path / "keys"
    code, out, _ = run(capsys, "keygen", "--out", str(k), "--name", "dev")
    assert code == 0
    assert "ed25519:" in out
    assert stat.S_IMODE((k / "dev.key").stat().st_mode) == 0o600
    code, _, err = run(capsys, "keygen", "--out", str(k), "--name", "dev")
    assert code == 1
    assert err.startswith("myco: error:")
    assert "--force" in err
    assert run(capsys, "keygen", "--out", str(k), "--name", "dev", "--force")[0] == 0

    out_dir = tmp_path / "out"
    code, out, _ = run(
        capsys,
        "build",
        str(ROOT / "garden" / "billing.yaml"),
        "--key",
        str(k / "dev.key"),
        "--out",
        str(out_dir),
    )
    assert code == 0
    spores = list(out_dir.glob("*.spore"))
    assert [p.name for p in spores] == ["billing-1.0.0.spore"]
    assert f"spore:  {spores[0]}" in out
    digest = out.split("digest: ")[1].strip()
    assert len(digest) == 64

    code, out, _ = run(capsys, "verify", str(spores[0]), "--trust", str(k / "dev.pub"))
    assert code == 0
    for word in ("billing", "1.0.0", digest, "signer:", "dev"):
        assert word in out
    code, out, _ = run(capsys, "verify", str(spores[0]), "--trust", str(k / "dev.pub"), "--json")
    doc = json.loads(out)
    assert (doc["name"], doc["version"], doc["digest"]) == ("billing", "1.0.0", digest)

    repo = tmp_path / "repo"
    code, out, _ = run(capsys, "publish", str(spores[0]), "--repo", str(repo))
    assert (code, out.strip()) == (0, digest)
    code, out, _ = run(capsys, "repo", "ls", "--repo", str(repo))
    assert code == 0
    assert out.splitlines()[1].split() == ["billing", "1.0.0", digest]
    code, out, _ = run(capsys, "repo", "ls", "--repo", str(repo), "--json")
    assert json.loads(out)[0]["digest"] == digest

    dest = tmp_path / "x"
    code, out, _ = run(
        capsys, "extract", str(spores[0]), "--trust", str(k / "dev.pub"), "--out", str(dest)
    )
    assert code == 0
    assert (dest / "server.py").is_file()


def test_verify_failures_are_one_line_exit_1(capsys, built, other_keys, tmp_path):
    code, out, err = run(capsys, "verify", str(built.path), "--trust", str(other_keys.pub))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("myco: error: signer ")
    junk = tmp_path / "junk.spore"
    junk.write_text("no zip")
    code, _, err = run(capsys, "verify", str(junk), "--trust", str(other_keys.pub))
    assert code == 1
    assert err.startswith("myco: error: not a spore")
    code, _, err = run(capsys, "verify", str(built.path), "--trust", str(tmp_path / "none"))
    assert code == 1
    assert err.count("\n") == 1
    assert run(capsys, "verify", str(built.path))[0] == 2  # --trust is required


def test_seed_form_build(capsys, keys, tmp_path):
    binary = tmp_path / "bin" / "billing"
    binary.parent.mkdir()
    binary.write_bytes(b"\x7fELF pretend binary")
    seed = tmp_path / "billing.json"
    seed.write_text(
        json.dumps(
            {
                "kind": "Spore",
                "name": "billing",
                "version": "v0.1.0",
                "command": "billing",
                "args": [],
                "env": {"GREETING": "Hello from billing service"},
                "provides": ["http"],
                "nutrients": {"cpu_milli": 200, "memory_mb": 128},
                "slo": {"p99_budget_ms": 300},
                "security": {"lsm_profile": "demo", "read_only_fs": False},
            }
        )
    )
    argv = ["build", "--manifest", str(seed), "--binary", str(binary)]
    argv += ["--key", str(keys.key), "--out", str(tmp_path / "out"), "--json"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    doc = json.loads(out)
    assert doc["name"] == "billing"
    code, out, _ = run(capsys, "verify", doc["path"], "--trust", str(keys.pub), "--json")
    assert code == 0
    from reconciler.spore.trust import TrustPolicy
    from reconciler.spore.verify import verify_spore

    m = verify_spore(Path(doc["path"]), TrustPolicy.load([keys.pub])).manifest
    assert m.command == ("./billing",)
    assert [(f.path, f.mode) for f in m.files] == [("billing", 0o755)]
    assert m.nutrients.memory_mb == 128
    assert m.slo.p99_budget_ms == 300
    seed.write_text('{"name": "billing", "version": "1", "replicas": 3}')
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert "unknown field" in err


def test_multi_document_manifest_needs_app(capsys, keys, tmp_path):
    shutil.copytree(ROOT / "workloads" / "billing", tmp_path / "w" / "billing")
    doc = (ROOT / "garden" / "billing.yaml").read_text().replace("../workloads/", "w/")
    two = (
        doc
        + "---\n"
        + doc.replace("name: billing", "name: billing-two").replace(
            "prefix: /billing", "prefix: /billing-two"
        )
    )
    f = tmp_path / "apps.yaml"
    f.write_text(two)
    base = ["build", str(f), "--key", str(keys.key), "--out", str(tmp_path / "out")]
    code, _, err = run(capsys, *base)
    assert code == 2
    assert "--app" in err
    code, _, err = run(capsys, *base, "--app", "nope")
    assert code == 2
    assert run(capsys, *base, "--app", "billing-two")[0] == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["billing-two-1.0.0.spore"]


def test_invalid_manifest_prints_its_problems(capsys, keys, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: myco/v1\nkind: Spore\nmetadata: {name: x}\nspec: {replicas: 2}\n")
    code, _, err = run(
        capsys, "build", str(f), "--key", str(keys.key), "--out", str(tmp_path / "o")
    )
    assert code == 1
    assert f"{f}:" in err
    assert not (tmp_path / "o").exists()


def _command_build_app(tmp_path: Path, script: str) -> Path:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    (src / "make.py").write_text(script)
    (src / "run.sh").write_text("#!/bin/sh\n")
    doc = tmp_path / "tool.yaml"
    doc.write_text(
        "apiVersion: myco/v1\nkind: Spore\nmetadata: {name: tool}\nspec:\n"
        '  version: "1"\n  source: ./src\n  command: ["./run.sh"]\n'
        f'  build:\n    command:\n      run: ["{sys.executable}", make.py]\n'
        "      outputs: [dist]\n"
    )
    return doc


def test_build_shows_its_steps_and_a_failed_builds_last_lines(capsys, keys, tmp_path):
    ok = "import os\nprint('making', flush=True)\nos.makedirs('dist')\nopen('dist/x', 'w')\n"
    doc = _command_build_app(tmp_path / "a", ok)
    common = ["--key", str(keys.key), "--out", str(tmp_path / "o"), "--state", str(tmp_path)]
    code, out, err = run(capsys, "build", str(doc), *common)
    assert code == 0, err
    assert "build:  command, platform any" in out
    lines = err.splitlines()
    assert lines[0] == f"myco: tool: building: running {sys.executable} make.py [0.0s]"
    assert lines[1].startswith("myco: tool: building: build command finished (")
    assert lines[2].startswith("myco: tool: built: command build done: 0 package(s), 1 files")
    assert len(lines) == 3
    # the same inputs again: from the cache
    code, _, err = run(capsys, "build", str(doc), *common)
    assert code == 0
    assert err.startswith("myco: tool: built: command build cached (")

    bad = "for i in range(40):\n    print('problem', i)\nraise SystemExit(4)\n"
    doc = _command_build_app(tmp_path / "b", bad)
    code, out, err = run(capsys, "build", str(doc), *common)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("myco: tool: building: running ")
    assert lines[1] == "myco: tool: the build's last output lines:"
    assert lines[2:22] == [f"  | problem {i}" for i in range(20, 40)]
    assert lines[22].startswith("myco: error: tool: build command failed (exit 4): problem 34 |")
    assert len(lines) == 23  # the error itself is one line


def test_build_usage_errors(capsys, keys, tmp_path):
    common = ["--key", str(keys.key), "--out", str(tmp_path)]
    assert run(capsys, "build", *common)[0] == 2
    assert run(capsys, "build", "--manifest", "m.json", *common)[0] == 2
    assert run(capsys, "repo")[0] == 2


def test_demo_walks_through_and_is_repeatable(capsys, tmp_path, monkeypatch):
    shutil.copytree(ROOT / "garden", tmp_path / "garden")
    shutil.copytree(
        ROOT / "workloads", tmp_path / "workloads", ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MYCO_HOME", raising=False)
    code, out, _ = run(capsys, "demo")
    assert code == 0
    for step in ("[1]", "[2]", "[3]", "[4]", "[5]", "ok billing", "ok frontend"):
        assert step in out
    assert (tmp_path / ".myco" / "keys" / "dev.key").is_file()
    first = sorted(p.name for p in (tmp_path / ".myco" / "repo" / "spores").iterdir())
    apps = list((tmp_path / "garden").glob("*.yaml"))
    assert len(first) == len(apps)  # one spore per app of the garden
    code, out2, _ = run(capsys, "demo")
    assert code == 0
    assert "reusing" in out2
    assert sorted(p.name for p in (tmp_path / ".myco" / "repo" / "spores").iterdir()) == first
    monkeypatch.setenv("MYCO_HOME", str(tmp_path / "home"))
    # A garden of one app is enough to see MYCO_HOME honoured (a fresh home rebuilds
    # every spore, dependencies included).
    (tmp_path / "small").mkdir()
    shutil.copy(tmp_path / "garden" / "billing.yaml", tmp_path / "small" / "billing.yaml")
    assert run(capsys, "demo", "--garden", str(tmp_path / "small"))[0] == 0
    assert (tmp_path / "home" / "trust.yaml").is_file()
    code, _, err = run(capsys, "demo", "--garden", str(tmp_path / "none"))
    assert code == 1
    assert "no garden" in err


def test_repo_serve_refuses_a_bad_bind_address(capsys, tmp_path):
    for bad in ("8070", "host:http", "::1:8070", "127.0.0.1:70000"):
        code, _, err = run(capsys, "repo", "serve", "--repo", str(tmp_path), "--bind", bad)
        assert code == 2, bad
        assert err.startswith("myco: error: bad --bind"), err
