"""Dependency builds (reconciler/spore/deps.py): pins, reproducibility, the cache, the
platform, and every refusal as one clear error. Python builds install small local wheels
(``--no-index --find-links`` in the lock: no network); one module-scoped fixture runs a
real ``npm ci`` against the registry."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.core.model import Desired
from reconciler.model import AppSpec, Build, Deployment, Dna, Garden
from reconciler.reconcile.builder import SporeBuilder, desired_from
from reconciler.repo import SporeRepo
from reconciler.spore.build import dna_key
from reconciler.spore.deps import (
    LOG_BYTES,
    LOG_LINES,
    BuildError,
    BuildSettings,
    BuildStep,
    build_app_spore,
    check_requirements,
)
from reconciler.spore.platforms import python_platform
from reconciler.spore.trust import TrustPolicy
from reconciler.spore.verify import verify_spore
from tests.spore.conftest import KeyPair

# -- a tiny local index ------------------------------------------------------------------


def _wheel(dist: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (py3-none-any) holding ``files``."""
    info = f"{name}-{version}.dist-info"
    entries = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    entries[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    whl = dist / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for path, data in entries.items():
            zf.writestr(path, data)
    return whl


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("index")
    _wheel(dist, "tinypkg", "1.0", {"tinypkg/__init__.py": b"VALUE = 42\n"})
    _wheel(
        dist,
        "tinynative",
        "2.0",
        {
            "tinynative/__init__.py": b"",
            "tinynative/_ext.cpython-311-x86_64-linux-gnu.so": b"\x7fELF not really",
        },
    )
    return dist


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _app(tmp: Path, lock: str, name: str = "api") -> Dna:
    src = tmp / f"{name}-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "app.py").write_text("import tinypkg\nprint(tinypkg.VALUE)\n")
    (src / "requirements.txt").write_text(lock)
    build = Build("python", requirements="requirements.txt")
    return Dna(name, "1.0", src, ("python3", "app.py"), build=build)


def _lock(index: Path, *reqs: str) -> str:
    return f"--no-index\n--find-links {index}\n" + "".join(f"{r}\n" for r in reqs)


# -- the lock file -----------------------------------------------------------------------


def test_pins_hashes_and_continuations_are_read(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.txt"
    lock.write_text(
        "# a comment\n"
        "--index-url https://example.invalid/simple\n"
        "Foo_Bar[extra]==1.2.3 ; python_version >= '3.8' \\\n"
        "    --hash=sha256:aa\n"
        "baz==2.0 --hash=sha256:bb  # trailing comment\n"
    )
    got = check_requirements(lock, "requirements.txt")
    assert (got.count, got.hashed) == (2, True)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "six==1.16.0\nfastapi>=0.100\n",
            "requirements.txt:2: requirement 'fastapi>=0.100' is not pinned as name==version "
            "(refused: not reproducible)",
        ),
        ("six\n", "requirements.txt:1: requirement 'six' is not pinned"),
        ("six==1.*\n", "requirements.txt:1: requirement 'six==1.*' is not pinned"),
        ("six @ https://x/six.whl\n", "requirements.txt:1: requirement 'six @ https"),
        ("-r other.txt\n", "requirements.txt:1: option '-r' is not allowed in a lock"),
        ("-e .\n", "requirements.txt:1: option '-e' is not allowed"),
        ("a==1 --hash=sha256:aa\nb==2\n", "some requirements have --hash and others not"),
    ],
)
def test_unpinned_and_unsupported_requirements_are_refused_at_their_line(
    tmp_path: Path, text: str, error: str
) -> None:
    lock = tmp_path / "requirements.txt"
    lock.write_text(text)
    with pytest.raises(BuildError) as exc:
        check_requirements(lock, "requirements.txt")
    assert error in str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_lock_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"^x/requirements.txt: the lock file does not exist$"):
        check_requirements(tmp_path / "nope", "x/requirements.txt")


# -- python builds -------------------------------------------------------------------------


