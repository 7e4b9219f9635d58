"""The one client for a running mesh, used by every short-lived verb.

``status``, ``logs``, ``apply``, ``diff``, ``drain``, ``history``, ``rollback``, ``suspend``
and ``resume`` all reach the mesh the same way:

* the **agent API** comes from ``--api URL`` (``--agent`` is an old alias), else from
  ``agent_api`` in ``<state>/mesh.json`` (:class:`~reconciler.home.MeshRecord`, written by
  ``myco up``); a bearer token is sent when ``<state>/api.token`` exists (an agent bound off
  loopback requires one);
* the **fabric** is read through that API (``GET /v1/fabric``), as a
  :class:`~reconciler.observe.snapshot.FabricSnapshot` (:meth:`MeshClient.snapshot`) or as a
  read-only :class:`SnapshotFabric` the reconciler's mirror can read
  (:meth:`MeshClient.fabric`);
* the **active reconciler** is the lease holder; its control API address is in its garden
  record (``control_url``), unless ``--reconciler URL`` names one (:meth:`MeshClient.control`).

Every failure is one clear line: :class:`~reconciler.errors.ConfigError` when nothing says
where the mesh is (or a reconciler refuses), :class:`~reconciler.errors.UnavailableError`
when it is recorded but does not answer.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from reconciler.core.lease import decide, read_leases
from reconciler.errors import ConfigError, FabricError, UnavailableError
from reconciler.fabric.api import Change, FabricAPI, JSONValue, Member
from reconciler.home import MeshRecord, state_dir
from reconciler.observe.snapshot import FabricSnapshot, snapshot_from_json
from reconciler.records import KEY_GARDEN

TOKEN_FILE = "api.token"
#: A call that should answer at once (the fabric view, a control request).
CALL_TIMEOUT = aiohttp.ClientTimeout(total=10)
#: The session's own limits: streams (``logs -f``) may last as long as they like.
SESSION_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=None)


def normalize_api(api: str) -> str:
    """``host:port`` or a URL → ``http://host:port`` without a trailing slash."""
    api = api.strip().rstrip("/")
    if "://" not in api:
        api = "http://" + api
    return api


def auth_headers(state: Path) -> dict[str, str]:
    """``Authorization: Bearer <token>`` from ``<state>/api.token``, if there is one."""
    try:
        token = (state / TOKEN_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return {}
    return {"Authorization": f"Bearer {token}"} if token else {}


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
    session: aiohttp.ClientSession, api: str, prefix: str = ""
) -> FabricSnapshot:
    """``GET {api}/v1/fabric?prefix=``; :class:`UnavailableError` if the agent is not there."""
    url = f"{api}/v1/fabric"
    try:
        async with session.get(url, params={"prefix": prefix}, timeout=CALL_TIMEOUT) as resp:
            if resp.status != 200:
                body = (await resp.text())[:200].strip()
                raise UnavailableError(f"{url}: HTTP {resp.status} {body}".rstrip())
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UnavailableError(f"cannot reach the agent API at {api}: {exc or 'timeout'}") from exc
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
    ) -> None:
        self.state = state_dir(state)
        self._api = normalize_api(api) if api else None
        self._reconciler = reconciler.rstrip("/") if reconciler else None
        self._session: aiohttp.ClientSession | None = None

    # -- life cycle -------------------------------------------------------------------

    async def __aenter__(self) -> MeshClient:
        self._session = aiohttp.ClientSession(
            headers=auth_headers(self.state), timeout=SESSION_TIMEOUT
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
        """The HTTP session (with the bearer token, if any) for calls of the caller's own."""
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
        return self._api is not None or (self.state / "mesh.json").exists()

    @property
    def api(self) -> str:
        """The agent API URL (``--api``, else ``mesh.json``); ConfigError if neither."""
        if self._api is None:
            self._api = recorded_api(self.state)
        return self._api

    async def snapshot(self, prefix: str = "") -> FabricSnapshot:
        """The fabric as the agent sees it."""
        return await fetch_snapshot(self.session, self.api, prefix)

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
                data = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UnavailableError(f"cannot reach the reconciler at {url}: {exc}") from exc
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
