"""Read a garden directory: every ``*.yaml``/``*.yml`` file below it, all problems at once.

:class:`GardenReader` keeps a cache keyed by each file's (mtime, size, inode): after one
file changes only that file is parsed and checked again; the cross-document rules and the
``source`` checks (cheap) run over the whole garden every time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.errors import GardenInvalid, GardenLoadError, GardenSourceError
from reconciler.garden.build import build_app
from reconciler.garden.loader import MAX_FILE_BYTES, Document, Pointer, decode, load_text
from reconciler.garden.rules import Entry, check_garden, check_spec
from reconciler.garden.schema import Problem, check_document, document_name
from reconciler.model import AppSpec, Garden, Origin

log = logging.getLogger("myco.garden")

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class GardenResult:
    """A garden read: the valid apps (``garden.apps``) and every problem found."""

    garden: Garden
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _DocState:
    """One document and what is known about it while its file is unchanged."""

    doc: Document
    problems: list[Problem]  # schema problems (fixed while the file is unchanged)
    name: str | None
    source: str | None = None  # resolved app directory, once it checked out
    locks: tuple[str, ...] = ()  # the build's lock files, checked again on every read
    app: AppSpec | None = None


@dataclass
class _FileEntry:
    stamp: tuple[int, int, int]
    sha: str
    load_problem: Problem | None
    docs: list[_DocState] = field(default_factory=list)


def find_repo_root(path: Path) -> Path | None:
    """The nearest enclosing Git work tree of ``path``, or ``None``."""
    p = path.resolve()
    for candidate in (p, *p.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def _walk(root: str) -> list[str]:
    """Every garden file below ``root`` (relative paths, sorted); hidden entries skipped."""
    out: list[str] = []
    prefix = len(root.rstrip(os.sep)) + 1
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = dirpath[prefix:]
        for name in filenames:
            if name.endswith(SUFFIXES) and not name.startswith("."):
                out.append(os.path.join(rel, name) if rel else name)
    out.sort()
    return out


def document_problems(doc: Document) -> list[Problem]:
    """The schema's problems of one document, then (if none) the rules within it."""
    return check_document(doc) or check_spec(doc)


def autoscale_at(doc: Document) -> str:
    """``path:line:col`` of ``spec.autoscale.max`` ("" without autoscale)."""
    ptr: Pointer = ("spec", "autoscale", "max")
    if ptr not in doc.values:
        return ""
    mark = doc.value_mark(ptr)
    return f"{doc.path}:{mark.line}:{mark.col}"


def check_source(
    doc: Document, manifest: Path, repo_root: Path
) -> tuple[Path | None, Problem | None]:
    """Resolve ``spec.source`` relative to the manifest; it must exist inside ``repo_root``."""
    raw: str = doc.value["spec"]["source"]
    mark = doc.value_mark(("spec", "source"))
    where = (doc.path, mark.line, mark.col)
    resolved = (manifest.parent / raw).resolve()
    if not resolved.is_relative_to(repo_root):
        return None, Problem(*where, f"spec.source: {raw!r} resolves outside the repository root")
    if not resolved.is_dir():
        what = "is not a directory" if resolved.exists() else "does not exist"
        return None, Problem(*where, f"spec.source: {raw!r} {what}")
    return resolved, None


def check_build(doc: Document, source: Path) -> tuple[tuple[str, ...], Problem | None]:
    """The lock files ``spec.build`` names must be regular files inside ``source``.

    Returns the lock files (absolute, to re-check on later reads), or the problem, pointed at
    the value of the ``requirements:`` / ``lockfile:`` key.
    """
    build = doc.value["spec"].get("build") or {}
    wanted: list[tuple[str, str, str]] = []  # (kind, key, file needed beside the lock)
    if "python" in build:
        wanted.append(("python", "requirements", ""))
    if "node" in build:
        wanted += [("node", "lockfile", ""), ("node", "lockfile", "package.json")]
    found: list[str] = []
    for kind, key, beside in wanted:
        raw = str(build[kind][key])
        ptr: Pointer = ("spec", "build", kind, key)
        mark = doc.value_mark(ptr)
        where = f"spec.build.{kind}.{key}"
        lock = (source / raw).resolve()
        path = lock.parent / beside if beside else lock
        if not path.is_relative_to(source):
            message = f"{where}: {raw!r} resolves outside the app's source"
            return (), Problem(doc.path, mark.line, mark.col, message)
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            shown = f"{raw!r} needs {beside!r} beside it, which" if beside else repr(raw)
            message = f"{where}: {shown} {what} in the app's source"
            return (), Problem(doc.path, mark.line, mark.col, message)
        found.append(str(path))
    return tuple(found), None


