"""The reconciler as certificate authority: enrolment, renewal and revocation over HTTP.

Mounted on the reconciler's control API (:func:`reconciler.reconcile.http.make_app`'s
``extra_routes``) when it holds the issuing CA (``myco reconcile --ca DIR``)::

    POST /v1/enrol   {"token": "<join token>", "public_key": "<PEM>"}
                     -> {"chain": PEM, "name", "role", "not_after"}
                     a one-time join token: its nonce is remembered in
                     <state>/enrolled.json until the token expires; the active reconciler
                     only (a standby answers 409, as for every other POST)
    POST /v1/renew   {"chain": PEM, "at": T, "sig": ...} -> {"chain": PEM, ...}
                     the caller's own member certificate is renewed: same role, name and
                     public key (any reconciler holding the CA answers). The caller is
                     its mutual-TLS certificate, else the body: its certificate and a fresh
                     signature by its key (:func:`~reconciler.identity.enrol.renewal_proof`;
                     a plain loopback listener, ``myco up``)
    POST /v1/revoke  {"name": NAME} -> {"ok", "message", "revoked": [...]}
                     admin only; every certificate of NAME issued before now is revoked:
                     <state>/revocations.json, and the ``revocations`` fabric record
                     signed by the issuing CA (applied here at once, by every member as
                     the record spreads)

Who calls is the verified :class:`~reconciler.identity.Principal` the HTTP layer's
authentication put on the request (:data:`~reconciler.identity.httpauth.PRINCIPAL`, its
access in :data:`~reconciler.identity.httpauth.CALLER`), else the member certificate the
caller presented on this TLS connection. Answers are JSON; refusals are
``{"error": "..."}`` with 400 (malformed), 401 (no or invalid credentials), 403 (not
allowed, token refused or already used), 409 (a standby) or 503 (no issuing CA here).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from reconciler.errors import ConfigError, IdentityError
from reconciler.fabric.api import FabricAPI
from reconciler.files import atomic_write
from reconciler.identity.authz import access_of, allows
from reconciler.identity.ca import Issuer, certs_pem
from reconciler.identity.enrol import check_renewal_proof
from reconciler.identity.guard import KEY_REVOCATIONS, revocation_value
from reconciler.identity.httpauth import CALLER, PRINCIPAL
from reconciler.identity.live import LiveIdentity
from reconciler.identity.names import MEMBER_ROLES, check_name
from reconciler.identity.tokens import check_token
from reconciler.identity.verify import Principal

log = logging.getLogger("myco.reconciler.ca")

ENROLLED_FILE = "enrolled.json"
REVOCATIONS_FILE = "revocations.json"
MAX_BODY = 64 * 1024

#: ``() -> (active, holder)``: whether this reconciler holds the lease, and who does.
LeaseView = Callable[[], tuple[bool, str]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def load_revocations(path: Path) -> list[tuple[str, float]]:
    """The entries of ``revocations.json`` (none if it does not exist)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable revocation list: {exc}") from exc
    entries = data.get("revocations") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected {{'revocations': [...]}}")
    out = []
    for e in entries:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("name"), str)
            and isinstance(e.get("before"), int | float)
        ):
            raise ConfigError(f"{path}: malformed revocation entry {e!r}")
        out.append((e["name"], float(e["before"])))
    return out


