"""Ed25519 signing keys on disk (the ``myco keygen`` contract, docs/spore.md).

``NAME.key`` is the private key as unencrypted PKCS#8 PEM, created with mode 0600;
``NAME.pub`` is the public key as SubjectPublicKeyInfo PEM. A key is named in output by its
fingerprint: ``ed25519:`` and the first 16 hex digits of SHA-256 over the raw public key.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reconciler.errors import KeyFileError
from reconciler.files import atomic_write

MAX_KEY_FILE = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key: what signature records and trust policies compare."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: Ed25519PublicKey | bytes) -> str:
    """A short, stable name for a public key: ``ed25519:<16 hex digits>``."""
    raw = public if isinstance(public, bytes) else raw_public_bytes(public)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_keypair(out_dir: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write ``out_dir/name.key`` (0600) and ``out_dir/name.pub``; refuse to clobber.

    With ``force`` existing files are replaced atomically (never left half-written).
    """
    if not _NAME.match(name):
        raise KeyFileError(f"key name {name!r}: use letters, digits, '.', '_' and '-' only")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    if not force:
        for p in (key_path, pub_path):
            if p.exists() or p.is_symlink():
                raise KeyFileError(f"{p} already exists (use --force to overwrite)")
    private = Ed25519PrivateKey.generate()
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_key_file(key_path, key_pem, 0o600, force)
    _write_key_file(pub_path, public_pem(private.public_key()), 0o644, force)
    return key_path, pub_path


def _write_key_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Atomically; unless ``force``, never clobber a file (even one that appeared meanwhile)."""
    try:
        atomic_write(path, data, mode, exclusive=not force)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} already exists (use --force to overwrite)") from exc


def _read_small(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path} is too large to be a key file")
    return data


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from PKCS#8 PEM; raise :class:`KeyFileError`."""
    data = _read_small(Path(path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def parse_public_key(data: bytes, where: str = "public key") -> Ed25519PublicKey:
    """Parse a SubjectPublicKeyInfo PEM holding an Ed25519 key; raise :class:`KeyFileError`."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{where} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{where} is not an Ed25519 public key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM file."""
    return parse_public_key(_read_small(Path(path)), str(path))
