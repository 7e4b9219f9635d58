"""Verify a spore: structure, signature, trust, payload bytes and digest (docs/spore.md).

Order, cheapest refusal first, nothing inflated and nothing written:

1. the zip's structure (:func:`reconciler.spore.archive.read_layout`): names, types,
   duplicates, sizes and ratios, overlaps;
2. the signature over ``manifest.json`` and the manifest's own strict form;
3. trust: the signer must be trusted *for this app name*;
4. the entries are exactly ``manifest.json``, ``signature.json`` and the listed files, with
   the listed sizes, and every payload entry lies inside the signed payload region;
5. one sequential SHA-256 pass over the file: at the end of the payload region its hash
   must equal the signed ``payload.sha256`` (so every payload byte is covered), and at the
   end of the file it is the spore's digest.

One hash pass in all, which is what lets verification run at the speed of ``sha256``.
``deep=True`` also inflates and hashes every payload file against its listed SHA-256
(a second pass); :func:`~reconciler.spore.extract.extract_spore` always does that check
while it writes, so an agent's verify-then-extract checks every hash without paying twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from reconciler.errors import IntegrityError, SporeError, SporeFormatError, TrustError
from reconciler.spore.archive import (
    CHUNK,
    DEFAULT_LIMITS,
    MANIFEST,
    PAYLOAD,
    SIGNATURE,
    Entry,
    SporeLimits,
    iter_entry,
    read_layout,
    read_small,
)
from reconciler.spore.keys import fingerprint
from reconciler.spore.manifest import FileEntry, SporeManifest
from reconciler.spore.signature import SignatureRecord
from reconciler.spore.trust import TrustPolicy

log = logging.getLogger("myco.spore")


@dataclass(frozen=True)
class VerifiedSpore:
    path: Path
    digest: str
    manifest: SporeManifest
    signer: str  # the trust policy's name for the key (or its fingerprint)
    signer_key: bytes  # 32 raw bytes

    @property
    def signer_fingerprint(self) -> str:
        return fingerprint(self.signer_key)


def verify_spore(
    path: Path,
    trust: TrustPolicy,
    expected_digest: str | None = None,
    limits: SporeLimits = DEFAULT_LIMITS,
    deep: bool = False,
) -> VerifiedSpore:
    """Verify everything about the spore at ``path``; raise a :class:`SporeError` subclass."""
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise SporeError(f"cannot open {path}: {exc.strerror or exc}") from exc
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SporeFormatError(f"{path} is not a regular file")
        manifest, record, layout = read_manifest(f, limits)
        _check_trust(manifest, record, trust)
        check_entries(layout, manifest)
        region_end = _check_region(layout, manifest)
        region, digest = _one_pass(f.fileno(), region_end)
        assert manifest.payload is not None
        if region != manifest.payload.sha256:
            raise IntegrityError("payload sha256 mismatch: the payload is not what was signed")
        if deep:
            check_file_hashes(f.fileno(), layout, manifest)
    if expected_digest is not None and digest != expected_digest.lower():
        raise IntegrityError(f"digest mismatch: expected {expected_digest}, got {digest}")
    log.debug("verified %s: %s %s digest %s", path, manifest.name, manifest.version, digest)
    return VerifiedSpore(path, digest, manifest, trust.label(record.public_key), record.public_key)


def read_manifest(
    f: BinaryIO, limits: SporeLimits = DEFAULT_LIMITS
) -> tuple[SporeManifest, SignatureRecord, dict[str, Entry]]:
    """Structure + signature + manifest, without trust or payload hashes (repo indexing)."""
    layout = read_layout(f, limits)
    fd = f.fileno()
    manifest_bytes = read_small(fd, layout[MANIFEST], limits.max_manifest_bytes)
    record = SignatureRecord.from_bytes(
        read_small(fd, layout[SIGNATURE], limits.max_signature_bytes)
    )
    record.verify(manifest_bytes)
    manifest = SporeManifest.from_bytes(manifest_bytes)
    return manifest, record, layout


def _check_trust(manifest: SporeManifest, record: SignatureRecord, trust: TrustPolicy) -> None:
    if not trust.knows(record.public_key):
        raise TrustError(f"signer {fingerprint(record.public_key)} is not trusted")
    if not trust.allows(record.public_key, manifest.name):
        raise TrustError(
            f"signer {trust.label(record.public_key)} is not trusted for app {manifest.name!r}"
        )


def check_entries(layout: dict[str, Entry], manifest: SporeManifest) -> dict[str, FileEntry]:
    """The archive holds exactly the manifest, the signature and the listed files, with the
    listed sizes. Returns entry name → file entry."""
    expected = {PAYLOAD + e.path: e for e in manifest.files}
    for entry_name in layout:
        if entry_name not in expected and entry_name not in (MANIFEST, SIGNATURE):
            raise SporeFormatError(f"extra entry {entry_name!r} is not in the manifest")
    for entry_name, fe in expected.items():
        if entry_name not in layout:
            raise SporeFormatError(f"payload file {fe.path!r} is missing from the archive")
        if layout[entry_name].size != fe.size:
            raise IntegrityError(f"payload file {fe.path!r}: size differs from the manifest")
    return expected


def _check_region(layout: dict[str, Entry], manifest: SporeManifest) -> int:
    """Every payload entry inside the signed region, manifest and signature after it."""
    assert manifest.payload is not None
    end = manifest.payload.size
    for entry in layout.values():
        inside = entry.data_offset + entry.compressed_size <= end
        if entry.name.startswith(PAYLOAD) and not inside:
            raise SporeFormatError(f"entry {entry.name!r} lies outside the signed payload")
        if not entry.name.startswith(PAYLOAD) and entry.header_offset < end:
            raise SporeFormatError(f"entry {entry.name!r} lies inside the payload region")
    return end


def _one_pass(fd: int, region_end: int) -> tuple[str, str]:
    """SHA-256 of the first ``region_end`` bytes and of the whole file, in one read."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    region: str | None = None
    while True:
        if region is None and pos == region_end:
            region = h.copy().hexdigest()
        want = view if region is not None else view[: min(CHUNK, region_end - pos)]
        n = os.preadv(fd, [want], pos)
        if n == 0:
            break
        h.update(view[:n])
        pos += n
    if region is None:
        raise SporeFormatError("the archive is shorter than its signed payload")
    return region, h.hexdigest()


def check_file_hashes(fd: int, layout: dict[str, Entry], manifest: SporeManifest) -> None:
    """Inflate and hash every payload file against the manifest (the deep check)."""
    for fe in manifest.files:
        h = hashlib.sha256()
        for chunk in iter_entry(fd, layout[PAYLOAD + fe.path]):
            h.update(chunk)
        if h.hexdigest() != fe.sha256:
            raise IntegrityError(f"payload file {fe.path!r}: sha256 mismatch")


def file_digest(fd: int) -> str:
    """SHA-256 (hex) of a whole open file, read with ``pread`` (leaves the offset alone)."""
    return _one_pass(fd, 0)[1]
