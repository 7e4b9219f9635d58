"""AES-GCM keyring: one primary key encrypts, every installed key may decrypt (rotation).

Packet layout: ``version(1) | nonce(12) | ciphertext+tag``. The associated data is the
version byte followed by the cluster name, so a packet of another cluster never
authenticates. A key file holds base64 AES keys (16, 24 or 32 bytes), one per line, the
first being the primary.

The keyring seals gossip only; members authenticate each other over HTTP with their
certificates (mutual TLS, :mod:`reconciler.identity`), never with a mesh-wide secret.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconciler.errors import KeyFileError, PacketError
from reconciler.files import atomic_write

VERSION_PLAIN = 0
VERSION_AESGCM = 1
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
_KEY_SIZES = (16, 24, 32)


class Keyring:
    """Keys for the fabric's packets; ``keys[0]`` is the primary (sending) key."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in keys:
            self.install(key)
        if not self._keys:
            raise KeyFileError("a keyring needs at least one key")

    @classmethod
    def generate(cls) -> Keyring:
        return cls([secrets.token_bytes(32)])

    @classmethod
    def load(cls, path: Path | str) -> Keyring:
        path = Path(path)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc}") from exc
        keys = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                key = base64.b64decode(line, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise KeyFileError(f"{path}:{lineno}: not base64") from exc
            if len(key) not in _KEY_SIZES:
                raise KeyFileError(f"{path}:{lineno}: an AES key is 16, 24 or 32 bytes")
            keys.append(key)
        if not keys:
            raise KeyFileError(f"{path}: no key in the file")
        return cls(keys)

    def save(self, path: Path | str, *, force: bool = False) -> None:
        """Write the key file (mode 0600, atomically); refuse to clobber unless ``force``."""
        path = Path(path)
        if path.exists() and not force:
            raise KeyFileError(f"{path} exists (use --force to overwrite)")
        data = "".join(base64.b64encode(k).decode("ascii") + "\n" for k in self._keys)
        try:
            atomic_write(path, data, 0o600, exclusive=not force)
        except FileExistsError as exc:
            raise KeyFileError(f"{path} exists (use --force to overwrite)") from exc
        except OSError as exc:
            raise KeyFileError(f"cannot write key file {path}: {exc}") from exc

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(self._keys)

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    # Rotation: install everywhere, then use everywhere, then remove the old key.

    def install(self, key: bytes) -> None:
        if len(key) not in _KEY_SIZES:
            raise KeyFileError("an AES key is 16, 24 or 32 bytes")
        if key not in self._ciphers:
            self._keys.append(key)
            self._ciphers[key] = AESGCM(key)

    def use(self, key: bytes) -> None:
        """Make an installed key the primary."""
        if key not in self._ciphers:
            raise KeyFileError("the key is not installed")
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove(self, key: bytes) -> None:
        if key == self._keys[0]:
            raise KeyFileError("cannot remove the primary key (use another one first)")
        if key in self._ciphers:
            self._keys.remove(key)
            del self._ciphers[key]

    # Packets.

    def encrypt(self, plaintext: bytes, cluster: bytes) -> bytes:
        nonce = _nonce()
        sealed = self._ciphers[self._keys[0]].encrypt(nonce, plaintext, _HEAD + cluster)
        return _HEAD + nonce + sealed

    def decrypt(self, packet: bytes, cluster: bytes) -> bytes:
        if len(packet) < OVERHEAD or packet[0] != VERSION_AESGCM:
            raise PacketError("not an encrypted packet")
        nonce = packet[1 : 1 + NONCE_SIZE]
        aad = packet[:1] + cluster
        for key in self._keys:
            try:
                return self._ciphers[key].decrypt(nonce, packet[1 + NONCE_SIZE :], aad)
            except InvalidTag:
                continue
        raise PacketError("no key authenticates the packet")


_HEAD = bytes((VERSION_AESGCM,))
_POOL = 4096  # nonces drawn from the OS at a time


class _Nonces:
    """Random 96-bit nonces, drawn from ``os.urandom`` in blocks (one syscall per 4096).

    ``next()`` on a list iterator is atomic under the GIL, so no two callers (threads)
    get the same nonce; a forked child drops the parent's unused block.
    """

    def __init__(self) -> None:
        self._it: Iterator[bytes] = iter(())

    def __call__(self) -> bytes:
        try:
            return next(self._it)
        except StopIteration:
            buf = os.urandom(NONCE_SIZE * _POOL)
            self._it = iter([buf[i : i + NONCE_SIZE] for i in range(0, len(buf), NONCE_SIZE)])
            return next(self._it)

    def reset(self) -> None:
        self._it = iter(())


_nonces = _Nonces()
_nonce = _nonces.__call__  # a bound method: cheaper to call than the instance
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_nonces.reset)


def seal(keyring: Keyring | None, plaintext: bytes, cluster: bytes) -> bytes:
    if keyring is None:
        return bytes((VERSION_PLAIN,)) + plaintext
    return keyring.encrypt(plaintext, cluster)


def unseal(keyring: Keyring | None, packet: bytes, cluster: bytes) -> bytes:
    if keyring is None:
        if not packet or packet[0] != VERSION_PLAIN:
            raise PacketError("encrypted packet but no keyring")
        return packet[1:]
    return keyring.decrypt(packet, cluster)
