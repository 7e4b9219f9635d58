"""Who is calling, and may they: the middleware of every HTTP server of the mesh.

A server built with a :class:`HttpAuth` answers only callers it recognises, in this order:

1. ``Authorization: Bearer <myco1 token>`` (a person's bearer token: scripts, webhooks);
2. the client certificate of the TLS connection (mutual TLS: members, and people with an
   operator certificate), checked against the mesh's roots, its validity and the
   revocations learnt from the fabric on *every request*, so an identity revoked while its
   connection is open is refused at its next request;
3. for ``GET``/``HEAD`` only, the ``myco_token`` cookie a browser got by opening a
   dashboard URL with ``?token=<bearer token>`` once (the page's event stream cannot send
   a header; a cookie is never accepted for a call that changes state).

What a route needs comes from the pure table :data:`~.authz.ROUTE_ACCESS`; nobody
recognised → **401** with a short reason, recognised but not allowed → **403**. The
verified :class:`~.verify.Principal` (certificate) or :class:`~.tokens.Token` is put on
``request[PRINCIPAL]`` (None on an open listener), and a summary :class:`Caller` on
``request[CALLER]``. Every state-changing call, refused or not, goes to the audit log
(:mod:`.audit`); a handler that authenticates by itself (enrolment) may set
``request[PRINCIPAL]`` and the entry names who it found. Refusals are counted by reason
(:attr:`HttpAuth.refused`, exported as ``myco_http_auth_refused_total``).

**Open listeners.** A server without an identity (``live=None``) authenticates nobody and
lets everybody in: that is only allowed bound to loopback (``myco up`` on one machine), or
with an explicit ``--insecure``; :func:`listener_auth` refuses anything else. A server with
an identity authenticates every request, on loopback too, unless it is built with
``open_access=True`` (loopback only: TLS is still served, and every caller is ``local``).

Every route a server registers must have a row in the table: :meth:`HttpAuth.check_routes`
raises at start-up otherwise, so a new route is never served by accident.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

from reconciler.addr import is_loopback
from reconciler.errors import ConfigError, IdentityError

from .audit import AuditEntry, AuditLog, changes_state, log_entry
from .authz import Need, access_of, permits, route_need
from .names import Access
from .tokens import Token, check_token
from .verify import Principal

if TYPE_CHECKING:
    import ssl

    from .live import LiveIdentity

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
How = Literal["cert", "token", "open", "none"]

COOKIE = "myco_token"
#: Routes under this prefix take ``?token=`` once and set the cookie (the dashboard).
LOGIN_PREFIX = "/ui"
NO_CREDENTIALS = "no credentials: send a client certificate of this mesh or Authorization: Bearer"


@dataclass(frozen=True)
class Caller:
    """Who made a request, as far as this server could tell."""

    name: str  # certificate or token name; "local" on an open listener; "" nobody
    how: How
    role: str | None = None  # the certificate's role (agent, edge, reconciler, operator)
    access: Access | None = None  # viewer / operator / admin (members: viewer)

    @classmethod
    def of_principal(cls, p: Principal) -> Caller:
        return cls(p.name, "cert", p.role, access_of(p.role, p.access))

    @classmethod
    def of_token(cls, t: Token) -> Caller:
        return cls(t.name, "token", None, t.access)


#: The verified Principal (a certificate) or Token of a request; None on an open listener,
#: or when nobody was recognised (a public route). A handler that authenticates by itself
#: (enrolment) may set it: the audit entry then names who it found.
PRINCIPAL: web.RequestKey[Principal | Token | None] = web.RequestKey("principal")
#: Who made the request, as the middleware saw it (:class:`Caller`).
CALLER: web.RequestKey[Caller] = web.RequestKey("caller", Caller)

NOBODY = Caller("", "none")
#: (caller, the verified Principal or Token, "<reason code>\n<message>" if nobody).
Identified = tuple[Caller, Principal | Token | None, str]
LOCAL = Caller("local", "open", None, "admin")


class HttpAuth:
    """Authentication and authorization for one HTTP server (see the module).

    ``live=None`` (or ``open_access``) makes an open listener: nobody is authenticated and
    every route is allowed (use :func:`listener_auth`, which allows that on loopback only).
    With a :class:`~.live.LiveIdentity`, serve with :attr:`ssl_context` (mutual TLS).
    """

    def __init__(
        self,
        live: LiveIdentity | None,
        *,
        audit: AuditLog | None = None,
        wall: Callable[[], float] | None = None,
        open_access: bool = False,
    ) -> None:
        self.live = live
        self._open = live is None or open_access
        self.audit = audit
        self.wall: Callable[[], float] = wall or (live.wall if live is not None else time.time)
        self.refused: Counter[str] = Counter()
        self.middleware: Middleware = self._make_middleware()

    @property
    def open(self) -> bool:
        """Whether this server lets everybody in (loopback, or --insecure)."""
        return self._open

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (None: plain HTTP, an open listener)."""
        return self.live.server_ssl if self.live is not None else None

    def describe(self) -> str:
        """For a start-up line: how this server authenticates."""
        if self.live is None:
            return "no authentication"
        return "TLS, no authentication" if self._open else "mutual TLS"

    # -- routes -----------------------------------------------------------------------

    def check_routes(self, app: web.Application) -> None:
        """ConfigError if ``app`` has a route :data:`~.authz.ROUTE_ACCESS` has no row for."""
        missing: list[str] = []
        for resource in app.router.resources():
            for route in resource:
                if route_need(route.method, resource.canonical) is None:
                    missing.append(f"{route.method} {resource.canonical}")
        if missing:
            raise ConfigError(
                "no access rule for " + ", ".join(sorted(set(missing)))
                + " (every route needs a row in the HTTP access table)"
            )  # fmt: skip

    # -- who is calling ---------------------------------------------------------------

    def identify(self, request: web.Request) -> Identified:
        """Who sent one request: (caller, what verified it, and if nobody was recognised,
        the reason code and message)."""
        if self.live is None or self._open:
            return LOCAL, None, ""
        now = self.wall()
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, cred = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not cred.strip():
                return self._nobody("malformed", "Authorization: expected 'Bearer <token>'")
            return self._token(cred, now)
        der = peer_certificate(request)
        if der is not None:
            return self._cert(der, now)
        cookie = request.cookies.get(COOKIE)
        if cookie and not changes_state(request.method):
            return self._token(cookie, now)
        return self._nobody("no-credentials", NO_CREDENTIALS)

    def _nobody(self, reason: str, message: str) -> Identified:
        return NOBODY, None, f"{reason}\n{message}"

    def _token(self, text: str, now: float) -> Identified:
        assert self.live is not None
        try:
            token = check_token(text, self.live.verifier, now, "bearer")
        except IdentityError as exc:
            return self._nobody(exc.reason, f"token refused: {exc}")
        return Caller.of_token(token), token, ""

    def _cert(self, der: bytes, now: float) -> Identified:
        assert self.live is not None
        try:  # parsed and chain-checked once (cached); validity and revocation every time
            p = self.live.verifier.check_der(der, now)
        except IdentityError as exc:
            return self._nobody(exc.reason, f"certificate refused: {exc}")
        return Caller.of_principal(p), p, ""

    # -- the middleware -----------------------------------------------------------------

    def _make_middleware(self) -> Middleware:
        @web.middleware
        async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not self._open and _is_login(request):
                return self._login(request)
            caller, principal, unknown = self.identify(request)
            request[CALLER] = caller
            request[PRINCIPAL] = principal
            need = self._need(request)
            status = 0
            why = ""
            if need != "public" and caller.how == "none":
                reason, _, why = unknown.partition("\n")
                self.refused[reason] += 1
                status = 401
            elif caller.how != "open" and not permits(caller.role, caller.access, need):
                self.refused["forbidden"] += 1
                status = 403
                what = caller.access or caller.role or "no access"
                why = (
                    f"{caller.name} ({what}) may not {request.method} {request.path}: needs {need}"
                )
            if status:
                if changes_state(request.method):
                    await self._audit(request, caller, status, why)
                return _refusal(status, why)
            if not changes_state(request.method):
                return await handler(request)
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                await self._audit(request, _found(request, caller), status, "")

        return authenticate

    def _need(self, request: web.Request) -> Need:
        match = request.match_info
        if match.http_exception is not None:
            return "viewer"  # no such route (404/405): still only for callers we know
        resource = match.route.resource
        need = route_need(request.method, resource.canonical) if resource is not None else None
        return need or "admin"  # (check_routes refuses such an application at start-up)

    def _login(self, request: web.Request) -> web.StreamResponse:
        """``GET /ui/...?token=T``: keep the token in a cookie and reload without it."""
        assert self.live is not None
        now = self.wall()
        try:
            token = check_token(request.query["token"], self.live.verifier, now, "bearer")
        except IdentityError as exc:
            self.refused[exc.reason] += 1
            return _refusal(401, f"token refused: {exc}")
        query = request.rel_url.query.copy()
        query.popall("token", None)
        resp = web.Response(
            status=303, headers={"Location": str(request.rel_url.with_query(query))}
        )
        resp.set_cookie(
            COOKIE,
            request.query["token"],
            max_age=max(0, int(token.exp - now)),
            path="/",
            secure=request.secure,
            httponly=True,
            samesite="Strict",
        )
        return resp

    async def _audit(self, request: web.Request, caller: Caller, status: int, reason: str) -> None:
        entry = AuditEntry(
            at=self.wall(),
            who=caller.name,
            how=caller.how,
            role=caller.role or "",
            access=caller.access or "",
            method=request.method,
            path=request.path,
            status=status,
            remote=request.remote or "",
            reason=reason,
        )
        if self.audit is not None:
            await self.audit.record(entry)  # (it logs the entry too)
        else:
            log_entry(entry)