class CAService:
    """Enrolment, renewal and revocation for one reconciler (see the module docstring)."""

    def __init__(
        self,
        *,
        issuer: Issuer | None,
        live: LiveIdentity,
        state: Path,
        fabric: FabricAPI,
        lease: LeaseView,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.live = live
        self.state = state
        self.fabric = fabric
        self.lease = lease
        self.wall = wall
        self.enrolled_path = state / ENROLLED_FILE
        self.revocations_path = state / REVOCATIONS_FILE
        self._used = self._load_used()
        self._published: list[tuple[str, float]] = []
        self.live.verifier.revocations.merge(load_revocations(self.revocations_path))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/enrol", self.enrol),
            web.post("/v1/renew", self.renew),
            web.post("/v1/revoke", self.revoke),
        ]

    # -- enrolment ----------------------------------------------------------------------

    def _load_used(self) -> dict[str, float]:
        try:
            data = json.loads(self.enrolled_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.enrolled_path}: unreadable: {exc}") from exc
        used = data.get("used") if isinstance(data, dict) else None
        if not isinstance(used, dict):
            raise ConfigError(f"{self.enrolled_path}: expected {{'used': {{nonce: expiry}}}}")
        return {str(k): float(v) for k, v in used.items() if isinstance(v, int | float)}

    def _remember(self, nonce: str, exp: float) -> None:
        now = self.wall()
        self._used = {n: e for n, e in self._used.items() if e >= now - 60.0}
        self._used[nonce] = exp
        atomic_write(self.enrolled_path, json.dumps({"used": self._used}, indent=1) + "\n")

    async def enrol(self, request: web.Request) -> web.Response:
        if self.issuer is None:
            return _error(503, "this reconciler holds no issuing CA (start it with --ca DIR)")
        active, holder = self.lease()
        if not active:
            return _error(409, f"not the active reconciler; the lease is held by {holder or '?'}")
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        token, pem = body.get("token"), body.get("public_key")
        if not isinstance(token, str) or not isinstance(pem, str):
            return _error(400, "expected {'token': ..., 'public_key': PEM}")
        now = self.wall()
        try:
            tok = check_token(token, self.live.verifier, now, "join")
        except IdentityError as exc:
            log.warning("enrolment refused: %s", exc)
            return _error(403, f"join token refused: {exc}")
        request[PRINCIPAL] = tok  # the audit log names who enrolled
        if tok.role not in MEMBER_ROLES:
            return _error(403, f"a join token cannot make a member of role {tok.role}")
        if not tok.nonce or tok.nonce in self._used:
            log.warning("enrolment refused: the join token of %s was already used", tok.name)
            return _error(403, f"join token refused: it was already used (for {tok.name})")
        try:
            key = _public_key(pem)
        except ValueError as exc:
            return _error(400, str(exc))
        self._remember(tok.nonce, tok.exp)  # spent before anything can fail after it
        assert tok.role is not None
        cert = self.issuer.issue(tok.role, tok.name, key, now=now)
        log.warning("enrolled %s %s (join token)", tok.role, tok.name)
        return self._answer(cert, tok.role, tok.name)

    def _answer(self, cert: x509.Certificate, role: str, name: str) -> web.Response:
        assert self.issuer is not None
        return web.json_response(
            {
                "chain": certs_pem(self.issuer.chain(cert)),
                "role": role,
                "name": name,
                "not_after": cert.not_valid_after_utc.timestamp(),
            }
        )

    # -- renewal ------------------------------------------------------------------------

    async def renew(self, request: web.Request) -> web.Response:
        if self.issuer is None:
            return _error(503, "this reconciler holds no issuing CA (start it with --ca DIR)")
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            p = self.caller(request) or check_renewal_proof(body, self.live.verifier, self.wall())
        except IdentityError as exc:
            return _error(401, f"cannot renew: {exc}")
        if p.role not in MEMBER_ROLES:
            return _error(403, f"{p.role} certificates are not renewed here: issue a new one")
        cert = self.issuer.issue(p.role, p.name, p.public_key, now=self.wall(), access=p.access)
        log.info("renewed the certificate of %s %s", p.role, p.name)
        return self._answer(cert, p.role, p.name)

    # -- revocation ----------------------------------------------------------------------

    async def revoke(self, request: web.Request) -> web.Response:
        try:
            p = self.caller(request)
        except IdentityError as exc:
            return _error(401, str(exc))
        have = _access(request, p)
        if have is None:
            return _error(401, "revoking needs an admin's credentials")
        if not allows(have, "admin"):
            return _error(403, f"revoking needs admin access (you have {have})")
        if self.issuer is None:
            return _error(503, "this reconciler holds no issuing CA (start it with --ca DIR)")
        active, holder = self.lease()
        if not active:
            return _error(409, f"not the active reconciler; the lease is held by {holder or '?'}")
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("name")
        if not isinstance(name, str):
            return _error(400, "expected {'name': NAME}")
        try:
            check_name(name)
        except IdentityError as exc:
            return _error(400, str(exc))
        now = self.wall()
        self.live.verifier.revocations.add(name, now)
        self.publish()
        caller = request.get(CALLER)
        who = (caller.name if caller is not None else "") or (p.name if p is not None else "?")
        log.warning("revoked every certificate of %s issued before now (by %s)", name, who)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        return web.json_response(
            {
                "ok": True,
                "message": f"{name} revoked: its certificates issued before {when} are refused "
                "everywhere as the revocation list spreads",
                "revoked": self.live.verifier.revocations.to_json(),
            }
        )

    def entries(self) -> list[tuple[str, float]]:
        return sorted(self.live.verifier.revocations.by_name.items())

    def publish(self) -> None:
        """Save the revocations in force and publish them (signed by the issuing CA), if any
        changed since the last time; applied to this member's own guard at once."""
        entries = self.entries()
        if not entries or entries == self._published or self.issuer is None:
            return
        listed: list[dict[str, Any]] = [{"name": n, "before": b} for n, b in entries]
        atomic_write(self.revocations_path, json.dumps({"revocations": listed}, indent=1) + "\n")
        value = revocation_value(certs_pem([self.issuer.cert]), listed, self.issuer.key.sign)
        self.fabric.publish(KEY_REVOCATIONS, value)
        # Our own record never comes back to us through the guard: apply it here.
        self.live.guard.applied(self.fabric.name, KEY_REVOCATIONS, 0, value)
        self._published = entries

    async def follow(self) -> None:
        """Publish the revocations in force, then keep our list the union of every
        reconciler's (a revocation outlives the reconciler that published it)."""
        self.publish()
        async for change in self.fabric.subscribe(KEY_REVOCATIONS):
            if change.owner != self.fabric.name:  # the guard has merged its list already
                self.publish()

    # -- who is calling -------------------------------------------------------------------

    def caller(self, request: web.Request) -> Principal | None:
        """The caller's verified member or operator certificate: the one the HTTP layer's
        authentication found (``request[PRINCIPAL]``), else the certificate of this TLS
        connection, checked now. None: no certificate (a bearer token, or nothing)."""
        p = request.get(PRINCIPAL)
        if isinstance(p, Principal):
            return self.live.verifier.check_principal(p, self.wall())
        if CALLER in request:  # authenticated already, and not by a certificate
            return None
        transport = request.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            return None
        leaf = x509.load_der_x509_certificate(der)
        return self.live.verifier.check_chain([leaf], self.wall())


def _access(request: web.Request, p: Principal | None) -> str | None:
    """The caller's HTTP access: as the HTTP layer's authentication found it (a bearer
    token's, or an open loopback listener's), else its certificate's."""
    caller = request.get(CALLER)
    found = caller.access if caller is not None else None
    if isinstance(found, str):
        return found
    return access_of(p.role, p.access) if p is not None else None


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _error(400, "body too large")
    try:
        raw = await request.content.read(MAX_BODY + 1)
    except (OSError, asyncio.IncompleteReadError):
        return _error(400, "body: could not be read")
    if len(raw) > MAX_BODY:
        return _error(400, "body too large")
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return _error(400, "body: not JSON")
    if not isinstance(body, dict):
        return _error(400, "body: expected a JSON object")
    return body


def _public_key(pem: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii", "replace"))
    except (ValueError, TypeError):
        raise ValueError("public_key: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("public_key: not an Ed25519 key")
    return key
