"""Build a signed, reproducible spore from a :class:`~reconciler.model.Dna`.

Reproducible: entries are written in a fixed order (``payload/`` sorted by path, then
``manifest.json`` and ``signature.json``) with a fixed timestamp, fixed attributes and modes
normalised to 0644/0755, and Ed25519 signatures are deterministic, so the same source and
DNA give the same bytes. Streaming: files go through in 1 MiB chunks, twice (hash for the
manifest, then copy into the zip while hashing again, so a file edited during the build is
caught rather than signed with the wrong hash).

Files skipped in a source directory: ``.git``, ``.hg``, ``.svn``, ``__pycache__``,
``*.pyc``/``*.pyo`` and ``.DS_Store``. Symlinks and special files are refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import stat
import zipfile
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.errors import SporeError
from reconciler.files import atomic_writer
from reconciler.model import Build, Dna
from reconciler.spore.archive import CHUNK, MANIFEST, PAYLOAD, SIGNATURE, SUFFIX
from reconciler.spore.keys import load_private_key
from reconciler.spore.manifest import FileEntry, PayloadDigest, SporeManifest, check_payload_path
from reconciler.spore.platforms import target_platform
from reconciler.spore.signature import SignatureRecord

log = logging.getLogger("myco.spore")

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__"})
SKIP_NAMES = frozenset({".DS_Store"})
SKIP_SUFFIXES = (".pyc", ".pyo")
DNA_KEY_VERSION = b"myco.dna-key/v1\n"
#: Where a Python build's packages go in the payload (the agent puts it on PYTHONPATH).
VENDOR_PYTHON = "_vendor/python"
# Deflate a file only if a sample of it shrinks to this fraction or less.
_SAMPLE = 256 * 1024
_DEFLATE_IF_BELOW = 0.9


@dataclass(frozen=True)
class SourceFile:
    """One file to pack: its payload path and where to read it."""

    path: str
    source: Path
    mode: int  # 0o644 or 0o755


@dataclass(frozen=True)
class BuiltSpore:
    path: Path
    digest: str  # SHA-256 (hex) of the spore's bytes
    manifest: SporeManifest


def scan_source(root: Path, skip: Collection[str] = ()) -> list[SourceFile]:
    """The files under ``root`` to pack, sorted; refuse symlinks and special files.

    ``skip``: relative POSIX paths (files or folders) left out, e.g. what a build replaces.
    """
    root = Path(root)
    if not root.is_dir():
        raise SporeError(f"source {root} is not a directory")
    found: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_here = here.relative_to(root).as_posix()
        prefix = "" if rel_here == "." else rel_here + "/"
        for d in list(dirnames):
            if d in SKIP_DIRS or prefix + d in skip:
                dirnames.remove(d)
            elif (here / d).is_symlink():
                raise SporeError(f"source {here / d} is a symlink (refused)")
        for name in filenames:
            if name in SKIP_NAMES or name.endswith(SKIP_SUFFIXES) or prefix + name in skip:
                continue
            full = here / name
            st = full.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise SporeError(f"source {full} is not a regular file (refused)")
            rel = full.relative_to(root).as_posix()
            check_payload_path(rel)
            found.append(SourceFile(rel, full, normal_mode(st.st_mode)))
    found.sort(key=lambda s: s.path)
    return found


def build_dir(build: Build) -> str:
    """Where a python or node build's output goes in the payload ("" for a command build,
    whose outputs keep their own paths)."""
    if build.kind == "python":
        return VENDOR_PYTHON
    if build.kind == "node":
        return posixpath.normpath(posixpath.join(posixpath.dirname(build.lockfile), "node_modules"))
    return ""


def replaced_by_build(build: Build | None) -> tuple[str, ...]:
    """Source paths the build's output takes the place of (left out of the source scan: a
    developer's local ``node_modules`` never reaches a spore)."""
    if build is None:
        return ()
    if build.kind == "command":
        return tuple(posixpath.normpath(o) for o in build.outputs)
    return (build_dir(build),)


def source_files(dna: Dna) -> list[SourceFile]:
    """The files of ``dna.source`` that go into its spore (without what a build replaces)."""
    return scan_source(dna.source, replaced_by_build(dna.build))


def normal_mode(st_mode: int) -> int:
    """0755 if anyone may execute the file, else 0644: what Git keeps, so builds agree."""
    return 0o755 if st_mode & 0o111 else 0o644


def hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


def manifest_for(dna: Dna, files: Sequence[SourceFile]) -> SporeManifest:
    entries = []
    for s in files:
        digest, size = hash_file(s.source)
        entries.append(FileEntry(s.path, digest, size, s.mode))
    return SporeManifest.from_dna(dna, entries)