def test_python_build_is_vendored_normalised_and_reproducible(
    tmp_path: Path, index: Path, keys: KeyPair
) -> None:
    dna = _app(tmp_path, _lock(index, "tinypkg==1.0"))
    seen: list[BuildStep] = []
    a = build_app_spore(
        dna, keys.key, tmp_path / "out-a", tmp_path / "cache-a", progress=seen.append
    )
    # a clean second build: another cache, another temporary directory, a copy of the source
    other = tmp_path / "elsewhere" / "src"
    shutil.copytree(dna.source, other)
    b = build_app_spore(replace(dna, source=other), keys.key, tmp_path / "out-b", tmp_path / "c-b")
    assert a.digest == b.digest
    paths = [f.path for f in a.manifest.files]
    assert "_vendor/python/tinypkg/__init__.py" in paths
    assert "_vendor/python/tinypkg-1.0.dist-info/METADATA" in paths
    assert not [p for p in paths if p.endswith(("RECORD", "INSTALLER", "REQUESTED", ".pyc"))]
    assert not [p for p in paths if "__pycache__" in p or p.startswith("_vendor/python/bin/")]
    assert a.manifest.build == Build("python", requirements="requirements.txt", platform="any")
    # every step names the app, the package count and the time since the build began
    texts = [s.text for s in seen]
    assert texts[0] == "pip install of 1 pinned package(s)"
    assert texts[1].startswith("pip install finished (")
    assert texts[-1].startswith("python build done: 1 package(s), ")
    assert {(s.app, s.packages) for s in seen} == {("api", 1)}
    assert [s.final for s in seen] == [False] * (len(seen) - 1) + [True]
    assert all(0 <= a.elapsed_s <= b.elapsed_s for a, b in zip(seen, seen[1:], strict=False))
    assert seen[-1].line().startswith("api: built: python build done: 1 package(s), ")
    verified = verify_spore(a.path, TrustPolicy.load([keys.pub]), a.digest, deep=True)
    assert verified.manifest.build is not None
    assert verified.manifest.build.platform == "any"


def test_cache_hit_runs_no_installer(tmp_path: Path, index: Path, keys: KeyPair) -> None:
    dna = _app(tmp_path, _lock(index, "tinypkg==1.0"))
    cache = tmp_path / "cache"
    first = build_app_spore(dna, keys.key, tmp_path / "o1", cache)
    # an interpreter that does not exist: any installer run would fail
    broken = BuildSettings(python=str(tmp_path / "no-such-python"))
    seen: list[BuildStep] = []
    again = build_app_spore(dna, keys.key, tmp_path / "o2", cache, broken, seen.append)
    assert again.digest == first.digest
    assert len(seen) == 1
    assert seen[0].final
    assert seen[0].packages == 1
    assert seen[0].text.startswith("python build cached (")
    assert not (cache / "tmp").exists() or not list((cache / "tmp").iterdir())
    # a source change that is no build input: a new spore, but the build still comes from cache
    (dna.source / "app.py").write_text("print('changed')\n")
    changed = build_app_spore(dna, keys.key, tmp_path / "o3", cache, broken)
    assert changed.digest != first.digest
    # the lock changed: a rebuild, which now needs the installer
    (dna.source / "requirements.txt").write_text(_lock(index, "tinynative==2.0"))
    with pytest.raises(BuildError, match="cannot run pip install"):
        build_app_spore(dna, keys.key, tmp_path / "o4", cache, broken)


def test_dna_key_follows_the_build_inputs_only(tmp_path: Path, index: Path) -> None:
    dna = _app(tmp_path, _lock(index, "tinypkg==1.0"))
    key = dna_key(dna)
    assert dna_key(dna) == key
    assert dna_key(replace(dna, build=None)) != key
    assert dna_key(replace(dna, build=Build("python", requirements="app.py"))) != key
    (dna.source / "requirements.txt").write_text(_lock(index, "tinypkg==1.0", "x==1"))
    assert dna_key(dna) != key


def test_compiled_extension_records_the_host_platform(
    tmp_path: Path, index: Path, keys: KeyPair
) -> None:
    dna = _app(tmp_path, _lock(index, "tinynative==2.0"))
    built = build_app_spore(dna, keys.key, tmp_path / "out", tmp_path / "cache")
    assert built.manifest.build is not None
    assert built.manifest.build.platform == python_platform()
    assert python_platform().startswith(f"cp{sys.version_info.major}{sys.version_info.minor}-")


def test_hash_mismatch_fails_with_the_installer_lines(
    tmp_path: Path, index: Path, keys: KeyPair
) -> None:
    wheel = index / "tinypkg-1.0-py3-none-any.whl"
    good = _lock(index, f"tinypkg==1.0 --hash=sha256:{_sha(wheel)}")
    dna = _app(tmp_path, good)
    assert build_app_spore(dna, keys.key, tmp_path / "o1", tmp_path / "c1").manifest.build
    (dna.source / "requirements.txt").write_text(good.replace(_sha(wheel), "0" * 64))
    with pytest.raises(BuildError) as exc:
        build_app_spore(dna, keys.key, tmp_path / "o2", tmp_path / "c2")
    message = str(exc.value)
    assert message.startswith("api: pip install failed (exit 1): ")
    assert "HASHES" in message.upper()
    assert "\n" not in message


