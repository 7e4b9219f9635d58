"""Reproducible dependency builds, vendored into a spore's payload (docs/spore.md).

A :class:`~reconciler.model.Build` of a DNA runs in a fresh temporary directory with the
package index the host is configured for (plain ``pip``/``npm``: pip.conf,
``PIP_INDEX_URL``, ``.npmrc`` apply):

* ``python``: ``pip install --no-deps --no-compile --target <out>/_vendor/python -r LOCK``
  (``--require-hashes`` when the lock has hashes); every requirement must be pinned
  ``name==version`` — anything else is refused as not reproducible, at its line;
* ``node``: ``npm ci --omit=dev`` beside copies of ``package.json`` and the lock file; the
  result is ``node_modules/`` beside the lock file;
* ``command``: the argv runs in a fresh copy of the source; the declared ``outputs`` (which
  must resolve inside that copy) are the result, at their own paths.

The result is normalised so that two clean builds of the same inputs are byte-identical:
no ``__pycache__``/``*.pyc``, no ``bin/`` scripts (their shebangs name the build's
interpreter), no ``RECORD``/``INSTALLER``/``REQUESTED``/``direct_url.json`` in
``*.dist-info`` (paths and installer details), no ``node_modules/.bin`` (symlinks) or
``node_modules/.package-lock.json``; a file that still names the build directory is
refused. Timestamps, order and modes are fixed by the spore builder itself.

Progress goes to a ``progress`` callback as :class:`BuildStep` values (the app, the step,
the package count when known, the time since the build began); an installer that runs
long reports ``... running (Ns)`` every ``BuildSettings.heartbeat_s``. A failure is a
:class:`BuildError` whose message is one line and whose ``log`` holds the installer's last
lines (at most :data:`LOG_LINES` lines, :data:`LOG_BYTES` bytes).

Builds are cached by the hash of their inputs in ``<cache>/<hash>/`` (``out/`` + a
``result.json``), made in ``<cache>/tmp/`` and renamed into place (atomic): a hit costs no
network and no installer run. The platform is ``"any"`` unless the output holds compiled
code (``*.so``, ``*.node``): then the builder host's tag (:mod:`.platforms`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.errors import SporeError
from reconciler.model import Build, Dna
from reconciler.spore.archive import DEFAULT_LIMITS
from reconciler.spore.build import (
    BuiltSpore,
    SourceFile,
    build_dir,
    build_spore,
    hash_file,
    scan_source,
    source_files,
)
from reconciler.spore.platforms import ANY, node_platform, python_platform, target_platform

log = logging.getLogger("myco.spore.deps")


@dataclass(frozen=True)
class BuildStep:
    """One step of a build, for display: ``str()`` is the one-line ``"<app>: <text>"``."""

    app: str
    text: str  # "pip install of 12 pinned package(s)", "npm ci finished (4.1s)", ...
    elapsed_s: float  # since this build began
    packages: int | None = None  # when known
    final: bool = False  # the build is over (done or cached): nothing more will follow

    def __str__(self) -> str:
        return f"{self.app}: {self.text}"

    def line(self) -> str:
        """How ``myco build``, ``myco apply`` and ``myco up`` print it (:func:`build_line`)."""
        return build_line(self.app, self.text, self.elapsed_s, final=self.final)


def build_line(app: str, step: str, elapsed_s: float, *, final: bool = False) -> str:
    """``<app>: building: <step> [<elapsed>s]`` (``built:`` for the last step), one line."""
    step = " ".join(step.splitlines())
    return f"{app}: {'built' if final else 'building'}: {step} [{elapsed_s:.1f}s]"


Progress = Callable[[BuildStep], None]

CACHE_VERSION = "myco.build-cache/v1"
RESULT = "result.json"
#: SOURCE_DATE_EPOCH for build tools: the spores' fixed timestamp (1980-01-01).
SOURCE_DATE_EPOCH = "315532800"
TAIL_LINES = 6  # in the one-line error
LOG_LINES = 20  # in BuildError.log (an app's status, `myco build`)
LOG_BYTES = 4096
DIST_INFO_DROP = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


class BuildError(SporeError):
    """A dependency build failed or was refused: one line, and in ``log`` the installer's or
    build command's last output lines ("" for a refusal that ran nothing)."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class BuildSettings:
    """How builds run (none of this is an input: changing it rebuilds nothing)."""

    timeout_s: float = 600.0  # per installer or command run
    max_output_bytes: int = 1 << 30  # the whole build output
    max_output_files: int = 9_000  # a spore holds at most 10,000 entries
    python: str = sys.executable  # the interpreter whose pip installs (and whose tag is used)
    npm: str = "npm"
    heartbeat_s: float = 10.0  # a long installer run reports "... running (Ns)" this often