def dna_key(
    dna: Dna, files: Sequence[SourceFile] | None = None, signer: bytes | None = None
) -> str:
    """A stable key of "this DNA with these source files": hashes the files, builds no zip.

    Two DNAs with the same key build byte-identical spores with the same signing key. Pass
    ``signer`` (the raw public key) to make the key change when the signing key does.
    With a dependency build the key covers its inputs: the source files (the lock file is
    one of them), the build definition (signed in the manifest) and the platform this host
    builds for; ``files`` are then the source files only (:func:`source_files`).
    """
    manifest = manifest_for(dna, source_files(dna) if files is None else files)
    h = hashlib.sha256(DNA_KEY_VERSION + manifest.canonical_bytes())
    if dna.build is not None:
        h.update(b"\nbuild-target:" + target_platform(dna.build.kind).encode())
    if signer is not None:
        h.update(b"\nsigner:" + signer)
    return h.hexdigest()


def spore_filename(manifest: SporeManifest) -> str:
    version = re.sub(r"[^A-Za-z0-9._+-]", "_", manifest.version)
    return f"{manifest.name}-{version}{SUFFIX}"


def build_spore(
    dna: Dna,
    key: Ed25519PrivateKey | Path,
    out_dir: Path,
    files: Sequence[SourceFile] | None = None,
) -> BuiltSpore:
    """Build, sign and write ``out_dir/<name>-<version>.spore`` (atomically); return it.

    ``files`` defaults to everything under ``dna.source`` (see :func:`scan_source`). This
    packs files only: a DNA with a dependency build goes through
    :func:`reconciler.spore.deps.build_app_spore`, which runs the build and passes its output.
    """
    private = key if isinstance(key, Ed25519PrivateKey) else load_private_key(key)
    files = source_files(dna) if files is None else sorted(files, key=lambda s: s.path)
    manifest = manifest_for(dna, files)
    target = Path(out_dir) / spore_filename(manifest)
    with atomic_writer(target, 0o644) as out:
        with zipfile.ZipFile(out, "w", allowZip64=True) as zf:
            # Payload first: its bytes are hashed as one region signed in the manifest.
            for src, entry in zip(files, manifest.files, strict=True):
                _write_payload(zf, src, entry)
            out.flush()
            region_end = out.tell()
            region = _digest_of(out.fileno(), region_end)
            manifest = replace(manifest, payload=PayloadDigest(region, region_end))
            manifest_bytes = manifest.canonical_bytes()
            _write_small(zf, MANIFEST, manifest_bytes)
            signature = SignatureRecord.sign(private, manifest_bytes)
            _write_small(zf, SIGNATURE, signature.to_bytes())
        out.flush()
        digest = _digest_of(out.fileno())
    log.info("built %s (%s) digest %s", target, manifest.name, digest)
    return BuiltSpore(target, digest, manifest)


DEFLATE_LEVEL = 1


def _zinfo(name: str, mode: int, size: int, method: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.create_system = 3  # Unix, so the mode bits below mean what they say
    info.external_attr = (stat.S_IFREG | mode) << 16
    info.compress_type = method
    # Deflate level 1: several times faster than zlib's default 6 on a vendored dependency
    # tree (the bulk of a cached build's time), a few percent larger; fixed, so builds stay
    # reproducible. (Python 3.11/3.12 read ``_compresslevel``, 3.13 ``compress_level``.)
    for attr in ("compress_level", "_compresslevel"):
        if hasattr(info, attr):
            setattr(info, attr, DEFLATE_LEVEL)
            break
    info.file_size = size  # lets zipfile choose zip64 up front for big files
    return info


def _write_small(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    zf.writestr(_zinfo(name, 0o644, len(data), zipfile.ZIP_STORED), data)


def _method_for(path: Path, size: int) -> int:
    """Deflate only what shrinks: decided from the first 256 KiB, so it is deterministic."""
    if size < 512:
        return zipfile.ZIP_STORED
    with open(path, "rb") as f:
        sample = f.read(_SAMPLE)
    if len(zlib.compress(sample, 1)) <= _DEFLATE_IF_BELOW * len(sample):
        return zipfile.ZIP_DEFLATED
    return zipfile.ZIP_STORED


def _write_payload(zf: zipfile.ZipFile, src: SourceFile, entry: FileEntry) -> None:
    info = _zinfo(PAYLOAD + entry.path, entry.mode, entry.size, _method_for(src.source, entry.size))
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    with open(src.source, "rb", buffering=0) as f, zf.open(info, "w") as dst:
        while n := f.readinto(buf):
            h.update(view[:n])
            dst.write(view[:n])
            size += n
    if h.hexdigest() != entry.sha256 or size != entry.size:
        raise SporeError(f"source file {src.source} changed during the build; try again")


def _digest_of(fd: int, end: int | None = None) -> str:
    """SHA-256 of the file's bytes up to ``end`` (default: all of them)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    while end is None or pos < end:
        want = view if end is None else view[: min(CHUNK, end - pos)]
        n = os.preadv(fd, [want], pos)
        if n == 0:
            break
        h.update(view[:n])
        pos += n
    return h.hexdigest()
