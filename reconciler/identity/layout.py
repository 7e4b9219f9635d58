"""Identity files on disk: the mesh CA directory and a member's identity directory.

``myco init DIR`` writes the CA directory (beside the spore signing key, trust policy and
gossip keyring of :mod:`reconciler.mesh.identity`)::

    DIR/ca.crt       the mesh root CA certificate: every host trusts it
    DIR/ca.key       its key (0600): keep it offline; only needed to make a new issuer
    DIR/issuer.crt   the issuing CA (signed by the root): reconcilers hold it
    DIR/issuer.key   its key (0600): issues member certificates, tokens, revocations

A member's identity directory (``<state>/identity`` of a daemon, or what
``myco cert issue --out DIR`` writes for a person)::

    DIR/ca.crt       the root(s) it trusts
    DIR/cert.pem     its certificate, then the issuer's
    DIR/key.pem      its Ed25519 key (0600)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from reconciler.errors import ConfigError, IdentityError
from reconciler.files import atomic_write

from .ca import Issuer, certs_pem, key_pem, load_certs, load_key, make_issuer, make_root
from .member import MemberIdentity
from .verify import Verifier, principal_of

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
ISSUER_CERT = "issuer.crt"
ISSUER_KEY = "issuer.key"
MEMBER_CERT = "cert.pem"
MEMBER_KEY = "key.pem"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what}: {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{what}: {path}: {exc.strerror}") from exc


def mesh_of(root: x509.Certificate) -> str:
    """The mesh name a root CA was made for (its ``spiffe://<mesh>`` URI)."""
    try:
        san = root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uri = san.get_values_for_type(x509.UniformResourceIdentifier)[0]
    except (x509.ExtensionNotFound, IndexError):
        raise IdentityError("the root CA names no mesh", "wrong-ca") from None
    return uri.removeprefix("spiffe://").rstrip("/")


def load_roots(path: Path) -> list[x509.Certificate]:
    return load_certs(_read(path, "mesh root CA"), str(path))


def verifier_for(roots: list[x509.Certificate]) -> Verifier:
    return Verifier(roots, mesh_of(roots[0]))


@dataclass(frozen=True)
class CADir:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def issuer_cert(self) -> Path:
        return self.root / ISSUER_CERT

    @property
    def issuer_key(self) -> Path:
        return self.root / ISSUER_KEY

    def exists(self) -> bool:
        return self.ca_cert.is_file()

    def create(self, mesh: str, *, now: float | None = None) -> None:
        """A new root CA and issuing CA (refuses to overwrite: the caller checks)."""
        t = time.time() if now is None else now
        root, root_key = make_root(mesh, now=t)
        issuer, issuer_key = make_issuer(root, root_key, mesh, now=t)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / CA_KEY, key_pem(root_key), 0o600)
        atomic_write(self.issuer_key, key_pem(issuer_key), 0o600)
        atomic_write(self.issuer_cert, certs_pem([issuer]))
        atomic_write(self.ca_cert, certs_pem([root]))

    def issuer(self) -> Issuer:
        roots = load_roots(self.ca_cert)
        cert = load_certs(_read(self.issuer_cert, "issuing CA"), str(self.issuer_cert))[0]
        key = load_key(_read(self.issuer_key, "issuing CA key"), str(self.issuer_key))
        return Issuer(cert, key, roots[0], mesh_of(roots[0]))


@dataclass(frozen=True)
class MemberDir:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def cert(self) -> Path:
        return self.root / MEMBER_CERT

    @property
    def key(self) -> Path:
        return self.root / MEMBER_KEY

    def exists(self) -> bool:
        return self.cert.is_file() and self.key.is_file() and self.ca_cert.is_file()

    def load(self) -> MemberIdentity:
        roots = load_roots(self.ca_cert)
        chain = load_certs(_read(self.cert, "certificate"), str(self.cert))
        key = load_key(_read(self.key, "key"), str(self.key))
        if (
            key.public_key().public_bytes_raw()
            != principal_of(chain[0]).public_key.public_bytes_raw()
        ):
            raise ConfigError(f"{self.key} is not the key of {self.cert}")
        return MemberIdentity(tuple(chain), key, tuple(roots))

    def save(self, ident: MemberIdentity) -> None:
        """Write (or replace, on renewal) the identity; the key first, the certificate last."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.ca_cert, certs_pem(ident.roots))
        atomic_write(self.key, key_pem(ident.key), 0o600)
        atomic_write(self.cert, certs_pem(ident.chain))
