"""How a daemon gets its member certificate and keeps it current.

Three ways to hold an identity (the directory of :class:`~.layout.MemberDir`):

* **issued by hand or by ``myco up``**: :func:`issue_to_dir` (what ``myco cert issue``
  runs) writes a fresh key and a certificate from an issuing CA;
* **enrolled**: a new host holding a one-time join token calls :func:`enrol`: it makes its
  key, sends the token and the public key to a reconciler's ``POST /v1/enrol`` and gets its
  certificate back. The connection is TLS checked against the mesh root, and the server
  must present a *reconciler* certificate before the token is sent;
* **a reconciler with the issuing CA** issues its own (:func:`issue_own`).

:func:`obtain` is what a daemon calls at start for the first two; :func:`renewal_loop` runs
for as long as the daemon does: at a random point between 50% and 70% of the certificate's
life it asks for a new one with the same name, role and key (agents and edges:
:func:`renew_over_http`, ``POST /v1/renew`` at a reconciler the fabric names, authenticated
by the certificate they still hold: mutual TLS, and a fresh signature in the body, which
is all a plain loopback listener can check; a reconciler: from its issuing CA), swaps it in
with :meth:`LiveIdentity.renewed <.live.LiveIdentity.renewed>` (files, record guard, TLS
contexts; the daemon's listeners, such as the fabric republishing ``certs/<name>``) and
never restarts anything. A failed attempt is retried with backoff; as expiry nears, each
failure is a warning.

The two requests are small JSON POSTs on a connection of their own (:func:`post_json`), so
over HTTPS the server's certificate is checked before a byte of the request leaves.
Enrolment needs HTTPS (the token is a secret); a renewal request holds nothing secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reconciler.errors import ConfigError, IdentityError, UnavailableError

from .ca import BACKDATE_S, MEMBER_LIFETIME_S, Issuer, certs_pem, load_certs, new_key
from .guard import b64, canonical, unb64
from .layout import CADir, MemberDir, verifier_for
from .live import LiveIdentity
from .member import MemberIdentity
from .names import Role, check_name
from .renew import renew_at, retry_delay, should_warn
from .verify import Principal, Verifier, principal_of

if TYPE_CHECKING:
    from reconciler.clock import Clock
    from reconciler.fabric.api import FabricAPI

log = logging.getLogger("myco.identity")

#: Largest answer :func:`post_json` reads (a certificate chain is ~2 KiB).
MAX_ANSWER = 256 * 1024
CALL_TIMEOUT_S = 10.0
#: Shortest wait between two renewals, whatever the certificate says (no busy loop).
MIN_RENEW_GAP_S = 1.0
#: How long a new host keeps trying to enrol while no reconciler answers (or none is active).
ENROL_PATIENCE_S = 600.0


@dataclass(frozen=True)
class IdentitySpec:
    """Where a daemon's identity is and how to get one (the ``--identity`` flags)."""

    dir: Path  # the member identity directory (ca.crt, cert.pem, key.pem)
    join_token: Path | None = None  # enrol with it when ``dir`` holds no (valid) identity
    enrol_urls: tuple[str, ...] = ()  # reconcilers' control URLs (https://) to enrol with
    ca: Path | None = None  # the mesh CA directory: ca.crt (enrol); issuer.* (reconciler)
    explicit: bool = True  # --identity was given (else: the default, which may be absent)
    #: --loopback-http: the HTTP listeners (loopback only) stay plain and open, the
    #: identity serves the fabric and renewal only (``myco up``)
    loopback_http: bool = False


# Issuing -----------------------------------------------------------------------------


