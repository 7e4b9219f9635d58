"""Extract a *verified* spore's payload into a fresh directory (used by the agent).

Only a :class:`~reconciler.spore.verify.VerifiedSpore` is accepted. The archive is read
again and its structure re-checked; ``manifest.json`` must still be the verified one; every
file is re-hashed while it is written, so an archive swapped or modified after
verification is caught. Files are created with ``O_EXCL | O_NOFOLLOW`` below a directory
this function made itself, from paths already proven relative and ``..``-free, and the
final modes come from the manifest. On any failure the directory is removed again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from reconciler.errors import IntegrityError, SporeError
from reconciler.spore.archive import (
    DEFAULT_LIMITS,
    MANIFEST,
    PAYLOAD,
    SIGNATURE,
    SporeLimits,
    iter_entry,
    read_layout,
    read_small,
)
from reconciler.spore.manifest import check_payload_path
from reconciler.spore.signature import SignatureRecord
from reconciler.spore.verify import VerifiedSpore, check_entries

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def extract_spore(
    verified: VerifiedSpore, dest: Path, limits: SporeLimits = DEFAULT_LIMITS
) -> Path:
    """Write the payload of ``verified`` into ``dest`` (absent or an empty directory)."""
    if not isinstance(verified, VerifiedSpore):
        raise SporeError("extract_spore needs a VerifiedSpore (call verify_spore first)")
    dest = Path(dest)
    created = _prepare(dest)
    root = dest.resolve()
    try:
        with open(verified.path, "rb") as f:
            layout = read_layout(f, limits)
            fd = f.fileno()
            raw = read_small(fd, layout[MANIFEST], limits.max_manifest_bytes)
            record = SignatureRecord.from_bytes(
                read_small(fd, layout[SIGNATURE], limits.max_signature_bytes)
            )
            if raw != verified.manifest.canonical_bytes() or record.public_key != (
                verified.signer_key
            ):
                raise IntegrityError(f"{verified.path} changed since it was verified")
            check_entries(layout, verified.manifest)
            for fe in verified.manifest.files:
                entry = layout[PAYLOAD + fe.path]
                target = root / check_payload_path(fe.path)
                parent = target.parent
                parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                if os.path.commonpath([root, parent.resolve()]) != str(root):
                    raise SporeError(f"payload file {fe.path!r} would land outside {dest}")
                h = hashlib.sha256()
                out = os.open(target, _FLAGS, 0o600)
                try:
                    for chunk in iter_entry(fd, entry):
                        h.update(chunk)
                        _write_all(out, chunk)
                    os.fchmod(out, fe.mode)
                finally:
                    os.close(out)
                if h.hexdigest() != fe.sha256:
                    raise IntegrityError(f"payload file {fe.path!r} changed since verification")
    except BaseException:
        _undo(dest, created)
        raise
    return dest


def _prepare(dest: Path) -> bool:
    """Make sure ``dest`` is a fresh directory; return whether this call created it."""
    if dest.is_symlink():
        raise SporeError(f"{dest} is a symlink; extract into a plain directory")
    if dest.exists():
        if not dest.is_dir() or any(dest.iterdir()):
            raise SporeError(f"{dest} exists and is not an empty directory")
        return False
    dest.mkdir(mode=0o755, parents=True)
    return True


def _undo(dest: Path, created: bool) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