def test_installer_failure_shows_its_last_lines(tmp_path: Path, index: Path, keys: KeyPair) -> None:
    dna = _app(tmp_path, _lock(index, "notthere==1.0"))
    with pytest.raises(BuildError) as exc:
        build_app_spore(dna, keys.key, tmp_path / "out", tmp_path / "cache")
    assert "pip install failed (exit 1)" in str(exc.value)
    assert "notthere" in str(exc.value)
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # nothing half-built is kept


def test_output_over_the_size_limit_is_refused(tmp_path: Path, index: Path, keys: KeyPair) -> None:
    dna = _app(tmp_path, _lock(index, "tinypkg==1.0"))
    small = BuildSettings(max_output_bytes=10)
    with pytest.raises(BuildError, match=r"api: build output is .* over the limit of 0.0 MB"):
        build_app_spore(dna, keys.key, tmp_path / "out", tmp_path / "cache", small)


# -- command builds --------------------------------------------------------------------------


def _command_app(tmp: Path, script: str, outputs: tuple[str, ...]) -> Dna:
    src = tmp / "tool-src"
    src.mkdir()
    (src / "make.py").write_text(script)
    build = Build("command", command=(sys.executable, "make.py"), outputs=outputs)
    return Dna("tool", "1.0", src, ("./dist/tool",), build=build)


def test_command_build_vendors_its_declared_outputs(tmp_path: Path, keys: KeyPair) -> None:
    script = (
        "import os\nos.makedirs('dist', exist_ok=True)\n"
        "open('dist/tool', 'w').write('#!/bin/sh\\necho hi\\n')\nos.chmod('dist/tool', 0o755)\n"
        "open('scratch.txt', 'w').write('not an output')\n"
    )
    dna = _command_app(tmp_path, script, ("dist",))
    built = build_app_spore(dna, keys.key, tmp_path / "out", tmp_path / "cache")
    files = {f.path: f.mode for f in built.manifest.files}
    assert files == {"dist/tool": 0o755, "make.py": 0o644}
    assert not (dna.source / "dist").exists()  # it ran in a copy


def test_command_output_outside_the_build_directory_is_refused(
    tmp_path: Path, keys: KeyPair
) -> None:
    script = "import os\nos.symlink('/etc', 'dist')\n"
    dna = _command_app(tmp_path, script, ("dist",))
    with pytest.raises(BuildError, match="tool: output 'dist' resolves outside the build dir"):
        build_app_spore(dna, keys.key, tmp_path / "out", tmp_path / "cache")


def test_command_output_not_produced(tmp_path: Path, keys: KeyPair) -> None:
    dna = _command_app(tmp_path, "pass\n", ("dist",))
    with pytest.raises(BuildError, match="^tool: output 'dist' was not produced$"):
        build_app_spore(dna, keys.key, tmp_path / "out", tmp_path / "cache")


def test_a_hanging_build_is_stopped_by_the_timeout(tmp_path: Path, keys: KeyPair) -> None:
    script = "import time\nprint('working...', flush=True)\ntime.sleep(60)\n"
    dna = _command_app(tmp_path, script, ("dist",))
    with pytest.raises(BuildError, match=r"^tool: build command timed out after 0.5s: working"):
        build_app_spore(
            dna, keys.key, tmp_path / "out", tmp_path / "cache", BuildSettings(timeout_s=0.5)
        )


def test_a_failed_build_keeps_its_last_output_lines_bounded(tmp_path: Path, keys: KeyPair) -> None:
    script = "for i in range(100):\n    print(f'line {i}: ' + 'x' * 300)\nraise SystemExit(3)\n"
    dna = _command_app(tmp_path, script, ("dist",))
    with pytest.raises(BuildError) as exc:
        build_app_spore(dna, keys.key, tmp_path / "out", tmp_path / "cache")
    message = str(exc.value)
    assert message.startswith("tool: build command failed (exit 3): line 94: xxx")
    assert "\n" not in message
    assert "line 99: " in message
    lines = exc.value.log.splitlines()
    assert lines[-1].startswith("line 99: xxx")
    assert len(lines[-1]) == 240
    assert len(exc.value.log.encode()) <= LOG_BYTES  # 4 KB before 20 lines here
    assert lines == [f"line {i}: ".ljust(240, "x") for i in range(100 - len(lines), 100)]
    (tmp_path / "b").mkdir()
    script = "for i in range(50):\n    print(i)\nraise SystemExit(1)\n"
    short = _command_app(tmp_path / "b", script, ())
    with pytest.raises(BuildError) as exc:
        build_app_spore(short, keys.key, tmp_path / "out", tmp_path / "cache")
    assert exc.value.log.splitlines() == [str(i) for i in range(50 - LOG_LINES, 50)]