def issue_to_dir(
    issuer: Issuer,
    role: str,
    name: str,
    directory: Path,
    *,
    now: float,
    lifetime_s: float = MEMBER_LIFETIME_S,
    access: str | None = None,
    key: Ed25519PrivateKey | None = None,
) -> MemberIdentity:
    """A certificate for ``role``/``name`` (a new key unless ``key``), written as a
    :class:`MemberDir` in ``directory``: ``myco cert issue`` and ``myco up`` both use it."""
    check_name(name)
    key = key or new_key()
    cert = issuer.issue(
        role,
        name,
        key.public_key(),
        now=now,
        lifetime_s=lifetime_s,
        access=access,  # type: ignore[arg-type]  # checked by issue()
    )
    member = MemberIdentity(tuple(issuer.chain(cert)), key, (issuer.root,))
    MemberDir(directory).save(member)
    return member


def issue_own(
    ca: CADir, directory: Path, name: str, *, now: float, min_left: float = 0.5
) -> MemberIdentity:
    """A reconciler's own certificate from its issuing CA: the one in ``directory`` if it
    is for ``name``, from this CA, and has more than ``min_left`` of its life left; else a
    new one (keeping the key there, if any)."""
    issuer = ca.issuer()
    mdir = MemberDir(directory)
    key: Ed25519PrivateKey | None = None
    if mdir.exists():
        try:
            held = mdir.load()
        except (ConfigError, IdentityError) as exc:
            log.warning("replacing the identity in %s: %s", directory, exc)
        else:
            key = held.key
            p = held.principal
            left = (p.not_after - now) / max(1.0, p.not_after - p.not_before)
            same_ca = len(held.chain) > 1 and held.chain[1] == issuer.cert
            if p.role == "reconciler" and p.name == name and same_ca and left > min_left:
                return held
    return issue_to_dir(issuer, "reconciler", name, directory, now=now, key=key)


def reissue(issuer: Issuer, member: MemberIdentity, *, now: float) -> MemberIdentity:
    """A renewal from the issuing CA itself: the same name, role and key, a new validity."""
    p = member.principal
    cert = issuer.issue(p.role, p.name, member.key.public_key(), now=now, access=p.access)
    return MemberIdentity(tuple(issuer.chain(cert)), member.key, member.roots)


# Tokens ------------------------------------------------------------------------------


def peek_token(text: str) -> dict[str, Any]:
    """What a token says, *unverified*: to refuse a wrong one before spending it."""
    parts = text.strip().split(".")
    if len(parts) != 3 or parts[0] != "myco1":
        raise ConfigError("not a myco join token (expected myco1.<payload>.<signature>)")
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        body = json.loads(raw)
    except (ValueError, binascii.Error):
        raise ConfigError("not a myco join token: its payload does not decode") from None
    if not isinstance(body, dict):
        raise ConfigError("not a myco join token: its payload is not an object")
    return body


def read_token(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"--join-token {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--join-token {path}: cannot read it: {exc}") from exc
    if not text:
        raise ConfigError(f"--join-token {path}: the file is empty")
    return text


# One HTTPS JSON call -------------------------------------------------------------------


def roots_context(
    roots: Sequence[x509.Certificate], client: ssl.SSLContext | None = None
) -> ssl.SSLContext:
    """A TLS client context that trusts only ``roots`` (``client``: use that one as is)."""
    if client is not None:
        return client
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # member certificates name no host: the role is checked
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=certs_pem(roots))
    return ctx