@dataclass(frozen=True)
class BuildResult:
    """A build's output, ready to be packed: ``files`` carry their payload paths."""

    inputs: str  # SHA-256 of the build's inputs: the cache key
    root: Path  # the cache entry's ``out/``: the payload tree the build adds
    files: tuple[SourceFile, ...]
    platform: str  # "any" or the builder host's tag
    packages: int
    size: int
    cached: bool
    elapsed_s: float


def _say(
    progress: Progress | None,
    app: str,
    text: str,
    started: float,
    packages: int | None = None,
    final: bool = False,
) -> None:
    step = BuildStep(app, text, round(time.monotonic() - started, 1), packages, final)
    if progress is not None:
        progress(step)
    else:
        log.info("%s", step)


# -- the lock files ------------------------------------------------------------------------

_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*"
    r"===?\s*(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*)\s*(?:;.*)?$"
)
_HASH = re.compile(r"\s--hash[=\s]\s*(\S+)")
_ALLOWED_OPTIONS = ("--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--no-index")


@dataclass(frozen=True)
class Lock:
    """A pinned Python lock file: how many requirements, and whether they carry hashes."""

    count: int
    hashed: bool


def check_requirements(path: Path, shown: str) -> Lock:
    """Every requirement of ``path`` is ``name==version``; hashes on all or none of them.

    ``shown`` is how the file is named in errors (``shown:line: ...``).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BuildError(f"{shown}: the lock file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"{shown}: cannot read the lock file: {exc}") from None
    count = hashed = 0
    logical = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not logical:
            start = number
        line = raw if raw.lstrip().startswith("#") else re.sub(r"(^|\s)#.*$", "", raw)
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical = (logical + line).strip()
        if not logical:
            continue
        entry, logical = logical, ""
        if entry.startswith("#"):
            continue
        if entry.startswith("-"):
            if entry.split("=", 1)[0].split()[0] in _ALLOWED_OPTIONS:
                continue
            raise BuildError(
                f"{shown}:{start}: option {entry.split()[0]!r} is not allowed in a lock "
                "(only index options; list every requirement in this one file)"
            )
        hashes = _HASH.findall(" " + entry)
        requirement = _HASH.sub("", " " + entry).strip()
        if not _PIN.match(requirement):
            raise BuildError(
                f"{shown}:{start}: requirement {requirement!r} is not pinned as name==version "
                "(refused: not reproducible)"
            )
        count += 1
        hashed += bool(hashes)
    if hashed and hashed != count:
        raise BuildError(f"{shown}: some requirements have --hash and others not: hash them all")
    return Lock(count, bool(hashed))


def _node_lock(path: Path, shown: str) -> int:
    """The number of production packages in a package-lock.json (v2 or v3)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"{shown}: the lock file does not exist") from None
    except (OSError, ValueError) as exc:
        raise BuildError(f"{shown}: not a readable package-lock.json: {exc}") from None
    packages = data.get("packages") if isinstance(data, dict) else None
    if not isinstance(packages, dict) or data.get("lockfileVersion", 0) < 2:
        raise BuildError(f"{shown}: needs lockfileVersion 2 or 3 (npm 7 or later)")
    return sum(
        1
        for key, value in packages.items()
        if key.startswith("node_modules/") and not (isinstance(value, dict) and value.get("dev"))
    )


# -- inputs and the cache ------------------------------------------------------------------


def _lock_files(build: Build) -> list[str]:
    if build.kind == "python":
        return [build.requirements]
    if build.kind == "node":
        beside = os.path.dirname(build.lockfile)
        return [build.lockfile, os.path.join(beside, "package.json")]
    return []


