"""The one client for a running mesh, used by every short-lived verb.

``status``, ``logs``, ``apply``, ``diff``, ``drain``, ``history``, ``rollback``, ``suspend``
and ``resume`` all reach the mesh the same way:

* the **agent API** comes from ``--api URL`` (``--agent`` is an old alias), else from
  ``agent_api`` in ``<state>/mesh.json`` (:class:`~reconciler.home.MeshRecord`, written by
  ``myco up``);
* **credentials** (:class:`Credentials`): in a mesh with identities every API is HTTPS with
  mutual TLS. ``--identity DIR`` (else ``$MYCO_IDENTITY``, else ``<state>/operator`` if it
  holds one) is an identity directory: its ``ca.crt`` (the mesh root) checks the server,
  and its ``cert.pem`` + ``key.pem``, if present, are a person's operator certificate.
  ``--token`` (else ``$MYCO_TOKEN``) is a bearer token (the text, or a file holding it),
  sent as ``Authorization: Bearer``. A mesh without identities (``myco up`` on loopback)
  needs none of them;
* the **fabric** is read through that API (``GET /v1/fabric``), as a
  :class:`~reconciler.observe.snapshot.FabricSnapshot` (:meth:`MeshClient.snapshot`) or as a
  read-only :class:`SnapshotFabric` the reconciler's mirror can read
  (:meth:`MeshClient.fabric`);
* the **active reconciler** is the lease holder; its control API address is in its garden
  record (``control_url``), unless ``--reconciler URL`` names one (:meth:`MeshClient.control`).

Every failure is one clear line: :class:`~reconciler.errors.ConfigError` when nothing says
where the mesh is, when a server refuses the credentials (401/403: "the control API
refused: <reason> (give --identity or --token)") or a reconciler refuses the call,
:class:`~reconciler.errors.UnavailableError` when it is recorded but does not answer.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from reconciler.core.lease import decide, read_leases
from reconciler.errors import ConfigError, FabricError, MycoError, UnavailableError
from reconciler.fabric.api import Change, FabricAPI, JSONValue, Member
from reconciler.home import MeshRecord, state_dir
from reconciler.httpclient import one_attempt_session
from reconciler.observe.snapshot import FabricSnapshot, snapshot_from_json
from reconciler.records import KEY_GARDEN

#: Where ``myco up`` may keep an operator identity for the verbs (``<state>/operator``).
DEFAULT_IDENTITY = "operator"
ENV_IDENTITY = "MYCO_IDENTITY"
ENV_TOKEN = "MYCO_TOKEN"
HINT = "(give --identity or --token)"
#: A call that should answer at once (the fabric view, a control request).
CALL_TIMEOUT = aiohttp.ClientTimeout(total=10)
#: The session's own limits: streams (``logs -f``) may last as long as they like.
SESSION_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=None)


def normalize_api(api: str, *, tls: bool = False) -> str:
    """``host:port`` or a URL → ``http://host:port`` (``https://`` with ``tls``) without a
    trailing slash."""
    api = api.strip().rstrip("/")
    if "://" not in api:
        api = ("https://" if tls else "http://") + api
    return api


@dataclass(frozen=True)
class Credentials:
    """How a short-lived verb proves who it is (see the module)."""

    identity: Path | None = None  # ca.crt, and cert.pem + key.pem for certificate login
    token: str | None = None  # a bearer token's text

    @classmethod
    def resolve(
        cls,
        *,
        identity: str | os.PathLike[str] | None = None,
        token: str | None = None,
        state: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Credentials:
        """The flags, else the environment, else ``<state>/operator`` if it holds one."""
        environ = os.environ if env is None else env
        found: Path | None = None
        if identity:
            found = Path(identity)
        elif environ.get(ENV_IDENTITY):
            found = Path(environ[ENV_IDENTITY])
        elif state is not None and (state / DEFAULT_IDENTITY / "ca.crt").is_file():
            found = state / DEFAULT_IDENTITY
        if found is not None and not (found / "ca.crt").is_file():
            raise ConfigError(f"identity {found}: no ca.crt there (the mesh root CA)")
        return cls(found, read_token(token or environ.get(ENV_TOKEN) or None))

    @property
    def certificate(self) -> bool:
        """Whether the identity holds a certificate and key (not only the root)."""
        return self.identity is not None and all(
            (self.identity / n).is_file() for n in ("cert.pem", "key.pem")
        )

    def ssl_context(self, now: float | None = None) -> ssl.SSLContext | None:
        """The client TLS context (mesh root, and the certificate if any); None without an
        identity. A certificate that is expired or not valid yet is refused here, clearly."""
        if self.identity is None:
            return None
        from reconciler.identity.layout import MemberDir
        from reconciler.identity.tls import client_context

        d = MemberDir(self.identity)
        if not self.certificate:
            return client_context(None, None, d.ca_cert)
        try:
            p = d.load().principal
        except MycoError as exc:
            raise ConfigError(f"identity {self.identity}: {exc}") from None
        t = time.time() if now is None else now
        if t > p.not_after:
            raise ConfigError(
                f"identity {self.identity}: the certificate of {p.name} expired at "
                f"{_utc(p.not_after)}; get a new one (`myco cert issue`)"
            )
        if t < p.not_before:
            raise ConfigError(
                f"identity {self.identity}: the certificate of {p.name} is not valid before "
                f"{_utc(p.not_before)} (is this host's clock right?)"
            )
        try:
            return client_context(d.cert, d.key, d.ca_cert)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"identity {self.identity}: unusable: {exc}") from None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def read_token(value: str | None) -> str | None:
    """A token given as its text (``myco1....``) or as a file holding it."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("myco1."):
        return value
    path = Path(value)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"--token {value}: neither a token (myco1....) nor a readable file "
            f"({exc.strerror or exc})"
        ) from None
    if not text.startswith("myco1."):
        raise ConfigError(f"--token {value}: the file holds no myco token")
    return text


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


