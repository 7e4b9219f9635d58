"""Checking who a certificate chain names, now: chain to the mesh root, validity, revocation.

:class:`Verifier` holds the trusted roots (``ca.crt``: one, or two while the root is being
rotated), the issuing CAs it has seen verified, and the :class:`Revocations` in force. A
chain is ``[leaf, issuer]`` (or ``[leaf]`` when the issuer is already known). Parsing and
signature checks are cached per chain; validity and revocation are checked on every call,
so a cached certificate still expires and is still revoked in time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from reconciler.errors import IdentityError

from .ca import BACKDATE_S, load_certs
from .names import Access, Role, parse_spiffe


@dataclass(frozen=True)
class Principal:
    """A verified member or person: what its certificate says."""

    mesh: str
    role: Role
    name: str
    serial: int
    not_before: float
    not_after: float
    fingerprint: str  # SHA-256 of the leaf's DER, hex
    public_key: Ed25519PublicKey = field(compare=False, repr=False)
    access: Access | None = None  # operators only

    @property
    def uri(self) -> str:
        return f"spiffe://{self.mesh}/{self.role}/{self.name}"


def fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass
class Revocations:
    """Identities revoked by name: every certificate of ``name`` issued before ``before``."""

    by_name: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, before: float) -> bool:
        """Record a revocation; True if it changed anything."""
        if self.by_name.get(name, -1.0) >= before:
            return False
        self.by_name[name] = before
        return True

    def merge(self, entries: Iterable[tuple[str, float]]) -> list[str]:
        return [n for n, b in entries if self.add(n, b)]

    def revoked(self, p: Principal) -> bool:
        before = self.by_name.get(p.name)
        # Issued at not_before + the backdating: a certificate issued just after the
        # revocation (a re-enrolled host) is valid, though its not_before is earlier.
        return before is not None and p.not_before + BACKDATE_S < before

    def to_json(self) -> list[dict[str, object]]:
        return [{"name": n, "before": b} for n, b in sorted(self.by_name.items())]


def _verify_issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


class Verifier:
    def __init__(self, roots: Sequence[x509.Certificate], mesh: str) -> None:
        if not roots:
            raise IdentityError("no mesh root CA to trust")
        self.mesh = mesh
        self.roots = {fingerprint(r): r for r in roots}
        self.issuers: dict[str, x509.Certificate] = {}  # fingerprint -> verified issuing CA
        self.revocations = Revocations()
        self._cache: dict[bytes | str, tuple[Principal, float, float]] = {}
        # ^ chain text -> (principal, the issuer's not_before, its not_after)

    # Issuing CAs.

    def issuer(self, cert: x509.Certificate, now: float) -> x509.Certificate:
        """``cert`` if it is an issuing CA signed by a trusted root and valid ``now``."""
        fp = fingerprint(cert)
        known = self.issuers.get(fp)
        if known is None:
            if fp in self.roots:
                known = cert
            else:
                if not _is_ca(cert):
                    raise IdentityError("the issuer is not a CA", "wrong-ca")
                if not any(_verify_issued(cert, r) for r in self.roots.values()):
                    raise IdentityError("not issued by this mesh's root CA", "wrong-ca")
                known = cert
            self.issuers[fp] = known
        _check_time(known, now, "the issuing CA")
        return known

    def issuer_by_fingerprint(self, fp: str) -> x509.Certificate | None:
        return self.issuers.get(fp) or self.roots.get(fp)

    # Members.

    def check_pem(self, chain_pem: str | bytes, now: float) -> Principal:
        """A chain as PEM text (a ``certs/<name>`` record)."""
        return self._check_cached(chain_pem, lambda: load_certs(chain_pem), now)

    def check_der(self, leaf_der: bytes, now: float) -> Principal:
        """A leaf as DER (a TLS peer's certificate; its issuer must be known here)."""

        def parse() -> list[x509.Certificate]:
            try:
                return [x509.load_der_x509_certificate(leaf_der)]
            except ValueError:
                raise IdentityError("not a certificate", "bad-certificate") from None

        return self._check_cached(b"der:" + leaf_der, parse, now)

    def _check_cached(
        self, key: str | bytes, parse: Callable[[], list[x509.Certificate]], now: float
    ) -> Principal:
        hit = self._cache.get(key)
        if hit is None:
            p, nb, na = self._parse(parse(), now)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = (p, nb, na)
        else:
            p, nb, na = hit
            if not (nb <= now <= na):
                raise IdentityError("the issuing CA is expired or not yet valid", "expired")
        return self.check_principal(p, now)

    def check_chain(self, chain: Sequence[x509.Certificate], now: float) -> Principal:
        p, _, _ = self._parse(chain, now)
        return self.check_principal(p, now)

    def check_principal(self, p: Principal, now: float) -> Principal:
        """``p`` if it is valid ``now`` and not revoked."""
        if now < p.not_before:
            raise IdentityError(f"the certificate of {p.name} is not valid yet", "not-yet-valid")
        if now > p.not_after:
            raise IdentityError(f"the certificate of {p.name} has expired", "expired")
        if self.revocations.revoked(p):
            raise IdentityError(f"the certificate of {p.name} is revoked", "revoked")
        return p

    def _parse(
        self, chain: Sequence[x509.Certificate], now: float
    ) -> tuple[Principal, float, float]:
        if not chain:
            raise IdentityError("no certificate", "bad-certificate")
        leaf = chain[0]
        parent = None
        for cand in list(chain[1:]) + list(self.issuers.values()) + list(self.roots.values()):
            if cand.subject == leaf.issuer and _verify_issued(leaf, cand):
                parent = cand
                break
        if parent is None:
            raise IdentityError("not issued by this mesh's CA", "wrong-ca")
        parent = self.issuer(parent, now)
        if _is_ca(leaf):
            raise IdentityError("a CA certificate cannot be a member", "bad-certificate")
        p = principal_of(leaf, self.mesh)
        return (
            p,
            parent.not_valid_before_utc.timestamp(),
            parent.not_valid_after_utc.timestamp(),
        )


def _check_time(cert: x509.Certificate, now: float, what: str) -> None:
    if now < cert.not_valid_before_utc.timestamp():
        raise IdentityError(f"{what} is not valid yet", "not-yet-valid")
    if now > cert.not_valid_after_utc.timestamp():
        raise IdentityError(f"{what} has expired", "expired")


def principal_of(leaf: x509.Certificate, mesh: str | None = None) -> Principal:
    """What a member certificate says (no chain or time check: see :class:`Verifier`)."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError("the certificate names no mesh identity", "bad-certificate") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise IdentityError("a member certificate names exactly one identity", "bad-certificate")
    try:
        m, role, name = parse_spiffe(uris[0])
    except IdentityError as exc:
        raise IdentityError(str(exc), "bad-certificate") from None
    if mesh is not None and m != mesh:
        raise IdentityError(f"the certificate is for mesh {m!r}, not {mesh!r}", "wrong-ca")
    key = leaf.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError("a member key must be Ed25519", "bad-certificate")
    access: Access | None = None
    if role == "operator":
        ous = leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        value = str(ous[0].value) if ous else "operator"
        access = value if value in ("viewer", "operator", "admin") else "viewer"  # type: ignore[assignment]
    return Principal(
        mesh=m,
        role=role,
        name=name,
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        fingerprint=fingerprint(leaf),
        public_key=key,
        access=access,
    )