async def post_json(
    url: str,
    path: str,
    body: Mapping[str, Any],
    ctx: ssl.SSLContext,
    *,
    mesh: str,
    server_role: Role = "reconciler",
    within: float = CALL_TIMEOUT_S,
    plain_ok: bool = False,
) -> tuple[int, dict[str, Any]]:
    """``POST url+path`` with a JSON body, on a connection of its own; the answer's status
    and JSON object. Over ``https://`` the server must present a ``server_role``
    certificate of ``mesh`` (the TLS handshake has checked that it chains to the roots of
    ``ctx``) before the request is sent; ``plain_ok`` allows ``http://`` (for a body that
    holds no secret). :class:`UnavailableError` if it cannot be reached."""
    parts = urllib.parse.urlsplit(url)
    schemes = ("https", "http") if plain_ok else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{url}: expected an https:// URL of a reconciler's control API")
    tls = parts.scheme == "https"
    host, port = parts.hostname, parts.port or (443 if tls else 80)
    base = parts.path.rstrip("/")
    data = json.dumps(body).encode()
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx if tls else None)
            try:
                if tls:
                    _check_server(writer, mesh, server_role, url)
                head = (
                    f"POST {base}{path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                    "Content-Type: application/json\r\nAccept: application/json\r\n"
                    f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode("ascii") + data)
                await writer.drain()
                raw = b""
                while chunk := await reader.read(65536):  # until the server closes
                    raw += chunk
                    if len(raw) > MAX_ANSWER:
                        raise UnavailableError(f"{url}: the answer is too large")
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except TimeoutError:
        raise UnavailableError(f"{url}: no answer within {within:g} s") from None
    except ssl.SSLError as exc:
        raise UnavailableError(f"{url}: TLS failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise UnavailableError(f"cannot reach {url}: {exc.strerror or exc}") from None
    return _parse_answer(raw, url)


def _check_server(writer: asyncio.StreamWriter, mesh: str, role: Role, url: str) -> None:
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:
        raise IdentityError(f"{url}: the server presented no certificate", "bad-certificate")
    try:
        p = principal_of(x509.load_der_x509_certificate(der), mesh)
    except ValueError:
        raise IdentityError(f"{url}: unreadable server certificate", "bad-certificate") from None
    if p.role != role:
        raise IdentityError(
            f"{url} is {p.role} {p.name}, not a {role}: refusing to send it anything",
            "unauthorized",
        )


def _parse_answer(raw: bytes, url: str) -> tuple[int, dict[str, Any]]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise UnavailableError(f"{url}: not an HTTP answer") from None
    if not sep:
        raise UnavailableError(f"{url}: the answer was cut off")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        data = {"error": body[:200].decode("utf-8", "replace").strip()}
    return status, data if isinstance(data, dict) else {}


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def _refusal(url: str, status: int, data: Mapping[str, Any]) -> str:
    return f"{url}: {data.get('error') or f'HTTP {status}'}"


def _member_from_answer(
    data: Mapping[str, Any], key: Ed25519PrivateKey, roots: Sequence[x509.Certificate], url: str
) -> MemberIdentity:
    chain_pem = data.get("chain")
    if not isinstance(chain_pem, str):
        raise IdentityError(f"{url}: the answer holds no certificate chain", "bad-certificate")
    chain = load_certs(chain_pem, f"the certificate from {url}")
    ours = key.public_key().public_bytes_raw()
    if principal_of(chain[0]).public_key.public_bytes_raw() != ours:
        raise IdentityError(f"{url}: the certificate is not for our key", "bad-certificate")
    verifier = verifier_for(list(roots))
    verifier.check_chain(chain, time.time())
    return MemberIdentity(tuple(chain), key, tuple(roots))


# Enrolment ----------------------------------------------------------------------------


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


async def enrol(
    urls: str | Iterable[str],
    token: str,
    key: Ed25519PrivateKey,
    roots: Sequence[x509.Certificate],
    *,
    within: float = CALL_TIMEOUT_S,
) -> MemberIdentity:
    """Redeem a join token at the first reconciler of ``urls`` that takes it (a standby
    answers 409 and the next is tried); the new identity (not yet saved)."""
    candidates = [urls] if isinstance(urls, str) else list(urls)
    if not candidates:
        raise ConfigError("enrolment needs a reconciler's URL (--enrol URL)")
    ctx = roots_context(roots)
    mesh = verifier_for(list(roots)).mesh
    body = {"token": token.strip(), "public_key": public_key_pem(key.public_key())}
    problems: list[str] = []
    for url in candidates:
        url = url.rstrip("/")
        try:
            status, data = await post_json(url, "/v1/enrol", body, ctx, mesh=mesh, within=within)
        except UnavailableError as exc:
            problems.append(str(exc))
            continue
        if status in (409, 503):  # a standby, or no issuing CA there: try the next one
            problems.append(_refusal(url, status, data))
            continue
        if status != 200:
            raise IdentityError(f"enrolment refused by {_refusal(url, status, data)}", "refused")
        return _member_from_answer(data, key, roots, url)
    raise UnavailableError("could not enrol: " + "; ".join(problems))


RENEW_SKEW_S = 300.0


def _renew_message(mesh: str, name: str, at: float) -> bytes:
    return canonical(["myco-renew", mesh, name, at])


def renewal_proof(member: MemberIdentity, now: float) -> dict[str, Any]:
    """The body of ``POST /v1/renew``: the certificate held now and a fresh signature by
    its key. It holds nothing secret (a replay only gets a certificate for a key the
    replayer does not hold), so it may travel over plain HTTP on loopback."""
    at = round(now, 3)
    sig = member.key.sign(_renew_message(member.mesh, member.name, at))
    return {"chain": member.chain_pem(), "at": at, "sig": b64(sig)}


def check_renewal_proof(body: Mapping[str, Any], verifier: Verifier, now: float) -> Principal:
    """Who a :func:`renewal_proof` is from, if it holds: the certificate chains to the
    mesh, is valid and not revoked, and signed ``at`` (within a few minutes of ``now``)."""
    chain, at, sig = body.get("chain"), body.get("at"), body.get("sig")
    if not isinstance(chain, str) or not isinstance(at, int | float) or not isinstance(sig, str):
        raise IdentityError("no certificate to renew (mutual TLS, or a renewal proof)", "malformed")
    p = verifier.check_pem(chain, now)
    if abs(now - float(at)) > RENEW_SKEW_S:
        raise IdentityError(
            "the renewal proof is stale (or the clocks differ by minutes)", "expired"
        )
    try:
        p.public_key.verify(unb64(sig), _renew_message(p.mesh, p.name, float(at)))
    except InvalidSignature:
        raise IdentityError(
            "the renewal proof's signature does not verify", "bad-signature"
        ) from None
    return p


async def renew_over_http(
    urls: Iterable[str], live: LiveIdentity, *, within: float = CALL_TIMEOUT_S
) -> MemberIdentity:
    """A renewed certificate from the first reconciler of ``urls`` that gives one (same
    name, role and key), asked with the certificate held now: over mutual TLS, plus a
    :func:`renewal_proof` in the body (all a plain loopback listener can check)."""
    member = live.member
    problems: list[str] = []
    for url in urls:
        url = url.rstrip("/")
        body = renewal_proof(member, live.wall())
        try:
            status, data = await post_json(
                url, "/v1/renew", body, live.client_ssl, mesh=member.mesh, within=within,
                plain_ok=True,
            )  # fmt: skip
        except (UnavailableError, IdentityError) as exc:
            problems.append(str(exc))
            continue
        if status != 200:
            problems.append(_refusal(url, status, data))
            continue
        return _member_from_answer(data, member.key, member.roots, url)
    if not problems:
        raise UnavailableError("no reconciler to renew the certificate with (none in the fabric)")
    raise UnavailableError("; ".join(problems))


def control_urls(view: Mapping[tuple[str, str], Any], first: str = "") -> list[str]:
    """The reconcilers' control URLs published in their ``garden`` records (a fabric view
    of that key), ``first`` (e.g. the active one's) leading."""
    urls = []
    for (_, key), value in sorted(view.items()):
        if key != "garden" or not isinstance(value, dict):
            continue
        url = str(value.get("control_url") or "").rstrip("/")
        if url.startswith(("https://", "http://")) and url not in urls:
            urls.append(url)
    if first:
        first = first.rstrip("/")
        urls = [first, *[u for u in urls if u != first]]
    return urls


# A daemon's identity at start ------------------------------------------------------------


async def obtain(
    spec: IdentitySpec, role: Role, cluster: str, *, name: str | None = None
) -> LiveIdentity | None:
    """The daemon's :class:`LiveIdentity` from ``spec.dir``, enrolling first with
    ``spec.join_token`` if the directory holds no valid identity. None when there is none
    and none was asked for (the default directory, no token). Checks the role, and the
    name when ``name`` is given."""
    mdir = MemberDir(spec.dir)
    problem = ""
    if mdir.exists():
        try:
            live = LiveIdentity(mdir, cluster)
        except IdentityError as exc:
            problem = str(exc)
        else:
            _check_role_name(live, role, name, spec.dir)
            return live
    elif spec.join_token is None:
        if not spec.explicit:
            return None
        missing = [p.name for p in (mdir.ca_cert, mdir.cert, mdir.key) if not p.is_file()]
        raise ConfigError(
            f"--identity {spec.dir}: no identity there (missing {', '.join(missing)}): "
            f"{_how_to_get(role)}"
        )
    if spec.join_token is None:
        raise ConfigError(
            f"the identity in {spec.dir} cannot be used: {problem}; {_how_to_get(role)}"
        )
    await enrol_into(spec, role, name)
    live = LiveIdentity(mdir, cluster)
    _check_role_name(live, role, name, spec.dir)
    return live


async def enrol_into(spec: IdentitySpec, role: Role, name: str | None) -> MemberIdentity:
    """Enrol with ``spec.join_token`` and save the identity into ``spec.dir``."""
    assert spec.join_token is not None
    token = read_token(spec.join_token)
    claims = peek_token(token)
    if claims.get("kind") != "join":
        raise ConfigError(f"--join-token {spec.join_token}: not a join token")
    if claims.get("role") != role:
        raise ConfigError(
            f"--join-token {spec.join_token} is for role {claims.get('role')!r}, not {role}"
        )
    if name is not None and claims.get("name") != name:
        raise ConfigError(
            f"--join-token {spec.join_token} names {claims.get('name')!r}, but this {role} "
            f"is {name!r}"
        )
    if not spec.enrol_urls:
        raise ConfigError("--join-token needs --enrol URL (a reconciler's control API)")
    if spec.ca is None:
        raise ConfigError(
            "--join-token needs --ca DIR: the mesh CA directory whose ca.crt the "
            "reconciler's certificate is checked against"
        )
    from .layout import load_roots

    roots = load_roots(spec.ca / "ca.crt")
    key = new_key()
    rng = random.Random()
    deadline = time.monotonic() + ENROL_PATIENCE_S
    attempt = 0
    while True:
        try:
            member = await enrol(spec.enrol_urls, token, key, roots)
            break
        except UnavailableError as exc:  # not up yet, or no active reconciler yet
            if time.monotonic() > deadline:
                raise
            # Short at first: hosts usually start together and the reconcilers are up in
            # seconds; a mesh that waits on its reconcilers is not kept waiting long.
            delay = retry_delay(attempt, rng, base=0.25, cap=30.0)
            attempt += 1
            log.log(
                logging.WARNING if attempt > 3 else logging.INFO,
                "%s; trying again in %.1f s",
                exc,
                delay,
            )
            await asyncio.sleep(delay)
    MemberDir(spec.dir).save(member)
    log.warning(
        "enrolled as %s %s with %s (certificate valid until %s); saved in %s",
        member.principal.role,
        member.name,
        spec.enrol_urls[0] if len(spec.enrol_urls) == 1 else "a reconciler",
        _when(member.principal.not_after),
        spec.dir,
    )
    return member


def _how_to_get(role: Role) -> str:
    if role == "reconciler":
        return f"issue one with `myco cert issue --role {role}`, or give --ca DIR"
    return f"issue one with `myco cert issue --role {role}`, or enrol with --join-token FILE"


def _check_role_name(live: LiveIdentity, role: Role, name: str | None, where: Path) -> None:
    p = live.principal
    if p.role != role:
        raise ConfigError(f"the identity in {where} is for {p.role} {p.name}, not for an {role}")
    if name is not None and p.name != name:
        raise ConfigError(
            f"the identity in {where} is for {role} {p.name!r}, but this {role} is {name!r}: "
            "they must be the same"
        )


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


# Renewal ------------------------------------------------------------------------------

RenewFn = Callable[[], Awaitable[MemberIdentity]]


def next_renewal(live: LiveIdentity, rng: random.Random) -> float:
    """When to renew the certificate held now (wall seconds): 50–70% into its life, its
    life counted from when it was issued (certificates are backdated a little)."""
    p = live.principal
    start = p.not_before
    if p.not_after - p.not_before > BACKDATE_S:
        start = p.not_before + BACKDATE_S  # when it was issued (see ca.BACKDATE_S)
    return renew_at(start, p.not_after, rng)


async def renewal_loop(
    live: LiveIdentity,
    renew: RenewFn,
    *,
    clock: Clock,
    rng: random.Random | None = None,
    on_renewed: Callable[[MemberIdentity], None] | None = None,
) -> None:
    """Renew ``live``'s certificate for as long as the daemon runs (see the module
    docstring); never returns. ``renew`` gets the new certificate (same name and key)."""
    rng = rng or random.Random()
    attempt = 0
    renewed = False
    while True:
        if attempt:
            wait = retry_delay(attempt - 1, rng)
        else:
            wait = next_renewal(live, rng) - clock.wall()
            if renewed:  # a certificate already due when issued (a short-lived issuer)
                wait = max(wait, MIN_RENEW_GAP_S)
        if wait > 0:
            await clock.sleep(wait)
        try:
            new = await renew()
            live.renewed(new)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is retried: the certificate still holds
            attempt += 1
            renewed = False
            _log_failure(live, exc, clock.wall(), attempt)
            continue
        attempt = 0
        renewed = True
        q = live.principal
        log.info(
            "renewed the certificate of %s %s: valid until %s", q.role, q.name, _when(q.not_after)
        )
        if on_renewed is not None:
            on_renewed(new)


def _log_failure(live: LiveIdentity, exc: Exception, now: float, attempt: int) -> None:
    p = live.principal
    text = str(exc) or type(exc).__name__
    if now > p.not_after:
        log.error(
            "the certificate of %s %s expired at %s and could not be renewed (%s): issue a "
            "new one (`myco cert issue`) or enrol again; still trying",
            p.role,
            p.name,
            _when(p.not_after),
            text,
        )
    elif should_warn(p.not_before, p.not_after, now):
        log.warning(
            "cannot renew the certificate of %s %s, which expires at %s (attempt %d): %s",
            p.role,
            p.name,
            _when(p.not_after),
            attempt,
            text,
        )
    else:
        log.info("certificate renewal attempt %d failed (will retry): %s", attempt, text)


async def renew_in_fabric(fabric: FabricAPI, live: LiveIdentity) -> MemberIdentity:
    """Renew at one of the reconcilers whose control API the fabric names (their
    ``garden`` records): how agents and edges renew."""
    return await renew_over_http(control_urls(fabric.view("garden")), live)


def renew_through_fabric(
    live: LiveIdentity, fabric: FabricAPI, *, clock: Clock
) -> Coroutine[Any, Any, None]:
    """The renewal task of an agent or an edge: renew at the reconcilers the fabric names,
    and have the fabric republish ``certs/<name>`` after each renewal."""
    republish = getattr(fabric, "identity_renewed", None)
    if republish is not None:
        live.on_renewed(republish)

    async def renew() -> MemberIdentity:
        return await renew_in_fabric(fabric, live)

    return renewal_loop(live, renew, clock=clock)
