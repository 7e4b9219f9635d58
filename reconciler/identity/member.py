"""A member's own identity: its certificate chain and private key, as loaded from disk."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .ca import certs_pem
from .verify import Principal, principal_of


@dataclass(frozen=True)
class MemberIdentity:
    chain: tuple[x509.Certificate, ...]  # leaf first, then its issuer
    key: Ed25519PrivateKey
    roots: tuple[x509.Certificate, ...]  # the mesh root CA(s) it trusts

    @property
    def principal(self) -> Principal:
        return principal_of(self.chain[0])

    @property
    def name(self) -> str:
        return self.principal.name

    @property
    def mesh(self) -> str:
        return self.principal.mesh

    def chain_pem(self) -> str:
        return certs_pem(self.chain)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)
