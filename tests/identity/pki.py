"""A throw-away mesh PKI for HTTP tests: a real root and issuing CA, real member
certificates and bearer tokens, made by :mod:`reconciler.identity` itself."""

from __future__ import annotations

import itertools
import ssl
import time
from pathlib import Path

from reconciler.identity import CADir, MemberDir, MemberIdentity, make_token, new_key
from reconciler.identity.live import LiveIdentity
from reconciler.identity.names import Access
from reconciler.identity.tls import client_context

MESH = "testmesh"
CLUSTER = "myco"
_n = itertools.count()


class Pki:
    """One mesh CA in ``root``; members and tokens on demand."""

    def __init__(self, root: Path, mesh: str = MESH) -> None:
        self.root = root
        self.ca = CADir(root / "ca")
        self.ca.create(mesh)
        self.issuer = self.ca.issuer()

    def member(
        self,
        role: str,
        name: str,
        *,
        access: Access | None = None,
        now: float | None = None,
        lifetime_s: float = 3600.0,
    ) -> MemberDir:
        """A member (or person, role ``operator``) identity directory."""
        key = new_key()
        cert = self.issuer.issue(
            role,
            name,
            key.public_key(),
            now=time.time() if now is None else now,
            lifetime_s=lifetime_s,
            access=access,
        )
        d = MemberDir(self.root / f"id-{role}-{name}-{next(_n)}")
        d.save(MemberIdentity((cert, self.issuer.cert), key, (self.issuer.root,)))
        return d

    def renewal(self, d: MemberDir, role: str, access: Access | None = None) -> MemberIdentity:
        """A renewed certificate for the member of ``d`` (a new key, the same name)."""
        old = d.load()
        key = new_key()
        cert = self.issuer.issue(role, old.name, key.public_key(), now=time.time(), access=access)
        return MemberIdentity((cert, self.issuer.cert), key, old.roots)

    def live(self, role: str, name: str) -> LiveIdentity:
        return LiveIdentity(self.member(role, name), CLUSTER)

    def client(self, d: MemberDir | None) -> ssl.SSLContext:
        """A client context that trusts this mesh's root (so it accepts this mesh's servers)
        and presents ``d``'s certificate (whichever CA made it), or none."""
        if d is None:
            return client_context(None, None, self.ca.ca_cert)
        return client_context(d.cert, d.key, self.ca.ca_cert)

    def token(self, name: str, access: Access, *, ttl_s: float = 3600.0) -> str:
        return make_token(self.issuer, "bearer", name, now=time.time(), ttl_s=ttl_s, access=access)