def test_a_long_installer_run_reports_that_it_is_running(tmp_path: Path, keys: KeyPair) -> None:
    script = "import os, time\ntime.sleep(0.6)\nos.makedirs('dist')\n"
    dna = _command_app(tmp_path, script, ("dist",))
    seen: list[BuildStep] = []
    settings = BuildSettings(heartbeat_s=0.1)
    build_app_spore(dna, keys.key, tmp_path / "out", tmp_path / "cache", settings, seen.append)
    running = [s for s in seen if s.text.startswith("build command running (")]
    assert len(running) >= 2  # one every 0.1 s of the 0.6 s run
    assert seen[0].text == f"running {sys.executable} make.py"
    assert seen[-1].final
    assert seen[-1].line().startswith("tool: built: command build done: ")


def test_output_embedding_the_build_path_is_refused(tmp_path: Path, keys: KeyPair) -> None:
    script = "import os\nos.makedirs('dist')\nopen('dist/where', 'w').write(os.getcwd())\n"
    dna = _command_app(tmp_path, script, ("dist",))
    with pytest.raises(BuildError, match="dist/where embeds the build directory's path"):
        build_app_spore(dna, keys.key, tmp_path / "out", tmp_path / "cache")


# -- the reconciler: one bad build never stops the others -------------------------------


def test_a_failed_build_is_that_apps_status_only(
    tmp_path: Path, index: Path, keys: KeyPair
) -> None:
    good = _app(tmp_path, _lock(index, "tinypkg==1.0"), name="good")
    bad = _app(tmp_path, _lock(index, "tinypkg>=1.0"), name="bad")
    plain = replace(good, name="plain", build=None)
    apps = tuple(AppSpec(d.name, d, Deployment()) for d in (good, bad, plain))
    repo = SporeRepo(tmp_path / "state" / "repo")
    builder = SporeBuilder(repo, keys.key)
    desired: Desired = desired_from(Garden(apps, revision="r1"), builder)
    assert sorted(desired.apps) == ["good", "plain"]
    assert desired.invalid["bad"] == (
        f"spore build failed: {bad.source}/requirements.txt:3: requirement 'tinypkg>=1.0' is "
        "not pinned as name==version (refused: not reproducible)"
    )
    assert (tmp_path / "state" / "build-cache").is_dir()  # beside the repo, under the state
    # built once: the same garden again builds nothing (found by DNA key)
    again = desired_from(Garden(apps, revision="r1"), builder)
    assert again.apps["good"].digest == desired.apps["good"].digest


# -- node ------------------------------------------------------------------------------------

IS_NUMBER = {
    "version": "7.0.0",
    "resolved": "https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz",
    "integrity": "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6"
    "NZWZUBlbGXYxxng==",
    "license": "MIT",
    "engines": {"node": ">=0.12.0"},
}


def _node_app(root: Path) -> Dna:
    src = root / "web"
    src.mkdir(parents=True)
    (src / "server.js").write_text("console.log(require('is-number')(5))\n")
    pkg = {"name": "web", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}}
    (src / "package.json").write_text(json.dumps(pkg))
    lock = {
        "name": "web",
        "version": "1.0.0",
        "lockfileVersion": 3,
        "requires": True,
        "packages": {"": pkg, "node_modules/is-number": IS_NUMBER},
    }
    (src / "package-lock.json").write_text(json.dumps(lock))
    (src / "node_modules" / "stale").mkdir(parents=True)  # a developer's local install
    (src / "node_modules" / "stale" / "index.js").write_text("")
    return Dna(
        "web", "1.0", src, ("node", "server.js"), build=Build("node", lockfile="package-lock.json")
    )


@pytest.fixture(scope="module")
def node_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, list[str]]:
    """One real ``npm ci`` (registry) built twice in different places: digests and paths."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    root = tmp_path_factory.mktemp("node")
    from reconciler.spore.keys import generate_keypair

    key, _ = generate_keypair(root / "keys", "dev")
    digests = []
    paths: list[str] = []
    for side in ("a", "b"):
        dna = _node_app(root / side)
        built = build_app_spore(dna, key, root / side / "out", root / side / "cache")
        digests.append(built.digest)
        paths = [f.path for f in built.manifest.files]
        assert built.manifest.build is not None
        assert built.manifest.build.platform == "any"
    return digests[0], digests[1], paths


def test_node_build_is_reproducible_and_replaces_local_node_modules(
    node_builds: tuple[str, str, list[str]],
) -> None:
    a, b, paths = node_builds
    assert a == b
    assert "node_modules/is-number/index.js" in paths
    assert "node_modules/stale/index.js" not in paths
    assert not [p for p in paths if p.startswith("node_modules/.")]
