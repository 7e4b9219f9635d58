"""The signature record of a spore (``signature.json``).

Canonical JSON::

    {"algorithm": "ed25519", "format": "myco.spore-sig/v1",
     "key_id": "ed25519:<16 hex>", "public_key": "<base64 of 32 raw bytes>",
     "signature": "<base64 of 64 bytes>"}

The signature is over the exact bytes of ``manifest.json``. The public key in the record
only says *who claims* to have signed; whether that key is trusted for the app name is the
trust policy's decision (:mod:`reconciler.spore.trust`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reconciler.errors import SignatureError
from reconciler.spore.keys import fingerprint, raw_public_bytes
from reconciler.spore.manifest import canonical_json

SIG_FORMAT = "myco.spore-sig/v1"
_FIELDS = {"algorithm", "format", "key_id", "public_key", "signature"}


@dataclass(frozen=True)
class SignatureRecord:
    public_key: bytes  # 32 raw bytes
    signature: bytes  # 64 bytes

    @classmethod
    def sign(cls, key: Ed25519PrivateKey, manifest_bytes: bytes) -> SignatureRecord:
        return cls(raw_public_bytes(key.public_key()), key.sign(manifest_bytes))

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "algorithm": "ed25519",
                "format": SIG_FORMAT,
                "key_id": fingerprint(self.public_key),
                "public_key": base64.b64encode(self.public_key).decode(),
                "signature": base64.b64encode(self.signature).decode(),
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> SignatureRecord:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise SignatureError("signature.json is not valid JSON") from exc
        if not isinstance(data, dict) or set(data) != _FIELDS:
            raise SignatureError("signature.json: malformed signature record")
        if data["format"] != SIG_FORMAT or data["algorithm"] != "ed25519":
            raise SignatureError("signature.json: unsupported format or algorithm")
        try:
            public = base64.b64decode(data["public_key"], validate=True)
            signature = base64.b64decode(data["signature"], validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise SignatureError("signature.json: bad base64") from exc
        if len(public) != 32 or len(signature) != 64:
            raise SignatureError("signature.json: wrong key or signature length")
        if data["key_id"] != fingerprint(public):
            raise SignatureError("signature.json: key_id does not match the public key")
        return cls(public, signature)

    def verify(self, manifest_bytes: bytes) -> None:
        """Raise :class:`SignatureError` unless the signature covers ``manifest_bytes``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                self.signature, manifest_bytes
            )
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(
                "signature does not verify: manifest.json was altered or mis-signed"
            ) from exc
