"""Crafting hostile spores from a good one: re-zipped entries, patched bytes."""

from __future__ import annotations

import stat
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

from reconciler.spore.build import DEFLATE_LEVEL
from reconciler.spore.manifest import SporeManifest, canonical_json

Entries = list[tuple[zipfile.ZipInfo, bytes]]


def read_entries(path: Path) -> Entries:
    with zipfile.ZipFile(path) as zf:
        return [(info, zf.read(info)) for info in zf.infolist()]


def write_entries(path: Path, entries: Entries) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicates we craft
        with zipfile.ZipFile(path, "w") as zf:
            for info, data in entries:
                # The builder's level, so an untouched payload keeps its bytes and size.
                zf.writestr(info, data, compresslevel=DEFLATE_LEVEL)
    return path


def rezip(src: Path, dst: Path, change: Callable[[Entries], Entries]) -> Path:
    return write_entries(dst, change(read_entries(src)))


def entry(name: str, data: bytes, mode: int = stat.S_IFREG | 0o644, deflate: bool = False):
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.create_system = 3
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    return info, data


def with_manifest(entries: Entries, edit: Callable[[dict], None]) -> Entries:
    out = []
    for info, data in entries:
        if info.filename == "manifest.json":
            obj = SporeManifest.from_bytes(data).to_json()
            edit(obj)
            data = canonical_json(obj)
        out.append((info, data))
    return out


def patch_bytes(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    """Replace every occurrence of ``old`` by ``new`` (same length) in the raw archive."""
    assert len(old) == len(new)
    raw = src.read_bytes()
    assert old in raw
    dst.write_bytes(raw.replace(old, new))
    return dst


def flip_byte(src: Path, dst: Path, marker: bytes) -> Path:
    """Flip one byte in the middle of the first occurrence of ``marker``."""
    raw = bytearray(src.read_bytes())
    at = raw.index(marker) + len(marker) // 2
    raw[at] ^= 0x01
    dst.write_bytes(bytes(raw))
    return dst