class GardenReader:
    """Reads one garden directory again and again, re-parsing only what changed.

    A file is parsed again when its (mtime, size, inode) changes; a document's resolved
    ``source`` is kept with it and only checked to still be a directory on later reads.
    """

    def __init__(
        self, root: Path, repo_root: Path | None = None, display: str | None = None
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise GardenSourceError(f"garden directory not found: {self.root}")
        rr = repo_root or find_repo_root(self.root) or self.root
        self.repo_root = rr.resolve()
        self.display = display if display is not None else str(self.root)
        self._cache: dict[str, _FileEntry] = {}

    def _shown(self, rel: str) -> str:
        return os.path.join(self.display, rel) if self.display else rel

    def _load(self, rel: str) -> _FileEntry | None:
        full = os.path.join(self.root, rel)
        try:
            st = os.stat(full)
        except OSError:
            return None  # vanished between listing and reading
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._cache.get(rel)
        if cached is not None and cached.stamp == stamp:
            return cached
        shown = self._shown(rel)
        try:
            with open(full, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            entry = _FileEntry(stamp, "", Problem(shown, 1, 1, f"cannot read file: {exc}"))
        else:
            entry = _FileEntry(stamp, hashlib.sha256(data).hexdigest(), None)
            try:
                docs = load_text(decode(data, shown), shown)
            except GardenLoadError as exc:
                entry.load_problem = Problem(shown, exc.line, exc.col, exc.message)
            else:
                entry.docs = [
                    _DocState(doc, document_problems(doc), document_name(doc)) for doc in docs
                ]
        self._cache[rel] = entry
        return entry

    def forget_sources(self) -> None:
        """Resolve every ``source`` afresh on the next read (e.g. after a checkout moved)."""
        for entry in self._cache.values():
            for state in entry.docs:
                state.source, state.app = None, None

    def _check(self, state: _DocState, rel: str) -> Problem | None:
        """The per-document checks beyond the schema (the app's source); builds the app."""
        if (
            state.source is not None
            and os.path.isdir(state.source)
            and all(os.path.isfile(lock) for lock in state.locks)
        ):
            return None
        state.source, state.app, state.locks = None, None, ()
        resolved, bad = check_source(state.doc, self.root / rel, self.repo_root)
        if bad is not None:
            return bad
        assert resolved is not None
        locks, bad = check_build(state.doc, resolved)
        if bad is not None:
            return bad
        doc = state.doc
        state.source, state.locks = str(resolved), locks
        origin = Origin(doc.path, doc.start.line, doc.start.col)
        state.app = build_app(doc.value, resolved, origin, autoscale_at(doc))
        return None

    def read(self, revision: str | None = None, source: str = "") -> GardenResult:
        files = _walk(str(self.root))
        live = set(files)
        for gone in [p for p in self._cache if p not in live]:
            del self._cache[gone]
        problems: list[Problem] = []
        invalid: list[tuple[str, str]] = []
        entries: list[Entry] = []
        built: dict[int, AppSpec] = {}
        digest = hashlib.sha256()
        for rel in files:
            entry = self._load(rel)
            if entry is None:
                continue
            digest.update(f"{rel}\0{entry.sha}\n".encode())
            if entry.load_problem is not None:
                problems.append(entry.load_problem)
                invalid.append((entry.load_problem.path, str(entry.load_problem)))
                continue
            for state in entry.docs:
                doc_problems = state.problems
                if not doc_problems:
                    bad = self._check(state, rel)
                    if bad is not None:
                        doc_problems = [bad]
                problems.extend(doc_problems)
                ok = not doc_problems and state.app is not None
                if state.name is not None:
                    entries.append(Entry(state.name, state.doc, ok))
                    if ok and state.app is not None:
                        built[id(state.doc)] = state.app
                if doc_problems:
                    label = state.name or f"{state.doc.path}#{state.doc.index}"
                    invalid.append((label, str(doc_problems[0])))
        cross = check_garden(entries)
        apps: list[AppSpec] = []
        for e in entries:
            app = built.get(id(e.doc))
            if e.name in cross:
                if e.valid:  # invalid ones are listed already
                    invalid.append((e.name, str(cross[e.name][0])))
            elif app is not None:
                apps.append(app)
        for plist in cross.values():
            problems.extend(plist)
        problems = sorted(set(problems))
        garden = Garden(
            apps=tuple(apps),
            revision=revision if revision is not None else "sha256:" + digest.hexdigest(),
            source=source or str(self.root),
            invalid=tuple(invalid),
        )
        return GardenResult(garden, problems)


def read_garden(root: Path, repo_root: Path | None = None) -> GardenResult:
    """Read and check a whole garden directory once (see :class:`GardenReader` to re-read)."""
    return GardenReader(Path(root), repo_root).read()


def read_app_file(path: Path, repo_root: Path | None = None) -> list[AppSpec]:
    """The validated apps of one manifest file.

    Raises :class:`GardenLoadError` if the loader refuses the file and
    :class:`GardenInvalid` (``.problems``: every :class:`Problem`) if it has errors.
    ``source`` must resolve inside ``repo_root`` (default: the nearest Git work tree, else
    the file's directory).
    """
    path = Path(path)
    shown = str(path)
    if not path.is_file():
        raise GardenSourceError(f"manifest not found: {path}")
    rr = (repo_root or find_repo_root(path.parent) or path.parent).resolve()
    with path.open("rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    docs = load_text(decode(data, shown), shown)
    problems: list[Problem] = []
    entries: list[Entry] = []
    apps: list[AppSpec] = []
    for doc in docs:
        doc_problems = document_problems(doc)
        if not doc_problems:
            source_path, bad = check_source(doc, path, rr)
            if bad is None:
                assert source_path is not None
                bad = check_build(doc, source_path)[1]
            if bad is not None:
                doc_problems.append(bad)
            else:
                assert source_path is not None
                origin = Origin(shown, doc.start.line, doc.start.col)
                apps.append(build_app(doc.value, source_path, origin, autoscale_at(doc)))
        problems.extend(doc_problems)
        name = document_name(doc)
        if name is not None:
            entries.append(Entry(name, doc, not doc_problems))
    # Within one file only uniqueness can be judged (targets may live in other files).
    for plist in check_garden([e for e in entries if e.valid]).values():
        problems.extend(p for p in plist if "duplicate" in p.message or "route prefix" in p.message)
    if not problems and not apps:
        problems.append(Problem(shown, 1, 1, "the file holds no garden document"))
    if problems:
        raise GardenInvalid([*sorted(set(problems))])
    return apps
