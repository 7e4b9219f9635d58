"""Every refusal in docs/spore.md, each with a crafted archive; verify and extract both refuse.

Extract is tested with the hostile archive swapped in *after* a good spore was verified
(the time-of-check/time-of-use case): it must refuse too and leave nothing behind.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import (
    IntegrityError,
    SignatureError,
    SporeError,
    SporeFormatError,
    TrustError,
)
from reconciler.spore import archive
from reconciler.spore.archive import SporeLimits
from reconciler.spore.build import BuiltSpore, build_spore
from reconciler.spore.extract import extract_spore
from reconciler.spore.signature import SignatureRecord
from reconciler.spore.trust import TrustPolicy
from reconciler.spore.verify import verify_spore
from tests.spore import craft

Crafter = Callable[[BuiltSpore, Path], Path]


def _flip_payload(b: BuiltSpore, d: Path) -> Path:
    marker = (d / "src" / "lib" / "blob.bin").read_bytes()[:64]
    return craft.flip_byte(b.path, d / "x.spore", marker)


def _edit_manifest(b: BuiltSpore, d: Path) -> Path:
    def edit(obj: dict) -> None:
        obj["runtime"]["env"]["K"] = "evil"

    return craft.rezip(b.path, d / "x.spore", lambda es: craft.with_manifest(es, edit))


def _append(*extra: tuple) -> Crafter:
    def make(b: BuiltSpore, d: Path) -> Path:
        return craft.rezip(b.path, d / "x.spore", lambda es: es + list(extra))

    return make


def _rename(old: bytes, new: bytes) -> Crafter:
    def make(b: BuiltSpore, d: Path) -> Path:
        return craft.patch_bytes(b.path, d / "x.spore", old, new)

    return make


def _duplicate(b: BuiltSpore, d: Path) -> Path:
    def dup(es: craft.Entries) -> craft.Entries:
        first = next(e for e in es if e[0].filename == "payload/app.py")
        return es + [first]

    return craft.rezip(b.path, d / "x.spore", dup)


def _drop(name: str) -> Crafter:
    def make(b: BuiltSpore, d: Path) -> Path:
        return craft.rezip(
            b.path, d / "x.spore", lambda es: [e for e in es if e[0].filename != name]
        )

    return make


def _truncate(keep: Callable[[int], int]) -> Crafter:
    def make(b: BuiltSpore, d: Path) -> Path:
        raw = b.path.read_bytes()
        (d / "x.spore").write_bytes(raw[: keep(len(raw))])
        return d / "x.spore"

    return make


def _raw(data: bytes) -> Crafter:
    def make(b: BuiltSpore, d: Path) -> Path:
        (d / "x.spore").write_bytes(data)
        return d / "x.spore"

    return make


def _bomb(b: BuiltSpore, d: Path) -> Path:
    zeros = craft.entry("payload/bomb", b"\0" * (16 << 20), deflate=True)
    return craft.rezip(b.path, d / "x.spore", lambda es: es + [zeros])


CASES: list[tuple[str, Crafter, type[SporeError], str]] = [
    ("flipped-payload-byte", _flip_payload, IntegrityError, "sha256 mismatch"),
    ("edited-manifest-field", _edit_manifest, SignatureError, "does not verify"),
    (
        "extra-entry",
        _append(craft.entry("payload/evil.sh", b"rm -rf /")),
        SporeFormatError,
        "extra entry",
    ),
    ("unknown-entry", _append(craft.entry("evil.txt", b"x")), SporeFormatError, "unknown entry"),
    ("duplicate-entry", _duplicate, SporeFormatError, "duplicate entry"),
    ("dotdot-path", _append(craft.entry("payload/../../evil", b"x")), SporeFormatError, "'..'"),
    ("dotdot-top", _append(craft.entry("../evil", b"x")), SporeFormatError, "'..'"),
    ("absolute-path", _rename(b"payload/app.py", b"/etc/passwd123"), SporeFormatError, "absolute"),
    (
        "symlink",
        _append(craft.entry("payload/link", b"/etc/passwd", stat.S_IFLNK | 0o777)),
        SporeFormatError,
        "symlink",
    ),
    (
        "fifo",
        _append(craft.entry("payload/fifo", b"", stat.S_IFIFO | 0o644)),
        SporeFormatError,
        "special file",
    ),
    ("directory", _append(craft.entry("payload/dir/", b"")), SporeFormatError, "directory"),
    ("compression-ratio", _bomb, SporeFormatError, "compression-ratio limit"),
    ("truncated-tail", _truncate(lambda n: n - 10), SporeFormatError, "zip"),
    ("truncated-half", _truncate(lambda n: n // 2), SporeFormatError, "zip"),
    ("not-a-zip", _raw(b"#!/bin/sh\necho this is no zip\n" * 20), SporeFormatError, "not a spore"),
    ("empty-file", _raw(b""), SporeFormatError, "not a spore"),
    ("missing-manifest", _drop("manifest.json"), SporeFormatError, "no manifest.json"),
    ("missing-signature", _drop("signature.json"), SporeFormatError, "no signature.json"),
    ("missing-payload-file", _drop("payload/run.sh"), SporeFormatError, "missing"),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("case", "make", "error", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_verify_refuses(built, trust, tmp_path, case, make, error, fragment):
    hostile = make(built, tmp_path)
    with pytest.raises(error) as info:
        verify_spore(hostile, trust)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("case", "make", "error", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_extract_refuses_archive_swapped_after_verify(
    built, trust, tmp_path, case, make, error, fragment
):
    hostile = make(built, tmp_path)
    verified = verify_spore(built.path, trust)
    before = _tree(tmp_path)
    os.replace(hostile, built.path)  # swapped between check and use
    dest = tmp_path / "dest"
    with pytest.raises(SporeError):
        extract_spore(verified, dest)
    assert not dest.exists()
    assert _tree(tmp_path) == before - {str(hostile.relative_to(tmp_path))}


def test_untrusted_signer(built, other_keys):
    with pytest.raises(TrustError, match="is not trusted$"):
        verify_spore(built.path, TrustPolicy.load([other_keys.pub]))


def test_signer_trusted_but_not_for_this_name(built, keys, tmp_path):
    policy = tmp_path / "trust.yaml"
    policy.write_text(
        f"apiVersion: myco/v1\nkind: TrustPolicy\nkeys:\n"
        f"  - name: web-team\n    key: {keys.pub}\n    apps: ['front*', 'web']\n"
    )
    with pytest.raises(TrustError, match="web-team is not trusted for app 'billing'"):
        verify_spore(built.path, TrustPolicy.load([policy]))


def test_signature_by_untrusted_key_over_trusted_content(built, dna, other_keys, trust, tmp_path):
    """Same content, re-signed by another key: the key the spore carries counts for nothing."""
    forged = build_spore(dna, other_keys.key, tmp_path / "forged")
    assert forged.manifest == built.manifest
    with pytest.raises(TrustError):
        verify_spore(forged.path, trust)


def test_entry_over_size_limit(built, trust):
    with pytest.raises(SporeFormatError, match="over the size limit"):
        verify_spore(built.path, trust, limits=SporeLimits(max_entry_bytes=1000))


def test_payload_over_total_limit(built, trust):
    with pytest.raises(SporeFormatError, match="total limit"):
        verify_spore(built.path, trust, limits=SporeLimits(max_total_bytes=5000))


def test_bomb_refused_without_inflating(built, trust, tmp_path, monkeypatch):
    hostile = _bomb(built, tmp_path)
    inflated: list[str] = []
    real = archive._inflate

    def spy(fd, entry, chunk):
        inflated.append(entry.name)
        return real(fd, entry, chunk)

    monkeypatch.setattr(archive, "_inflate", spy)
    with pytest.raises(SporeFormatError, match="compression-ratio"):
        verify_spore(hostile, trust)
    assert inflated == []
    verify_spore(built.path, trust, deep=True)  # the spy does see a normal deflated file
    assert inflated == ["payload/app.py"]


def test_lying_declared_size_stops_inflating(tmp_path):
    """A deflate stream longer than its declared size is cut at size + 1 byte."""
    import zlib

    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = raw.compress(b"a" * 100_000) + raw.flush()
    f = tmp_path / "d"
    f.write_bytes(data)
    entry = archive.Entry("payload/x", 8, len(data), 10, 0)
    fd = os.open(f, os.O_RDONLY)
    try:
        chunks: list[int] = []
        with pytest.raises(IntegrityError, match="past its declared size"):
            chunks.extend(len(c) for c in archive.iter_entry(fd, entry))
        assert sum(chunks) <= 10
    finally:
        os.close(fd)


def test_truncated_deflate_stream(tmp_path):
    import zlib

    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = (raw.compress(os.urandom(5000) + b"a" * 5000) + raw.flush())[:-20]
    f = tmp_path / "d"
    f.write_bytes(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        entry = archive.Entry("payload/x", 8, len(data), 10000, 0)
        with pytest.raises(SporeError):
            list(archive.iter_entry(fd, entry))
    finally:
        os.close(fd)


def test_wrong_expected_digest(built, trust):
    with pytest.raises(IntegrityError, match="digest mismatch"):
        verify_spore(built.path, trust, expected_digest="0" * 64)
    assert verify_spore(built.path, trust, expected_digest=built.digest).digest == built.digest


def test_missing_file(trust, tmp_path):
    with pytest.raises(SporeError, match="cannot open"):
        verify_spore(tmp_path / "nope.spore", trust)


def test_directory_is_not_a_spore(trust, tmp_path):
    with pytest.raises(SporeError):
        verify_spore(tmp_path, trust)


def _resigned(built, keys, tmp_path, edit) -> Path:
    """The same archive with an edited manifest, validly signed by the trusted key."""

    def change(es: craft.Entries) -> craft.Entries:
        es = craft.with_manifest(es, edit)
        manifest = next(d for i, d in es if i.filename == "manifest.json")
        sig = SignatureRecord.sign(keys.private, manifest).to_bytes()
        return [(i, sig if i.filename == "signature.json" else d) for i, d in es]

    return craft.rezip(built.path, tmp_path / "resigned.spore", change)


def test_signed_but_wrong_file_hash_is_caught_by_deep_verify_and_extract(
    built, keys, trust, tmp_path
):
    def edit(obj: dict) -> None:
        obj["files"][0]["sha256"] = "f" * 64

    hostile = _resigned(built, keys, tmp_path, edit)
    verified = verify_spore(hostile, trust)  # the payload region is intact and signed
    with pytest.raises(IntegrityError, match="'app.py': sha256 mismatch"):
        verify_spore(hostile, trust, deep=True)
    with pytest.raises(IntegrityError, match="app.py"):
        extract_spore(verified, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_payload_entry_outside_the_signed_region(built, keys, trust, tmp_path):
    def edit(obj: dict) -> None:
        obj["payload"]["size"] = 10

    with pytest.raises(SporeFormatError, match="outside the signed payload"):
        verify_spore(_resigned(built, keys, tmp_path, edit), trust)


def test_signed_region_longer_than_the_archive(built, keys, trust, tmp_path):
    def edit(obj: dict) -> None:
        obj["payload"]["size"] = 10**9

    with pytest.raises(SporeFormatError, match="inside the payload region"):
        verify_spore(_resigned(built, keys, tmp_path, edit), trust)


class _Unseekable(io.RawIOBase):
    def __init__(self, sink):
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        return self.sink.write(b)


def test_streamed_zip_with_data_descriptors_is_refused(built, trust, tmp_path):
    out = tmp_path / "streamed.spore"
    with open(out, "wb") as sink, zipfile.ZipFile(_Unseekable(sink), "w") as zf:
        for info, data in craft.read_entries(built.path):
            with zf.open(info.filename, "w") as dst:
                dst.write(data)
    with pytest.raises(SporeFormatError, match="data descriptor"):
        verify_spore(out, trust)


def test_declared_huge_entry_refused_without_inflating(built, trust, tmp_path, monkeypatch):
    """The central directory claims 2 GiB for a small deflated file: refused from the header."""
    raw = bytearray(built.path.read_bytes())
    name = b"payload/app.py"
    at = raw.index(b"PK\x01\x02")  # first central directory header
    while raw[at + 46 : at + 46 + len(name)] != name:
        at = raw.index(b"PK\x01\x02", at + 4)
    struct.pack_into("<I", raw, at + 24, 2 << 30)  # uncompressed size
    hostile = tmp_path / "huge.spore"
    hostile.write_bytes(bytes(raw))
    monkeypatch.setattr(archive, "_inflate", lambda *a: pytest.fail("inflated"))
    with pytest.raises(SporeFormatError, match="over the size limit"):
        verify_spore(hostile, trust)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_archives_only_raise_spore_errors(built, trust, tmp_path, data):
    """Whatever bytes are changed, verification refuses with a SporeError or accepts bytes
    whose payload is still exactly what was signed; never another exception."""
    raw = bytearray(built.path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = len(raw) if data.draw(st.booleans()) else data.draw(st.integers(0, len(raw)))
    mutated = tmp_path / "mutated.spore"
    mutated.write_bytes(bytes(raw[:cut]))
    try:
        v = verify_spore(mutated, trust)
    except SporeError:
        return
    assert v.manifest == built.manifest
