"""A daemon's identity while it runs: one object the fabric, the HTTP servers and clients
and the renewal loop share.

:class:`LiveIdentity` holds the member's certificate and key (in its identity directory),
the :class:`~.verify.Verifier` (roots, known issuing CAs, revocations learnt from the
fabric), the :class:`~.guard.RecordGuard` that signs and admits fabric records, and the
server and client TLS contexts. :meth:`LiveIdentity.renewed` swaps in a renewed
certificate everywhere at once, without a restart and without touching open connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .guard import RecordGuard
from .layout import MemberDir, verifier_for
from .member import MemberIdentity
from .tls import client_context, reload, server_context
from .verify import Principal, Verifier


class LiveIdentity:
    def __init__(
        self, directory: MemberDir, cluster: str, *, wall: Callable[[], float] = time.time
    ) -> None:
        self.dir = directory
        self.member: MemberIdentity = directory.load()
        self.wall = wall
        self.verifier: Verifier = verifier_for(list(self.member.roots))
        for cert in self.member.chain[1:]:  # our issuer: tokens and peers' leaves name it
            self.verifier.issuer(cert, wall())
        self.guard = RecordGuard(self.member, self.verifier, cluster, wall)
        self.server_ssl = server_context(directory.cert, directory.key, directory.ca_cert)
        self.client_ssl = client_context(directory.cert, directory.key, directory.ca_cert)
        self._listeners: list[Callable[[], None]] = []

    @property
    def principal(self) -> Principal:
        return self.member.principal

    @property
    def name(self) -> str:
        return self.member.name

    def on_renewed(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` after every renewal (e.g. the fabric republishes the certificate)."""
        self._listeners.append(fn)

    def renewed(self, member: MemberIdentity) -> None:
        """Install a renewed certificate: on disk, in the guard, in both TLS contexts."""
        if member.name != self.member.name:
            raise ValueError("a renewal keeps the member's name")
        self.verifier.check_chain(list(member.chain), self.wall())
        self.dir.save(member)
        self.member = member
        self.guard.set_identity(member)
        reload(self.server_ssl, self.dir.cert, self.dir.key)
        reload(self.client_ssl, self.dir.cert, self.dir.key)
        for fn in self._listeners:
            fn()
