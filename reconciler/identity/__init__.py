"""Who is who in a mesh: the mesh CA, member certificates, signed records, tokens.

Public API (see docs/identity.md)::

    CADir(path).create(mesh) / .issuer() -> Issuer      # myco init; reconcilers issue
    Issuer.issue(role, name, public_key, now=)           # a member certificate
    MemberDir(path).load() / .save(MemberIdentity)       # a member's own identity
    Verifier(roots, mesh).check_chain/check_pem(...)     # -> Principal, or IdentityError
    RecordGuard(me, verifier, cluster, wall)             # signs and admits fabric records
    may_write(role, name, owner, key), allows(have, need) # the authorization tables (pure)
    make_token / check_token                             # bearer and join tokens
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.lazy import lazy_exports

if TYPE_CHECKING:
    from reconciler.identity.authz import access_of, allows, may_write
    from reconciler.identity.ca import Issuer, new_key
    from reconciler.identity.guard import RecordGuard
    from reconciler.identity.layout import CADir, MemberDir, load_roots, verifier_for
    from reconciler.identity.member import MemberIdentity
    from reconciler.identity.tokens import Token, check_token, make_token
    from reconciler.identity.verify import Principal, Revocations, Verifier

_LAZY = {
    "access_of": "reconciler.identity.authz",
    "allows": "reconciler.identity.authz",
    "may_write": "reconciler.identity.authz",
    "Issuer": "reconciler.identity.ca",
    "new_key": "reconciler.identity.ca",
    "RecordGuard": "reconciler.identity.guard",
    "CADir": "reconciler.identity.layout",
    "MemberDir": "reconciler.identity.layout",
    "load_roots": "reconciler.identity.layout",
    "verifier_for": "reconciler.identity.layout",
    "MemberIdentity": "reconciler.identity.member",
    "Token": "reconciler.identity.tokens",
    "check_token": "reconciler.identity.tokens",
    "make_token": "reconciler.identity.tokens",
    "Principal": "reconciler.identity.verify",
    "Revocations": "reconciler.identity.verify",
    "Verifier": "reconciler.identity.verify",
}

__all__ = [
    "CADir", "Issuer", "MemberDir", "MemberIdentity", "Principal", "RecordGuard",
    "Revocations", "Token", "Verifier", "access_of", "allows", "check_token", "load_roots",
    "make_token", "may_write", "new_key", "verifier_for",
]  # fmt: skip
__getattr__ = lazy_exports(__name__, _LAZY)
