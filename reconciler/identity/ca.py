"""Making certificates: the mesh root CA, the reconcilers' issuing CA, member certificates.

Every key is Ed25519. The chain is short and fixed::

    root CA   (myco init; kept offline)     CA, path length 1, ~10 years
    issuer    (reconcilers; signs members)  CA, path length 0, ~2 years
    member    (agent, edge, reconciler,     not a CA, ~24 h (people: as asked),
               operator)                    URI SAN spiffe://<mesh>/<role>/<name>

A member certificate is backdated by a minute so that hosts whose clocks differ by less
than that accept it at once. Its subject's OU carries a person's access level
(viewer/operator/admin) for operator certificates.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reconciler.errors import IdentityError

from .names import SCHEME, Access, check_access, check_mesh, check_role, spiffe_id

ROOT_DAYS = 3650
ISSUER_DAYS = 730
MEMBER_LIFETIME_S = 24 * 3600.0
BACKDATE_S = 60.0


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def _serial() -> int:
    return secrets.randbits(120) | (1 << 120)


def _base(
    subject: x509.Name, issuer: x509.Name, public_key: Ed25519PublicKey, start: float, end: float
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(_utc(start))
        .not_valid_after(_utc(end))
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def make_root(
    mesh: str, *, now: float, days: int = ROOT_DAYS
) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    """A self-signed root CA for ``mesh`` (its URI SAN is ``spiffe://<mesh>``)."""
    check_mesh(mesh)
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"myco root CA ({mesh})")])
    cert = (
        _base(name, name, key.public_key(), now - BACKDATE_S, now + days * 86400.0)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"{SCHEME}{mesh}")]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )
    return cert, key


def make_issuer(
    root: x509.Certificate, root_key: Ed25519PrivateKey, mesh: str, *, now: float,
    days: int = ISSUER_DAYS,
) -> tuple[x509.Certificate, Ed25519PrivateKey]:  # fmt: skip
    """The issuing CA reconcilers hold: signs member certificates, tokens and revocations."""
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"myco issuing CA ({mesh})")])
    end = min(now + days * 86400.0, root.not_valid_after_utc.timestamp())
    cert = (
        _base(subject, root.subject, key.public_key(), now - BACKDATE_S, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"{SCHEME}{mesh}")]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, None)
    )
    return cert, key


@dataclass(frozen=True)
class Issuer:
    """An issuing CA: its certificate (and the root above it) and its private key."""

    cert: x509.Certificate
    key: Ed25519PrivateKey
    root: x509.Certificate
    mesh: str

    def issue(
        self,
        role: str,
        name: str,
        public_key: Ed25519PublicKey,
        *,
        now: float,
        lifetime_s: float = MEMBER_LIFETIME_S,
        access: Access | None = None,
    ) -> x509.Certificate:
        """A member certificate for ``role``/``name`` (an operator's carries ``access``)."""
        check_role(role)
        if lifetime_s <= 0:
            raise IdentityError("a certificate lifetime must be positive")
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
        if role == "operator":
            attrs.append(
                x509.NameAttribute(
                    NameOID.ORGANIZATIONAL_UNIT_NAME, check_access(access or "operator")
                )
            )
        uri = spiffe_id(self.mesh, role, name)
        end = min(now + lifetime_s, self.cert.not_valid_after_utc.timestamp())
        return (
            _base(x509.Name(attrs), self.cert.subject, public_key, now - BACKDATE_S, end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),  # fmt: skip
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, None)
        )

    def chain(self, leaf: x509.Certificate) -> list[x509.Certificate]:
        return [leaf, self.cert]


# PEM helpers (one place for every file and record that carries certificates or keys).


def certs_pem(certs: Sequence[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


def load_certs(data: bytes | str, what: str = "certificate") -> list[x509.Certificate]:
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError as exc:
        raise IdentityError(f"{what}: not a PEM certificate ({exc})", "bad-certificate") from exc
    if not certs:
        raise IdentityError(f"{what}: no certificate", "bad-certificate")
    return certs


def key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(data: bytes, what: str = "key") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{what}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{what}: not an Ed25519 key")
    return key
