"""Verify a spore: structure, signature, trust, payload hashes and digest (DESIGN §4).

Order, cheapest refusal first and nothing inflated before the structure passed:

1. the zip's structure (:func:`reconciler.spore.archive.read_layout`): names, types,
   duplicates, sizes and ratios, overlaps;
2. the signature over ``manifest.json`` and the manifest's own strict form;
3. trust: the signer must be trusted *for this app name*;
4. the set of entries equals ``manifest.json`` + ``signature.json`` + the listed files,
   with the listed sizes;
5. every payload file's SHA-256.

Meanwhile a worker thread computes the SHA-256 of the whole file (the spore's digest), so
both hashes run on two cores (hashlib and ``os.pread`` release the GIL): verification costs
about one hash pass of wall time, not two.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
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
) -> VerifiedSpore:
    """Verify everything about the spore at ``path``; raise a :class:`SporeError` subclass."""
    path = Path(path)
    try:
        f = open(path, "rb")  # closed by the with below; shared with the digest thread
    except OSError as exc:
        raise SporeError(f"cannot open {path}: {exc.strerror or exc}") from exc
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SporeFormatError(f"{path} is not a regular file")
        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spore-digest") as pool:
            digest_future = pool.submit(file_digest, f.fileno(), stop)
            try:
                manifest, record = _check_contents(f, trust, limits)
            except BaseException:
                stop.set()
                raise
            digest = digest_future.result()
    if expected_digest is not None and digest != expected_digest.lower():
        raise IntegrityError(f"digest mismatch: expected {expected_digest}, got {digest}")
    log.debug("verified %s: %s %s by %s", path, manifest.name, manifest.version, digest)
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


def _check_contents(
    f: BinaryIO, trust: TrustPolicy, limits: SporeLimits
) -> tuple[SporeManifest, SignatureRecord]:
    manifest, record, layout = read_manifest(f, limits)
    name = manifest.name
    if not trust.knows(record.public_key):
        raise TrustError(f"signer {fingerprint(record.public_key)} is not trusted")
    if not trust.allows(record.public_key, name):
        raise TrustError(f"signer {trust.label(record.public_key)} is not trusted for app {name!r}")
    expected = check_entries(layout, manifest)
    fd = f.fileno()
    for entry_name, fe in expected.items():
        entry = layout[entry_name]
        h = hashlib.sha256()
        for chunk in iter_entry(fd, entry):
            h.update(chunk)
        if h.hexdigest() != fe.sha256:
            raise IntegrityError(f"payload file {fe.path!r}: sha256 mismatch")
    return manifest, record


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


def file_digest(fd: int, stop: threading.Event | None = None) -> str:
    """SHA-256 (hex) of a whole open file, read with ``pread`` (leaves the offset alone)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    while n := os.preadv(fd, [view], pos):
        if stop is not None and stop.is_set():
            return ""
        h.update(view[:n])
        pos += n
    return h.hexdigest()
