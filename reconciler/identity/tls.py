"""TLS contexts from a member identity: mutual TLS 1.3 between members, the mesh CA as the
only trust anchor.

Servers ask for a client certificate but do not require one at the TLS layer
(``CERT_OPTIONAL``): a browser or a script with a bearer token connects without one, and
the HTTP layer (:mod:`reconciler.identity.httpauth`) decides who may do what. A client
certificate that is sent must chain to the mesh root, or the handshake fails. Clients
verify the server's chain to the mesh root; member certificates name no host (their
identity is the URI), so host name checking is off and the peer's identity is checked by
the caller where it matters.

Renewal: :func:`reload` loads the new certificate into the same context objects, so new
connections use it and open ones carry on.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path, key: Path, roots: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=roots)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(cert: Path | None, key: Path | None, roots: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=roots)
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def reload(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Use a renewed certificate for new connections (open ones are not touched)."""
    ctx.load_cert_chain(cert, key)
