"""The spore's zip container: entry names, limits, and a hostile-input reader.

The reader uses :mod:`zipfile` only to parse the central directory. Everything after that
is checked here before a single byte is inflated: entry names, duplicates, types (symlinks,
directories, special files), encryption, methods, declared sizes and compression ratios,
and the byte ranges of the entries (no overlaps, nothing past the central directory). Data
is then read with ``os.pread`` and inflated by a bounded ``zlib`` stream that stops at the
declared size, so a lying header cannot make it produce more.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from reconciler.errors import IntegrityError, SporeFormatError
from reconciler.spore.manifest import check_payload_path

MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
PAYLOAD = "payload/"
SUFFIX = ".spore"

CHUNK = 1 << 20  # streaming unit for reads, hashes and writes
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIG = b"PK\x03\x04"


@dataclass(frozen=True)
class SporeLimits:
    """What a verifier accepts. Frozen defaults; pass a smaller one to be stricter."""

    max_entries: int = 10_000
    max_entry_bytes: int = 1 << 30  # one payload file, uncompressed
    max_total_bytes: int = 4 << 30  # all payload files, uncompressed
    max_ratio: int = 200  # uncompressed / compressed, for deflated entries
    max_manifest_bytes: int = 4 << 20
    max_signature_bytes: int = 4 << 10


DEFAULT_LIMITS = SporeLimits()


@dataclass(frozen=True)
class Entry:
    """One checked zip entry: where its data lies and how it is stored."""

    name: str
    method: int  # zipfile.ZIP_STORED or zipfile.ZIP_DEFLATED
    compressed_size: int
    size: int
    data_offset: int
    header_offset: int = 0


def read_layout(f: BinaryIO, limits: SporeLimits = DEFAULT_LIMITS) -> dict[str, Entry]:
    """Parse and check the archive's structure; nothing is inflated. Raise SporeFormatError."""
    try:
        zf = zipfile.ZipFile(f)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        ValueError,
        OSError,
        NotImplementedError,
        struct.error,
    ) as exc:
        raise SporeFormatError(f"not a spore: not a readable zip archive ({exc})") from exc
    with zf:
        infos = zf.infolist()
        start_dir = zf.start_dir
    if len(infos) > limits.max_entries:
        raise SporeFormatError(f"too many entries ({len(infos)} > {limits.max_entries})")
    entries: dict[str, Entry] = {}
    ranges: list[tuple[int, int, str]] = []
    total = 0
    for info in infos:
        name = info.orig_filename
        if name != info.filename or "\x00" in name:
            raise SporeFormatError(f"entry {name!r}: NUL in name")
        if name in entries:
            raise SporeFormatError(f"duplicate entry {name!r}")
        _check_type(info)
        _check_name(name)
        if info.flag_bits & 0x1:
            raise SporeFormatError(f"entry {name!r} is encrypted")
        if info.flag_bits & 0x8:
            raise SporeFormatError(f"entry {name!r} uses a data descriptor (not a spore)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise SporeFormatError(f"entry {name!r}: compression method {info.compress_type}")
        size, csize = info.file_size, info.compress_size
        if size > limits.max_entry_bytes:
            raise SporeFormatError(
                f"entry {name!r} is over the size limit ({size} > {limits.max_entry_bytes} bytes)"
            )
        if info.compress_type == zipfile.ZIP_STORED and size != csize:
            raise SporeFormatError(f"entry {name!r}: stored entry with two different sizes")
        if size > limits.max_ratio * max(csize, 1):
            raise SporeFormatError(
                f"entry {name!r} is over the compression-ratio limit "
                f"({size} from {csize} bytes, limit {limits.max_ratio}:1)"
            )
        total += size
        if total > limits.max_total_bytes:
            raise SporeFormatError(f"payload is over the total limit ({limits.max_total_bytes})")
        data_offset = _data_offset(f, info)
        end = data_offset + csize
        if end > start_dir:
            raise SporeFormatError(f"entry {name!r} runs past the central directory")
        ranges.append((info.header_offset, end, name))
        entries[name] = Entry(
            name, info.compress_type, csize, size, data_offset, info.header_offset
        )
    ranges.sort()
    for (_, end, a), (start, _, b) in zip(ranges, ranges[1:], strict=False):
        if start < end:
            raise SporeFormatError(f"entries {a!r} and {b!r} overlap")
    for required in (MANIFEST, SIGNATURE):
        if required not in entries:
            raise SporeFormatError(f"not a spore: no {required}")
    return entries


def _check_name(name: str) -> None:
    if name in (MANIFEST, SIGNATURE):
        return
    check_payload_path(name)  # absolute paths, '..', control characters
    if not name.startswith(PAYLOAD) or len(name) == len(PAYLOAD):
        raise SporeFormatError(f"unknown entry {name!r}")


def _check_type(info: zipfile.ZipInfo) -> None:
    if info.is_dir():
        raise SporeFormatError(f"entry {info.orig_filename!r} is a directory")
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        kind = "a symlink" if stat.S_ISLNK(mode) else "a special file"
        raise SporeFormatError(f"entry {info.orig_filename!r} is {kind}")


def _data_offset(f: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where the entry's data starts, after checking its local header against the directory."""
    if info.header_offset < 0:
        raise SporeFormatError(f"entry {info.orig_filename!r}: bad header offset")
    raw = os.pread(f.fileno(), _LOCAL_HEADER.size, info.header_offset)
    if len(raw) != _LOCAL_HEADER.size:
        raise SporeFormatError(f"entry {info.orig_filename!r}: truncated local header")
    fields = _LOCAL_HEADER.unpack(raw)
    sig: bytes = fields[0]
    method: int = fields[3]
    name_len: int = fields[9]
    extra_len: int = fields[10]
    if sig != _LOCAL_SIG:
        raise SporeFormatError(f"entry {info.orig_filename!r}: bad local header")
    if method != info.compress_type:
        raise SporeFormatError(f"entry {info.orig_filename!r}: local header disagrees")
    name_at = info.header_offset + _LOCAL_HEADER.size
    local_name = os.pread(f.fileno(), name_len, name_at)
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    if local_name.decode(encoding, errors="replace") != info.orig_filename:
        raise SporeFormatError(f"entry {info.orig_filename!r}: local header names another file")
    return name_at + name_len + extra_len


def iter_entry(fd: int, entry: Entry, chunk: int = CHUNK) -> Iterator[bytes | memoryview]:
    """Yield the entry's uncompressed bytes, never more than its declared size.

    A yielded memoryview is only valid until the next one is asked for.
    """
    if entry.method == zipfile.ZIP_STORED:
        buf = bytearray(chunk)
        view = memoryview(buf)
        pos, left = entry.data_offset, entry.size
        while left:
            n = os.preadv(fd, [view[: min(chunk, left)]], pos)
            if n == 0:
                raise SporeFormatError(f"entry {entry.name!r} is truncated")
            pos += n
            left -= n
            yield view[:n]
        return
    yield from _inflate(fd, entry, chunk)


def _inflate(fd: int, entry: Entry, chunk: int) -> Iterator[bytes]:
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    pos, left, produced = entry.data_offset, entry.compressed_size, 0
    try:
        while not d.eof:
            data = d.unconsumed_tail
            if not data and left:
                data = os.pread(fd, min(chunk // 4, left), pos)
                if not data:
                    raise SporeFormatError(f"entry {entry.name!r} is truncated")
                pos += len(data)
                left -= len(data)
            # Never ask for more than one byte past the declared size: a lie is caught here.
            out = d.decompress(data, min(chunk, entry.size - produced + 1))
            produced += len(out)
            if produced > entry.size:
                raise IntegrityError(f"entry {entry.name!r} inflates past its declared size")
            if out:
                yield out
            elif not data:
                break  # no input left and no progress: the stream is cut short
    except zlib.error as exc:
        raise SporeFormatError(f"entry {entry.name!r}: corrupt deflate data ({exc})") from exc
    if not d.eof or left or d.unused_data:
        raise SporeFormatError(f"entry {entry.name!r}: deflate stream does not fit its entry")
    if produced != entry.size:
        raise IntegrityError(f"entry {entry.name!r} is shorter than its declared size")


def read_small(fd: int, entry: Entry, limit: int) -> bytes:
    """The whole content of a small entry (manifest, signature), bounded by ``limit``."""
    if entry.size > limit:
        raise SporeFormatError(f"{entry.name} is over {limit} bytes")
    return b"".join(bytes(part) for part in iter_entry(fd, entry))
