"""Signed tokens: bearer tokens with an access level, and one-time join tokens.

A token is ``myco1.<payload>.<signature>``: the payload is base64url canonical JSON
(``kind``, ``mesh``, ``name``, ``role`` or ``access``, ``iat``, ``exp``, ``nonce``, and the
fingerprint ``iss`` of the issuing CA that signed it), the signature Ed25519 by that CA.
Any member that trusts the mesh root and has seen the issuing CA (every member's own chain
carries it) can check a token without asking anybody: no token database to replicate.
A join token is one-time: the reconciler that redeems it remembers its nonce.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature

from reconciler.errors import IdentityError

from .ca import Issuer
from .guard import b64, canonical, unb64
from .names import Access, Role, check_access, check_name, check_role
from .verify import Verifier, fingerprint

PREFIX = "myco1."
Kind = Literal["bearer", "join"]


@dataclass(frozen=True)
class Token:
    kind: Kind
    mesh: str
    name: str
    role: Role | None  # join tokens: the role the new member gets
    access: Access | None  # bearer tokens: what the holder may do
    iat: float
    exp: float
    nonce: str


def make_token(
    issuer: Issuer,
    kind: Kind,
    name: str,
    *,
    now: float,
    ttl_s: float,
    role: str | None = None,
    access: str | None = None,
) -> str:
    check_name(name)
    body: dict[str, Any] = {
        "kind": kind,
        "mesh": issuer.mesh,
        "name": name,
        "iat": int(now),
        "exp": int(now + ttl_s),
        "nonce": secrets.token_hex(12),
        "iss": fingerprint(issuer.cert),
    }
    if kind == "join":
        body["role"] = check_role(role or "agent")
    else:
        body["access"] = check_access(access or "viewer")
    payload = canonical(body)
    return PREFIX + b64(payload) + "." + b64(issuer.key.sign(payload))


def check_token(text: str, verifier: Verifier, now: float, kind: Kind) -> Token:
    """The token, if it is well formed, signed by a known issuing CA of this mesh, of
    ``kind``, current, and its name not revoked; else :class:`IdentityError`."""
    text = text.strip()
    if not text.startswith(PREFIX) or text.count(".") != 2:
        raise IdentityError("not a myco token", "malformed")
    _, payload_b, sig_b = text.split(".")
    payload = unb64(payload_b)
    try:
        body = json.loads(payload)
    except ValueError:
        raise IdentityError("not a myco token", "malformed") from None
    if not isinstance(body, dict):
        raise IdentityError("not a myco token", "malformed")
    issuer = verifier.issuer_by_fingerprint(str(body.get("iss", "")))
    if issuer is None:
        raise IdentityError("the token's issuing CA is unknown here", "wrong-ca")
    verifier.issuer(issuer, now)
    try:
        issuer.public_key().verify(unb64(sig_b), payload)  # type: ignore[call-arg,union-attr]
    except (InvalidSignature, TypeError):
        raise IdentityError("the token's signature does not verify", "bad-signature") from None
    if body.get("mesh") != verifier.mesh:
        raise IdentityError("the token is for another mesh", "wrong-ca")
    if body.get("kind") != kind:
        raise IdentityError(f"not a {kind} token", "malformed")
    exp, iat = body.get("exp"), body.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise IdentityError("not a myco token", "malformed")
    if now > exp:
        raise IdentityError("the token has expired", "expired")
    if now + 60 < iat:
        raise IdentityError("the token is not valid yet", "not-yet-valid")
    name = str(body.get("name", ""))
    before = verifier.revocations.by_name.get(name)
    if before is not None and iat < before:
        raise IdentityError(f"{name} is revoked", "revoked")
    return Token(
        kind=kind,
        mesh=str(body["mesh"]),
        name=check_name(name),
        role=check_role(str(body["role"])) if kind == "join" else None,
        access=check_access(str(body["access"])) if kind == "bearer" else None,
        iat=float(iat),
        exp=float(exp),
        nonce=str(body.get("nonce", "")),
    )
