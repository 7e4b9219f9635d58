"""The content-addressed spore repository (docs/spore.md).

A spore is stored under its digest, the SHA-256 of its bytes. Layout of ``root``::

    spores/<digest>.spore   the objects (read-only, 0444)
    index/<digest>.json     name, version and size of each object, for ``repo ls``
    dna/<dna-key>           the digest built from a DNA key (see spore.build.dna_key)
    tmp/                    half-written files; renamed into place when complete

Writes are atomic (temp file, fsync, rename; see :mod:`reconciler.files`) and idempotent
(the same bytes land at the same name). Every read through :meth:`SporeRepo.path`
re-hashes the object and refuses it with :class:`CorruptObjectError` if it no longer
matches its name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import CorruptObjectError, NotFoundError, RepoError, SporeError
from reconciler.files import atomic_write, fsync_dir
from reconciler.spore.archive import CHUNK
from reconciler.spore.manifest import canonical_json
from reconciler.spore.verify import file_digest, read_manifest

log = logging.getLogger("myco.repo")

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")

__all__ = ["DIGEST_RE", "RepoEntry", "SporeRepo", "check_digest"]


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is 64 lowercase hex digits, else raise :class:`RepoError`."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise RepoError(f"malformed digest {digest!r}: expected 64 lowercase hex digits")
    return digest


@dataclass(frozen=True, order=True)
class RepoEntry:
    name: str
    version: str
    digest: str
    size: int = 0


class SporeRepo:
    """A directory of spores named by digest. Safe for concurrent writers and readers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._spores = self.root / "spores"
        self._index = self.root / "index"
        self._dna = self.root / "dna"
        self._tmp = self.root / "tmp"

    def _ensure(self) -> None:
        for d in (self._spores, self._index, self._dna, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    def _object(self, digest: str) -> Path:
        return self._spores / f"{check_digest(digest)}.spore"

    # -- writing -------------------------------------------------------------------------

    def put(self, path: Path) -> str:
        """Store the spore at ``path``; return its digest. Atomic and idempotent.

        The spore's structure, manifest and signature are checked (not trust: that is the
        consumer's decision), so the index can name it.
        """
        self._ensure()
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, suffix=".spore")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w+b") as out:
                digest = _copy_hashing(Path(path), out.fileno())
                out.seek(0)
                manifest, _, _ = read_manifest(out)
                size = os.fstat(out.fileno()).st_size
            os.chmod(tmp, 0o444)
            os.replace(tmp, self._object(digest))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        entry = RepoEntry(manifest.name, manifest.version, digest, size)
        self._write_small(self._index / f"{digest}.json", canonical_json(_entry_json(entry)))
        fsync_dir(self._spores)
        log.info("published %s %s as %s", manifest.name, manifest.version, digest)
        return digest

    def record_dna_key(self, key: str, digest: str) -> None:
        """Remember that the DNA with ``key`` builds the spore ``digest``."""
        check_digest(key)
        check_digest(digest)
        self._ensure()
        self._write_small(self._dna / key, digest.encode())

    def _write_small(self, path: Path, data: bytes) -> None:
        atomic_write(path, data)

    # -- reading -------------------------------------------------------------------------

    def has(self, digest: str) -> bool:
        """Whether an object with this digest is stored (not re-hashed)."""
        return self._object(digest).is_file()

    def path(self, digest: str) -> Path:
        """The stored spore's path, after re-checking that its bytes match ``digest``."""
        obj = self._object(digest)
        try:
            fd = os.open(obj, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotFoundError(f"no spore {digest} in {self.root}") from exc
        except OSError as exc:
            raise RepoError(f"cannot read {obj}: {exc.strerror}") from exc
        try:
            actual = file_digest(fd)
        finally:
            os.close(fd)
        if actual != digest:
            log.error("corrupt object %s (hashes to %s)", obj, actual)
            raise CorruptObjectError(
                f"stored spore {digest} is corrupt (its bytes hash to {actual})"
            )
        return obj

    def lookup_dna_key(self, key: str) -> str | None:
        """The digest recorded for a DNA key, if that spore is still stored."""
        check_digest(key)
        try:
            digest = (self._dna / key).read_text().strip()
        except FileNotFoundError:
            return None
        if not DIGEST_RE.match(digest) or not self.has(digest):
            return None
        return digest

    def list(self) -> list[RepoEntry]:
        """Every stored spore with its name and version, sorted by name, version, digest."""
        if not self._spores.is_dir():
            return []
        out: list[RepoEntry] = []
        for obj in self._spores.glob("*.spore"):
            digest = obj.stem
            if not DIGEST_RE.match(digest):
                continue
            out.append(self._entry(digest, obj))
        return sorted(out)

    def _entry(self, digest: str, obj: Path) -> RepoEntry:
        try:
            data = json.loads((self._index / f"{digest}.json").read_bytes())
            return RepoEntry(data["name"], data["version"], digest, int(data["size"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no or bad index entry: read the spore itself
        try:
            with open(obj, "rb") as f:
                manifest, _, _ = read_manifest(f)
            return RepoEntry(manifest.name, manifest.version, digest, obj.stat().st_size)
        except (OSError, SporeError):
            return RepoEntry("?", "?", digest, 0)


def _entry_json(e: RepoEntry) -> dict[str, object]:
    return {"name": e.name, "version": e.version, "digest": e.digest, "size": e.size}


def _copy_hashing(src: Path, out_fd: int) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        f = open(src, "rb", buffering=0)
    except OSError as exc:
        raise RepoError(f"cannot read {src}: {exc.strerror or exc}") from exc
    with f:
        while n := f.readinto(buf):
            h.update(view[:n])
            written = 0
            while written < n:
                written += os.write(out_fd, view[written:n])
    os.fsync(out_fd)
    return h.hexdigest()