def peer_certificate(request: web.Request) -> bytes | None:
    """The DER of the client certificate of the request's TLS connection, if it sent one."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der if isinstance(der, bytes) and der else None


def _refusal(status: int, reason: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="myco"'} if status == 401 else None
    return web.json_response({"error": reason}, status=status, headers=headers)


def _is_login(request: web.Request) -> bool:
    path = request.path
    return (
        request.method == "GET"
        and "token" in request.query
        and (path == LOGIN_PREFIX or path.startswith(LOGIN_PREFIX + "/"))
    )


def _found(request: web.Request, caller: Caller) -> Caller:
    """The caller as the handler left it (one that authenticates by itself may say who)."""
    found = request.get(PRINCIPAL)
    if isinstance(found, Principal):
        return Caller.of_principal(found)
    if isinstance(found, Token):
        return Caller.of_token(found)
    return caller


def listener_auth(
    live: LiveIdentity | None,
    host: str,
    *,
    what: str,
    insecure: bool = False,
    audit: AuditLog | None = None,
    open_access: bool = False,
) -> HttpAuth:
    """The :class:`HttpAuth` of a server bound to ``host``.

    With an identity: mutual TLS and authentication (``open_access``: TLS, but nobody is
    asked for credentials, which is allowed on loopback only). Without one the server is
    open, which is refused off loopback (a wildcard bind included) unless ``insecure``.
    """
    loopback = is_loopback(host)
    if live is None and not loopback and not insecure:
        raise ConfigError(
            f"{what} on {host} is not loopback: it needs this member's identity "
            "(mutual TLS), or --insecure to serve it in plaintext without authentication"
        )
    if open_access and not loopback:
        raise ConfigError(f"{what} on {host} is not loopback: it cannot skip authentication")
    return HttpAuth(live, audit=audit, open_access=open_access)