async def refusal(resp: aiohttp.ClientResponse, what: str) -> ConfigError:
    """The one-line error for a 401/403 answer of ``what`` ("the control API")."""
    try:
        data = await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        data = None
    reason = data.get("error") if isinstance(data, dict) else None
    return ConfigError(f"{what} refused: {reason or f'HTTP {resp.status}'} {HINT}")


def _unreachable(
    what: str, url: str, exc: BaseException, *, has_ca: bool = True
) -> UnavailableError:
    """The one line for a server that cannot be reached; ``has_ca``: whether the session
    checks servers against a mesh root (an ``--identity`` was given)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError) and not has_ca:
        detail = (
            "its certificate is not one this client can check: an https:// API of the mesh "
            "needs --identity DIR holding the mesh's ca.crt"
        )
    elif isinstance(exc, aiohttp.ClientConnectorCertificateError):
        detail = (
            f"its certificate does not verify against the mesh root CA "
            f"({exc.certificate_error}): another mesh, or the wrong --identity?"
        )
    elif isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
        detail = f"TLS failed ({exc}); an https:// API needs --identity DIR holding its ca.crt"
    else:
        detail = str(exc) or type(exc).__name__
    return UnavailableError(f"cannot reach {what} at {url}: {detail}")


def recorded_api(state: Path) -> str:
    """The agent API URL of the mesh recorded in ``<state>/mesh.json``, or ConfigError."""
    path = state / "mesh.json"
    record = MeshRecord.load(state)
    if record is None:
        raise ConfigError(
            f"no running mesh recorded in {path} "
            "(no mesh found: start one with `myco up`, or pass --api URL)"
        )
    if not record.agent_api:
        raise ConfigError(f"{path} has no 'agent_api' address (pass --api URL)")
    return normalize_api(record.agent_api)


async def fetch_snapshot(
    session: aiohttp.ClientSession, api: str, prefix: str = "", *, has_ca: bool = True
) -> FabricSnapshot:
    """``GET {api}/v1/fabric?prefix=``; :class:`UnavailableError` if the agent is not there,
    ConfigError if it refuses the credentials (``has_ca``: the session checks servers
    against a mesh root, for the wording of a TLS failure)."""
    url = f"{api}/v1/fabric"
    try:
        async with session.get(url, params={"prefix": prefix}, timeout=CALL_TIMEOUT) as resp:
            if resp.status in (401, 403):
                raise await refusal(resp, "the agent API")
            if resp.status != 200:
                body = (await resp.text())[:200].strip()
                raise UnavailableError(f"{url}: HTTP {resp.status} {body}".rstrip())
            data = await resp.json(content_type=None)
    except TimeoutError as exc:
        raise UnavailableError(f"cannot reach the agent API at {api}: timeout") from exc
    except aiohttp.ClientError as exc:
        raise _unreachable("the agent API", api, exc, has_ca=has_ca) from exc
    except ValueError as exc:
        raise FabricError(f"{url}: not JSON: {exc}") from exc
    return snapshot_from_json(data)


@dataclass
class SnapshotFabric:
    """A frozen, read-only view of the fabric as one agent saw it (a FabricAPI)."""

    entries: dict[tuple[str, str], JSONValue]
    name: str = "myco-cli"

    @classmethod
    def of(cls, snap: FabricSnapshot) -> SnapshotFabric:
        return cls({(e.owner, e.key): e.value for e in snap.entries})

    def view(
        self, prefix: str = "", *, include_gone: bool = False
    ) -> dict[tuple[str, str], JSONValue]:
        return {k: v for k, v in self.entries.items() if k[1].startswith(prefix)}

    def get(self, owner: str, key: str) -> JSONValue:
        return self.entries.get((owner, key))

    def publish(self, key: str, value: JSONValue) -> None:
        raise ConfigError("a fabric snapshot is read-only")

    def delete(self, key: str) -> None:
        raise ConfigError("a fabric snapshot is read-only")

    async def subscribe(self, prefix: str = "") -> AsyncIterator[Change]:  # pragma: no cover
        return
        yield

    def members(self) -> Sequence[Member]:
        return []

    async def join(self, addrs: Sequence[str]) -> int:
        return 0

    async def leave(self) -> None:
        return None


def active_reconciler(fabric: FabricAPI, now: float) -> tuple[str, str]:
    """(holder name, control URL) of the active reconciler; ("", "") if none holds."""
    records, max_epoch = read_leases(fabric)
    holder = decide(records, max_epoch, now).holder
    if holder is None:
        return "", ""
    garden = fabric.get(holder.holder, KEY_GARDEN)
    url = garden.get("control_url") if isinstance(garden, dict) else None
    return holder.holder, str(url or "").rstrip("/")


class MeshClient:
    """A running mesh, seen through one agent's API (use as ``async with``).

    Nothing is looked up until it is needed: with ``--reconciler URL`` the control verbs
    work without any agent API, and a missing ``mesh.json`` is reported only when the
    agent API is actually wanted.
    """

    def __init__(
        self,
        api: str | None = None,
        *,
        state: str | os.PathLike[str] | None = None,
        reconciler: str | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """``credentials`` None: from the environment and ``<state>/operator``
        (:meth:`Credentials.resolve`)."""
        self.state = state_dir(state)
        self._credentials = credentials
        self._api_arg = api
        self._api: str | None = None
        self._reconciler = reconciler.rstrip("/") if reconciler else None
        self._session: aiohttp.ClientSession | None = None

    # -- life cycle -------------------------------------------------------------------

    @property
    def credentials(self) -> Credentials:
        if self._credentials is None:
            self._credentials = Credentials.resolve(state=self.state)
        return self._credentials

    async def __aenter__(self) -> MeshClient:
        creds = self.credentials
        ctx = creds.ssl_context()
        connector = aiohttp.TCPConnector(ssl=ctx) if ctx is not None else None
        self._session = one_attempt_session(
            headers=creds.headers(), timeout=SESSION_TIMEOUT, connector=connector
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP session (the credentials: certificate or bearer token) for calls of the
        caller's own (``myco logs`` streams through it)."""
        if self._session is None:
            raise RuntimeError("MeshClient used outside `async with`")
        return self._session

    # -- the agent API and the fabric -------------------------------------------------

    @property
    def reconciler(self) -> str | None:
        """The reconciler's control URL if given (``--reconciler``) or already found."""
        return self._reconciler

    @property
    def recorded(self) -> bool:
        """Whether an agent API is known (``--api`` given, or a mesh recorded)."""
        return bool(self._api_arg) or (self.state / "mesh.json").exists()

    @property
    def api(self) -> str:
        """The agent API URL (``--api``, else ``mesh.json``); ConfigError if neither.
        ``--api HOST:PORT`` means ``https://`` when an identity is given."""
        if self._api is None:
            if self._api_arg:
                self._api = normalize_api(self._api_arg, tls=self.credentials.identity is not None)
            else:
                self._api = recorded_api(self.state)
        return self._api

    async def snapshot(self, prefix: str = "") -> FabricSnapshot:
        """The fabric as the agent sees it."""
        return await fetch_snapshot(
            self.session, self.api, prefix, has_ca=self.credentials.identity is not None
        )

    async def fabric(self) -> SnapshotFabric:
        """The fabric as a read-only :class:`FabricAPI` (for the reconciler's mirror)."""
        return SnapshotFabric.of(await self.snapshot())

    # -- the active reconciler ------------------------------------------------------------

    async def active(self) -> tuple[str, str]:
        """(holder, control URL) of the active reconciler; ("", "") if no one holds."""
        return active_reconciler(await self.fabric(), time.time())

    async def control_url(self) -> str:
        """``--reconciler URL``, else the active reconciler's; ConfigError if none."""
        if self._reconciler:
            return self._reconciler
        holder, url = await self.active()
        if not holder:
            raise ConfigError("no active reconciler in the mesh (is `myco reconcile` running?)")
        if not url:
            raise ConfigError(f"the active reconciler {holder} publishes no control API")
        self._reconciler = url
        return url

    async def control(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Call the reconciler's control API; a refusal is a ConfigError with its reason."""
        url = await self.control_url()
        try:
            async with self.session.request(
                method, f"{url}{path}", json=body, timeout=CALL_TIMEOUT
            ) as resp:
                if resp.status in (401, 403):
                    raise await refusal(resp, "the control API")
                data = await resp.json(content_type=None)
                status = resp.status
        except TimeoutError as exc:
            raise UnavailableError(f"cannot reach the reconciler at {url}: timeout") from exc
        except aiohttp.ClientError as exc:  # (before ValueError: some are both)
            raise _unreachable(
                "the reconciler", url, exc, has_ca=self.credentials.identity is not None
            ) from exc
        except ValueError as exc:
            raise UnavailableError(f"the reconciler at {url} answered no JSON: {exc}") from exc
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise ConfigError(str(message or f"HTTP {status}"))
        return data if isinstance(data, dict) else {}

    async def status(self) -> dict[str, Any]:
        return await self.control("GET", "/v1/status")

    async def drain(self, node: str, *, undo: bool = False) -> str:
        verb = "undrain" if undo else "drain"
        return _message(await self.control("POST", f"/v1/nodes/{node}/{verb}"))

    async def app_action(self, app: str, verb: str) -> str:
        """``suspend`` or ``resume`` an app; the reconciler's answer."""
        if verb not in ("suspend", "resume"):
            raise ValueError(f"unknown app action {verb!r}")
        return _message(await self.control("POST", f"/v1/apps/{app}/{verb}"))

    async def rollback(self, app: str, to: str = "") -> str:
        return _message(await self.control("POST", f"/v1/apps/{app}/rollback", {"to": to}))

    async def history(self, app: str) -> list[dict[str, Any]]:
        entries = (await self.control("GET", f"/v1/apps/{app}/history")).get("history")
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _message(reply: dict[str, Any]) -> str:
    return str(reply.get("message", "ok"))