def build_inputs(dna: Dna, files: Sequence[SourceFile]) -> str:
    """The cache key: the build definition, the platform built for, and the input files
    (the lock files of a python/node build; every source file of a command build)."""
    build = dna.build
    assert build is not None
    by_path = {f.path: f for f in files}
    if build.kind == "command":
        wanted = [f.path for f in files]
    else:
        wanted = [os.path.normpath(p) for p in _lock_files(build)]
        npmrc = os.path.normpath(os.path.join(os.path.dirname(build.lockfile), ".npmrc"))
        if build.kind == "node" and npmrc in by_path:
            wanted.append(npmrc)
    inputs = []
    for path in wanted:
        src = by_path.get(path)
        if src is None:
            raise BuildError(f"{dna.source / path}: the build's input does not exist")
        digest, size = hash_file(src.source)
        inputs.append([path, digest, size, src.mode])
    doc = {
        "v": CACHE_VERSION,
        "kind": build.kind,
        "requirements": build.requirements,
        "lockfile": build.lockfile,
        "command": list(build.command),
        "outputs": list(build.outputs),
        "target": target_platform(build.kind),
        "inputs": inputs,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _load_cached(entry: Path, inputs: str) -> BuildResult | None:
    try:
        meta = json.loads((entry / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    out = entry / "out"
    files = tuple(scan_source(out))
    return BuildResult(
        inputs=inputs,
        root=out,
        files=files,
        platform=str(meta["platform"]),
        packages=int(meta["packages"]),
        size=int(meta["size"]),
        cached=True,
        elapsed_s=float(meta.get("elapsed_s", 0.0)),
    )


def run_build(
    dna: Dna,
    files: Sequence[SourceFile],
    cache_dir: Path,
    settings: BuildSettings | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """The output of ``dna.build`` from the cache, or built now and cached."""
    build = dna.build
    assert build is not None
    settings = settings or BuildSettings()
    started = time.monotonic()
    inputs = build_inputs(dna, files)
    cache_dir = Path(cache_dir).absolute()  # installers run elsewhere: no relative paths
    entry = cache_dir / inputs
    cached = _load_cached(entry, inputs)
    if cached is not None:
        _say(
            progress,
            dna.name,
            f"{build.kind} build cached ({inputs[:12]}, {cached.packages} package(s))",
            started,
            cached.packages,
            final=True,
        )
        return cached
    tmp_root = cache_dir / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=tmp_root))
    try:
        packages = _build_into(dna, files, work, settings, progress, started)
        out = work / "out"
        _normalise(out, work)
        result_files = scan_source(out)
        size = sum(f.source.stat().st_size for f in result_files)
        _check_limits(dna, result_files, size, settings)
        platform = _platform_of(build, result_files)
        elapsed = time.monotonic() - started
        meta = {"platform": platform, "packages": packages, "size": size, "elapsed_s": elapsed}
        (work / RESULT).write_text(json.dumps(meta, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.rename(work, entry)  # atomic; fails if another builder got there first
        except OSError:
            if not (entry / RESULT).exists():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    result = _load_cached(entry, inputs)
    if result is None:
        raise BuildError(f"build cache entry {entry} is unreadable")
    _say(
        progress,
        dna.name,
        f"{build.kind} build done: {result.packages} package(s), "
        f"{len(result.files)} files, {result.size / 1e6:.1f} MB, platform {result.platform}, "
        f"{elapsed:.1f}s",
        started,
        result.packages,
        final=True,
    )
    return replace(result, cached=False, elapsed_s=elapsed)


def _build_into(
    dna: Dna,
    files: Sequence[SourceFile],
    work: Path,
    settings: BuildSettings,
    progress: Progress | None,
    started: float,
) -> int:
    """Run the build in ``work``; its result goes to ``work/out``. Returns the package count."""
    build = dna.build
    assert build is not None
    out = work / "out"
    out.mkdir()
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHONDONTWRITEBYTECODE": "1"}
    ctx = _Run(dna.name, work, env, settings, progress, started)
    if build.kind == "python":
        lock_path = dna.source / build.requirements
        lock = check_requirements(lock_path, str(lock_path))
        copy = work / "requirements.txt"
        shutil.copyfile(lock_path, copy)
        target = out / build_dir(build)
        argv = [settings.python, "-m", "pip", "install", "--no-deps", "--no-compile"]
        argv += ["--no-input", "--disable-pip-version-check", "--no-warn-script-location"]
        argv += ["--progress-bar", "off", "--target", str(target), "-r", str(copy)]
        if lock.hashed:
            argv.append("--require-hashes")
        _say(
            progress,
            dna.name,
            f"pip install of {lock.count} pinned package(s)"
            + (" (hashes required)" if lock.hashed else ""),
            started,
            lock.count,
        )
        _run(ctx, argv, work, "pip install", lock.count)
        return lock.count
    if build.kind == "node":
        lock_path = dna.source / build.lockfile
        count = _node_lock(lock_path, str(lock_path))
        proj = work / "project"
        proj.mkdir()
        for name in ("package-lock.json", "package.json", ".npmrc"):
            src = lock_path.parent / (lock_path.name if name == "package-lock.json" else name)
            if src.is_file():
                shutil.copyfile(src, proj / name)
        argv = [settings.npm, "ci", "--omit=dev", "--no-audit", "--no-fund"]
        argv += ["--no-update-notifier"]
        _say(progress, dna.name, f"npm ci of {count} package(s)", started, count)
        _run(ctx, argv, proj, "npm ci", count)
        dest = out / build_dir(build)
        dest.parent.mkdir(parents=True, exist_ok=True)
        modules = proj / "node_modules"
        if modules.is_dir():
            os.rename(modules, dest)
        else:
            dest.mkdir()
        return count
    # command: a fresh copy of the source, the argv run in it, the outputs taken out
    copy = work / "src"
    for f in files:
        dst = copy / f.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.source, dst)
        os.chmod(dst, f.mode)
    _say(progress, dna.name, f"running {_argv_text(build.command)}", started)
    _run(ctx, list(build.command), copy, "build command")
    base = copy.resolve()
    for rel in build.outputs:
        produced = copy / rel
        resolved = produced.resolve()
        if not resolved.is_relative_to(base) or resolved == base:
            raise BuildError(f"{dna.name}: output {rel!r} resolves outside the build directory")
        if produced.is_symlink() or not (produced.is_file() or produced.is_dir()):
            what = "is a symlink" if produced.is_symlink() else "was not produced"
            raise BuildError(f"{dna.name}: output {rel!r} {what}")
        dest = out / os.path.normpath(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(produced, dest)
    return 0


def _argv_text(argv: Sequence[str], limit: int = 200) -> str:
    """An argv as one shell-quoted line (newlines escaped), cut at ``limit`` characters."""
    text = shlex.join(argv).replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _last_lines(log_file: Path) -> list[str]:
    """The non-blank last lines of a run's output (each cut at 240 characters)."""
    try:
        with open(log_file, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [ln.rstrip()[:240] for ln in text.splitlines() if ln.strip()]


def _tail(lines: list[str]) -> str:
    """The one-line form: the last :data:`TAIL_LINES` lines joined by `` | ``."""
    return " | ".join(ln.strip() for ln in lines[-TAIL_LINES:])


def _log(lines: list[str]) -> str:
    """The bounded multi-line form: at most :data:`LOG_LINES` lines and :data:`LOG_BYTES`."""
    kept: list[str] = []
    size = 0
    for line in reversed(lines[-LOG_LINES:]):
        size += len(line.encode()) + 1
        if size > LOG_BYTES:
            break
        kept.append(line)
    return "\n".join(reversed(kept))


@dataclass(frozen=True)
class _Run:
    """What every installer run of one build shares."""

    app: str
    work: Path  # the build's temporary directory (logs go there)
    env: dict[str, str]
    settings: BuildSettings
    progress: Progress | None
    started: float


def _run(ctx: _Run, argv: list[str], cwd: Path, what: str, packages: int | None = None) -> None:
    """Run one installer or command, bounded by the timeout; its output goes to a log file
    whose last lines make the error. Says ``<what> running (Ns)`` every heartbeat."""
    app, settings, progress, started = ctx.app, ctx.settings, ctx.progress, ctx.started
    env = ctx.env
    log_file = ctx.work / f"{what.replace(' ', '-')}.log"
    with open(log_file, "wb") as out:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: a timeout kills it and its children
            )
        except OSError as exc:
            raise BuildError(f"{app}: cannot run {what} ({argv[0]}): {exc.strerror}") from None
        began = time.monotonic()
        try:
            while True:
                left = began + settings.timeout_s - time.monotonic()
                try:
                    code = proc.wait(timeout=max(0.0, min(left, settings.heartbeat_s)))
                    break
                except subprocess.TimeoutExpired:
                    if left <= settings.heartbeat_s:
                        raise
                    ran = time.monotonic() - began
                    _say(progress, app, f"{what} running ({ran:.0f}s)", started, packages)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            lines = _last_lines(log_file)
            raise BuildError(
                f"{app}: {what} timed out after {settings.timeout_s:g}s"
                + (f": {_tail(lines)}" if lines else ""),
                _log(lines),
            ) from None
        finally:
            if proc.poll() is None:  # interrupted: never leave an installer behind
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if code != 0:
        lines = _last_lines(log_file)
        raise BuildError(
            f"{app}: {what} failed (exit {code})" + (f": {_tail(lines)}" if lines else ""),
            _log(lines),
        )
    _say(progress, app, f"{what} finished ({time.monotonic() - started:.1f}s)", started, packages)


# -- normalising the output ----------------------------------------------------------------


def _normalise(out: Path, work: Path) -> None:
    """Strip what differs between two clean builds (see the module's docstring)."""
    for dirpath, dirnames, filenames in os.walk(out, topdown=True):
        here = Path(dirpath)
        for d in list(dirnames):
            full = here / d
            drop = d == "__pycache__" or (d == ".bin" and here.name == "node_modules")
            drop = drop or (d == "bin" and here == out / "_vendor" / "python")
            if drop:
                _remove(full)
                dirnames.remove(d)
            elif full.is_symlink():
                raise BuildError(f"build output {full.relative_to(out)} is a symlink (refused)")
        for name in filenames:
            full = here / name
            drop = name.endswith((".pyc", ".pyo"))
            drop = drop or (here.name.endswith(".dist-info") and name in DIST_INFO_DROP)
            drop = drop or (name == ".package-lock.json" and here.name == "node_modules")
            if drop:
                full.unlink()
            elif full.is_symlink():
                raise BuildError(f"build output {full.relative_to(out)} is a symlink (refused)")
    _refuse_build_paths(out, work)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _refuse_build_paths(out: Path, work: Path) -> None:
    """A file naming the build's temporary directory would differ in every build."""
    needles = {str(work).encode(), str(work.resolve()).encode()}
    for f in scan_source(out):
        data = f.source.read_bytes()
        if any(n in data for n in needles):
            raise BuildError(
                f"build output {f.path} embeds the build directory's path (not reproducible)"
            )


def _check_limits(
    dna: Dna, files: Sequence[SourceFile], size: int, settings: BuildSettings
) -> None:
    if size > settings.max_output_bytes:
        raise BuildError(
            f"{dna.name}: build output is {size / 1e6:.1f} MB, over the limit of "
            f"{settings.max_output_bytes / 1e6:.1f} MB"
        )
    if len(files) > settings.max_output_files:
        raise BuildError(
            f"{dna.name}: build output has {len(files)} files, over the limit of "
            f"{settings.max_output_files}"
        )


def _platform_of(build: Build, files: Sequence[SourceFile]) -> str:
    native_py = any(re.search(r"\.(so|pyd|dylib)(\.[0-9.]+)?$", f.path) for f in files)
    native_node = any(f.path.endswith(".node") for f in files)
    if build.kind == "node":
        return (node_platform() or "node-unknown") if native_py or native_node else ANY
    if native_py:
        return python_platform()
    if native_node:
        return node_platform() or "node-unknown"
    return ANY


# -- the whole spore -----------------------------------------------------------------------


def build_app_spore(
    dna: Dna,
    key: Ed25519PrivateKey | Path,
    out_dir: Path,
    cache_dir: Path,
    settings: BuildSettings | None = None,
    progress: Progress | None = None,
) -> BuiltSpore:
    """Build the spore of ``dna``: its source files plus its dependency build, if any."""
    files = source_files(dna)
    if dna.build is None:
        return build_spore(dna, key, out_dir, files=files)
    result = run_build(dna, files, cache_dir, settings, progress)
    extra = list(result.files)  # the cache entry's tree holds payload paths already
    taken = {f.path for f in files}
    for f in extra:
        if f.path in taken:
            raise BuildError(f"{dna.name}: build output {f.path} collides with a source file")
    if len(files) + len(extra) + 2 > DEFAULT_LIMITS.max_entries:
        raise BuildError(
            f"{dna.name}: {len(files)} source and {len(extra)} built files: over a spore's "
            f"limit of {DEFAULT_LIMITS.max_entries} entries"
        )
    built = replace(dna, build=replace(dna.build, platform=result.platform))
    return build_spore(built, key, out_dir, files=[*files, *extra])
