"""Signed fabric records: every record is signed by its writer and checked before it is used.

The fabric engine calls a :class:`RecordGuard` (its ``RecordGuard`` protocol) at two points:
``sign`` when this member publishes, ``admit`` before a record from anybody else is stored,
forwarded or shown. A record is admitted only if

1. it carries a signature (Ed25519 over the canonical JSON of ``[cluster, owner, key,
   version, value]``, a tombstone's value being ``null``) by the key of its owner's
   certificate (the owner is signed too: else a record could be replayed under another
   member name the same certificate may use, e.g. ``h1#x`` for ``h1``);
2. that certificate chains to the mesh root, is valid now and is not revoked;
3. the certificate's role and name may write that key (:func:`.authz.may_write`), and the
   record does not speak for somebody else (a node record's ``node_id``, an instance
   record's ``node`` is the writer itself).

Certificates travel as records too (``certs/<name>``: ``{"chain": PEM}``), checked against
the chain they carry. A record whose writer's certificate has not arrived yet is parked (a
bounded number per owner) and admitted when it does. ``revocations`` records carry a list
signed by the issuing CA; every member merges them and hides what a revoked member wrote.
Refusals are counted by reason (:attr:`RecordGuard.refused`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature

from reconciler.errors import IdentityError

from .authz import CERT_PREFIX, may_write
from .ca import certs_pem, load_certs
from .member import MemberIdentity
from .names import owner_matches
from .verify import Principal, Verifier

log = logging.getLogger("myco.identity")

KEY_REVOCATIONS = "revocations"
PENDING = "no-certificate"
MAX_PARKED_PER_OWNER = 512


def canonical(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def record_message(cluster: str, owner: str, key: str, version: int, value: Any) -> bytes:
    return canonical([cluster, owner, key, version, value])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise IdentityError("not base64", "bad-signature") from exc


def cert_key(name: str) -> str:
    return CERT_PREFIX + name


def revocation_value(
    issuer_chain_pem: str, entries: list[dict[str, Any]], sign: Callable[[bytes], bytes]
) -> dict[str, Any]:
    """The value of a ``revocations`` record: ``entries`` signed by the issuing CA."""
    return {"issuer": issuer_chain_pem, "list": entries, "sig": b64(sign(canonical(entries)))}


class RecordGuard:
    """Signs this member's records and admits others' (see the module docstring)."""

    def __init__(
        self,
        me: MemberIdentity,
        verifier: Verifier,
        cluster: str,
        wall: Callable[[], float],
    ) -> None:
        self.me = me
        self.verifier = verifier
        self.cluster = cluster
        self.wall = wall
        self.refused: Counter[str] = Counter()
        self.admitted = 0
        self._certs: dict[str, Principal] = {}  # owner -> its current certificate
        self._cert_version: dict[str, int] = {}
        self._parked: dict[str, list[object]] = {}
        self._blocked: set[str] = set()
        self._rev_lists: dict[str, list[tuple[str, float]]] = {}  # owner -> its list
        self._me_principal = verifier.check_chain(list(me.chain), wall())

    # This member.

    def set_identity(self, me: MemberIdentity) -> None:
        """A renewed certificate (same name): sign with it from now on."""
        self.me = me
        self._me_principal = self.verifier.check_chain(list(me.chain), self.wall())

    def cert_record(self) -> tuple[str, dict[str, Any]]:
        return cert_key(self.me.name), {"chain": self.me.chain_pem()}

    def sign(self, owner: str, key: str, version: int, value: Any) -> str:
        """The signature of this member's record (``owner``: its fabric member name)."""
        return b64(self.me.key.sign(record_message(self.cluster, owner, key, version, value)))

    # Others.

    def blocked(self, owner: str) -> bool:
        return owner in self._blocked

    def principal(self, owner: str) -> Principal | None:
        return self._certs.get(owner)

    def admit(self, owner: str, key: str, version: int, value: Any, sig: str) -> str:
        """ "" if the record may be used, else the reason it is refused (``PENDING``: the
        writer's certificate has not arrived; park the record with :meth:`park`)."""
        try:
            self._admit(owner, key, version, value, sig)
        except IdentityError as exc:
            if exc.reason != PENDING:
                self.refused[exc.reason] += 1
                log.debug("refused %s of %s: %s", key, owner, exc)
            return exc.reason
        self.admitted += 1
        return ""

    def _admit(self, owner: str, key: str, version: int, value: Any, sig: str) -> None:
        if not sig:
            raise IdentityError("unsigned record", "unsigned")
        now = self.wall()
        if key.startswith(CERT_PREFIX):
            if value is None:
                raise IdentityError("a certificate record cannot be withdrawn", "unauthorized")
            chain = value.get("chain") if isinstance(value, dict) else None
            if not isinstance(chain, str):
                raise IdentityError("a certificate record holds no chain", "bad-certificate")
            p = self.verifier.check_pem(chain, now)
        else:
            p0 = self._certs.get(owner)
            if p0 is None and owner_matches(self.me.name, owner):
                p0 = self._me_principal  # an echo of our own record
            if p0 is None:
                raise IdentityError(f"no certificate of {owner} yet", PENDING)
            p = self.verifier.check_principal(p0, now)
        if not may_write(p.role, p.name, owner, key):
            raise IdentityError(f"{p.role} {p.name} may not write {key} as {owner}", "unauthorized")
        try:
            p.public_key.verify(
                unb64(sig), record_message(self.cluster, owner, key, version, value)
            )
        except InvalidSignature:
            raise IdentityError(f"bad signature on {key} of {owner}", "bad-signature") from None
        if isinstance(value, dict):
            speaks_for = value.get("node_id") if key == "node" else (
                value.get("node") if key.startswith("inst/") else None
            )  # fmt: skip
            if speaks_for is not None and speaks_for != p.name:
                raise IdentityError(f"{p.name} may not speak for {speaks_for}", "unauthorized")
        if key == KEY_REVOCATIONS and value is not None:
            self._check_revocations(value, now)

    def _check_revocations(self, value: Any, now: float) -> list[tuple[str, float]]:
        if not isinstance(value, dict) or not isinstance(value.get("list"), list):
            raise IdentityError("a revocation list is malformed", "malformed")
        issuer_pem = value.get("issuer")
        if not isinstance(issuer_pem, str):
            raise IdentityError("a revocation list names no issuer", "malformed")
        issuer = self.verifier.issuer(load_certs(issuer_pem)[0], now)
        pub = issuer.public_key()
        try:
            pub.verify(unb64(str(value.get("sig", ""))), canonical(value["list"]))  # type: ignore[call-arg,union-attr]
        except (InvalidSignature, TypeError):
            raise IdentityError(
                "a revocation list not signed by the issuing CA", "bad-signature"
            ) from None
        out: list[tuple[str, float]] = []
        for e in value["list"]:
            if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                raise IdentityError("a revocation entry is malformed", "malformed")
            before = e.get("before")
            if not isinstance(before, int | float):
                raise IdentityError("a revocation entry is malformed", "malformed")
            out.append((e["name"], float(before)))
        return out

    def applied(self, owner: str, key: str, version: int, value: Any) -> list[str]:
        """An admitted record was stored: learn certificates and revocations from it.
        Returns the owners whose records must now be hidden (revoked)."""
        if key.startswith(CERT_PREFIX) and isinstance(value, dict):
            if version >= self._cert_version.get(owner, 0):
                self._certs[owner] = self.verifier.check_pem(value["chain"], self.wall())
                self._cert_version[owner] = version
                self._blocked.discard(owner)
            return []
        if key == KEY_REVOCATIONS and value is not None:
            try:  # checked by admit() already, unless it is our own record
                self._rev_lists[owner] = self._check_revocations(value, self.wall())
            except IdentityError as exc:
                log.warning("revocation list of %s not applied: %s", owner, exc)
                return []
            self.verifier.revocations.merge(e for lst in self._rev_lists.values() for e in lst)
            # Every time, not only when the list grew: a revocation may have been added to
            # the verifier directly (the reconciler that issues it) before its record.
            hidden = []
            for o, p in self._certs.items():
                if o not in self._blocked and self.verifier.revocations.revoked(p):
                    self._blocked.add(o)
                    hidden.append(o)
            return hidden
        return []

    # Parking records whose writer's certificate has not arrived.

    def park(self, owner: str, item: object) -> None:
        lst = self._parked.setdefault(owner, [])
        if len(lst) >= MAX_PARKED_PER_OWNER:
            self.refused[PENDING] += 1
            return
        lst.append(item)

    def unpark(self, owner: str) -> list[object]:
        return self._parked.pop(owner, [])

    def forget(self, owner: str) -> None:
        self._certs.pop(owner, None)
        self._cert_version.pop(owner, None)
        self._parked.pop(owner, None)
        self._blocked.discard(owner)
        self._rev_lists.pop(owner, None)


def cert_chain_pem(me: MemberIdentity) -> str:
    return certs_pem(me.chain)
